"""MLKD against NumPy transcriptions of the paper reading and of the public code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from figkd.losses import MLKDLoss, build_loss
from figkd.losses.mlkd import confidence_masks

TEMPS = (4.0, 3.0, 5.0, 2.0, 6.0)


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def _kl_rows(s: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    return (pt * (np.log(pt) - np.log(ps))).sum(1) * tau**2


def _gram_gaps(s: np.ndarray, t: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    batch = ((pt @ pt.T - ps @ ps.T) ** 2).sum(1) / s.shape[0]  # per sample row
    klass = ((pt.T @ pt - ps.T @ ps) ** 2).sum(1) / s.shape[1]  # per class row
    return batch, klass


def _masks(t_weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _softmax(t_weak)
    conf, class_conf = p.max(1), p.sum(0)
    return (conf <= np.percentile(conf, 50)).astype(float), (class_conf <= np.percentile(class_conf, 50)).astype(float)


def _views(batch: int = 8, classes: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 2, (batch, classes)) for _ in range(4)] + [rng.integers(0, classes, batch)]


def _call(loss: MLKDLoss, sw, tw, ss, ts, y) -> dict[str, float]:
    out = loss(torch.tensor(sw), torch.tensor(tw), torch.tensor(y),
               student_logits_strong=torch.tensor(ss), teacher_logits_strong=torch.tensor(ts))
    return {k: v.item() for k, v in out.items()}


def test_paper_variant_matches_numpy() -> None:
    sw, tw, ss, ts, y = _views()
    m, n = _masks(tw)
    instance = batch = klass = 0.0
    for s, t in ((sw, tw), (ss, ts)):
        for tau in TEMPS:
            instance += (_kl_rows(s, t, tau) * m).mean()
            b, c = _gram_gaps(s, t, tau)
            batch += (b * m).sum()
            klass += (c * n).sum()
    out = _call(MLKDLoss(ce_weight=0.1, kd_weight=0.9), sw, tw, ss, ts, y)
    assert out["instance"] == pytest.approx(0.9 * instance, rel=1e-10)
    assert out["batch"] == pytest.approx(0.9 * batch, rel=1e-10)
    assert out["class"] == pytest.approx(0.9 * klass, rel=1e-10)
    ce = sum(-np.log(_softmax(z)[np.arange(len(y)), y]).mean() for z in (sw, ss))
    assert out["ce"] == pytest.approx(0.1 * ce, rel=1e-10)


def test_official_variant_matches_the_public_code_formula() -> None:
    # reference/losses-and-models.md §2.3: what the public code computes.
    sw, tw, ss, ts, y = _views(seed=1)
    m, n = _masks(tw)
    rm, rn = m.mean(), n.mean()
    inst_weak = sum(_kl_rows(sw, tw, tau).mean() for tau in TEMPS) * rm
    inst_strong = sum(_kl_rows(ss, ts, tau).mean() for tau in TEMPS[:3]) + sum(
        _kl_rows(sw, tw, tau).mean() for tau in TEMPS[3:])
    batch = sum(_gram_gaps(sw, tw, tau)[0].sum() for tau in TEMPS) * rm
    klass = sum(_gram_gaps(sw, tw, tau)[1].sum() for tau in TEMPS) * rn
    out = _call(MLKDLoss(variant="official"), sw, tw, ss, ts, y)
    assert out["instance"] == pytest.approx(0.9 * (inst_weak + inst_strong), rel=1e-10)
    assert out["batch"] == pytest.approx(0.9 * batch, rel=1e-10)
    assert out["class"] == pytest.approx(0.9 * klass, rel=1e-10)


def test_masks_select_the_lower_half_by_median() -> None:
    rng = np.random.default_rng(2)
    t = rng.normal(0, 3, (64, 100))
    sample_mask, class_mask = confidence_masks(torch.tensor(t))
    m, n = _masks(t)
    np.testing.assert_array_equal(sample_mask.numpy(), m)
    np.testing.assert_array_equal(class_mask.numpy(), n)
    # Even B and C without ties: exactly half, which is all the public code's masks do.
    assert sample_mask.mean().item() == 0.5 and class_mask.mean().item() == 0.5


def test_terms_vanish_when_student_equals_teacher_on_both_views() -> None:
    sw, _, ss, _, y = _views(seed=3)
    for variant in ("paper", "official"):
        out = _call(MLKDLoss(variant=variant), sw, sw.copy(), ss, ss.copy(), y)
        assert abs(out["instance"]) < 1e-12 and abs(out["batch"]) < 1e-12 and abs(out["class"]) < 1e-12


def test_standardized_instance_terms_ignore_shift_and_scale() -> None:
    sw, tw, ss, ts, y = _views(seed=4)
    loss = build_loss("mlkd", standardize=True)
    assert isinstance(loss, MLKDLoss)
    assert loss.temperatures == (2.0, 3.0, 5.0, 2.0, 6.0) and loss.kd_weight == 9.0
    base = _call(loss, sw, tw, ss, ts, y)
    moved = _call(loss, 2.0 * sw + 1.0, tw, 3.0 * ss - 4.0, ts, y)
    assert moved["instance"] == pytest.approx(base["instance"], rel=1e-6)


def test_missing_strong_view_is_a_clear_error() -> None:
    sw, tw, _, _, y = _views()
    with pytest.raises(ValueError, match="MLKD needs logits of a strong augmented view"):
        MLKDLoss()(torch.tensor(sw), torch.tensor(tw), torch.tensor(y))
    assert MLKDLoss.num_views == 2
    with pytest.raises(ValueError, match="variant must be one of"):
        MLKDLoss(variant="repo")
    with pytest.raises(ValueError, match="five temperatures"):
        MLKDLoss(variant="official", temperatures=(4.0,))


def test_gradients_finite_for_extreme_logits_and_bf16() -> None:
    gen = torch.Generator().manual_seed(0)
    views = [(torch.randn(16, 100, generator=gen) * 1e4) for _ in range(4)]
    s_weak = views[0].clone().requires_grad_(True)
    y = torch.randint(0, 100, (16,), generator=gen)
    for variant in ("paper", "official"):
        out = MLKDLoss(variant=variant)(s_weak, views[1], y, student_logits_strong=views[2],
                                        teacher_logits_strong=views[3])
        total = sum(out.values())
        total.backward()
        assert s_weak.grad is not None
        assert torch.isfinite(total) and torch.isfinite(s_weak.grad).all()
        s_weak.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = (s_weak / 1e4) @ torch.eye(100)
        total = sum(MLKDLoss()(z, views[1] / 1e4, y, student_logits_strong=z,
                               teacher_logits_strong=views[3] / 1e4).values())
    total.backward()
    assert s_weak.grad is not None
    assert torch.isfinite(s_weak.grad).all()


def test_standardized_variant_matches_numpy() -> None:
    # Only the instance terms see z-scored logits (unbiased std, eps 1e-7); batch and
    # class terms keep the raw logits, at the standardized temperature set (2, 3, 5, 2, 6).
    sw, tw, ss, ts, y = _views(seed=5)
    m, n = _masks(tw)

    def zscore(z: np.ndarray) -> np.ndarray:
        return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)

    temps = (2.0, 3.0, 5.0, 2.0, 6.0)
    instance = batch = klass = 0.0
    for s, t in ((sw, tw), (ss, ts)):
        for tau in temps:
            instance += (_kl_rows(zscore(s), zscore(t), tau) * m).mean()
            b, c = _gram_gaps(s, t, tau)
            batch += (b * m).sum()
            klass += (c * n).sum()
    out = _call(MLKDLoss(standardize=True), sw, tw, ss, ts, y)
    assert out["instance"] == pytest.approx(9.0 * instance, rel=1e-10)
    assert out["batch"] == pytest.approx(9.0 * batch, rel=1e-10)
    assert out["class"] == pytest.approx(9.0 * klass, rel=1e-10)


@pytest.mark.parametrize("options", [{}, {"variant": "official"}, {"standardize": True},
                                     {"temperatures": (1.5, 7.0)}])
def test_gradients_match_finite_differences(options: dict) -> None:
    # All temperatures and both views are computed as one batched tensor; gradcheck compares
    # its autograd gradient with central differences in float64, for both student views.
    sw, tw, ss, ts, y = (torch.tensor(a) for a in _views(batch=6, classes=5, seed=6))
    loss = MLKDLoss(**options)

    def total(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        return sum(loss(weak, tw, y, student_logits_strong=strong, teacher_logits_strong=ts).values())

    assert torch.autograd.gradcheck(total, (sw.requires_grad_(), ss.requires_grad_()), eps=1e-6, atol=1e-7)


def test_a_single_temperature_equals_the_paper_sum_for_it() -> None:
    # One temperature: no stacking over K left, so a mix-up of the temperature axis with the
    # view axis would show (the default five-temperature tests would average it away).
    sw, tw, ss, ts, y = _views(seed=7)
    m, n = _masks(tw)
    instance = sum((_kl_rows(s, t, 2.5) * m).mean() for s, t in ((sw, tw), (ss, ts)))
    batch = sum((_gram_gaps(s, t, 2.5)[0] * m).sum() for s, t in ((sw, tw), (ss, ts)))
    klass = sum((_gram_gaps(s, t, 2.5)[1] * n).sum() for s, t in ((sw, tw), (ss, ts)))
    out = _call(MLKDLoss(temperatures=(2.5,), kd_weight=1.0), sw, tw, ss, ts, y)
    assert out["instance"] == pytest.approx(instance, rel=1e-10)
    assert out["batch"] == pytest.approx(batch, rel=1e-10)
    assert out["class"] == pytest.approx(klass, rel=1e-10)
