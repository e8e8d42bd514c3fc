"""DKD, DIST and logit standardization against independent NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from figkd.losses import DISTLoss, DKDLoss, KDLoss, build_loss, standardize_logits
from figkd.losses.dkd import dkd_parts


def _np_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def _np_kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def _case(batch: int = 6, classes: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, (batch, classes)), rng.normal(0, 2, (batch, classes)), rng.integers(0, classes, batch)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a)


# ----------------------------------------------------------------------------- DKD


def _grad(x: torch.Tensor) -> torch.Tensor:
    assert x.grad is not None, "backward() gave no gradient"
    return x.grad


def _np_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> tuple[float, float]:
    """Batch-mean TCKD and NCKD, following the paper's definitions directly."""
    ps, pt = _np_softmax(s, temp), _np_softmax(t, temp)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    keep = np.ones_like(s, dtype=bool)
    keep[rows, y] = False
    qs = _np_softmax(s[keep].reshape(len(y), -1), temp)
    qt = _np_softmax(t[keep].reshape(len(y), -1), temp)
    return _np_kl_rows(bt, bs).mean(), _np_kl_rows(qt, qs).mean()


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_matches_numpy(temperature: float) -> None:
    s, t, y = _case()
    tckd, nckd = _np_dkd(s, t, y, temperature)
    loss = DKDLoss(alpha=1.5, beta=8.0, temperature=temperature, ce_weight=1.0, warmup_epochs=20)
    terms = loss(_t(s), _t(t), _t(y), epoch=25)
    assert terms["tckd"].item() == pytest.approx(1.5 * temperature**2 * tckd, rel=1e-10)
    assert terms["nckd"].item() == pytest.approx(8.0 * temperature**2 * nckd, rel=1e-10)
    ce = -np.log(_np_softmax(s)[np.arange(len(y)), y]).mean()
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-10)


def test_dkd_parts_recombine_to_classical_kd() -> None:
    # KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD, per sample (Zhao et al., Eq. 5).
    s, t, y = _case(batch=9, classes=11, seed=3)
    for temperature in (1.0, 4.0):
        tckd, nckd = dkd_parts(_t(s), _t(t), _t(y), temperature)
        pt = _np_softmax(t, temperature)
        kl = _np_kl_rows(pt, _np_softmax(s, temperature))
        recombined = tckd.numpy() + (1 - pt[np.arange(len(y)), y]) * nckd.numpy()
        np.testing.assert_allclose(recombined, kl, rtol=1e-10)


def test_dkd_warmup_ramps_linearly_from_epoch_one() -> None:
    s, t, y = (_t(a) for a in _case())
    loss = DKDLoss()
    full = loss(s, t, y, epoch=20)
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)]:
        terms = loss(s, t, y, epoch=epoch)
        assert terms["nckd"].item() == pytest.approx(factor * full["nckd"].item(), rel=1e-12)
        assert terms["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-12)
    with pytest.raises(ValueError, match="needs epoch="):
        loss(s, t, y)
    assert DKDLoss(warmup_epochs=0)(s, t, y)["nckd"].item() == pytest.approx(full["nckd"].item())


def test_dkd_defaults_and_official_per_pair_betas_fit() -> None:
    loss = build_loss("dkd")
    assert (loss.alpha, loss.beta, loss.temperature, loss.ce_weight, loss.warmup_epochs) == (1.0, 8.0, 4.0, 1.0, 20)
    standardized = build_loss("dkd", standardize=True)
    assert (standardized.alpha, standardized.beta, standardized.temperature) == (9.0, 72.0, 2.0)


# ----------------------------------------------------------------------------- DIST


def test_dist_terms_are_one_minus_mean_pearson() -> None:
    s, t, y = _case(batch=8, classes=10, seed=4)
    tau = 4.0
    ys, yt = _np_softmax(s, tau), _np_softmax(t, tau)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(len(ys))])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(ys.shape[1])])
    terms = DISTLoss(temperature=tau, inter_weight=2.0, intra_weight=3.0)(_t(s), _t(t), _t(y))
    assert terms["inter"].item() == pytest.approx(tau**2 * 2.0 * inter, rel=1e-6)
    assert terms["intra"].item() == pytest.approx(tau**2 * 3.0 * intra, rel=1e-6)


def test_dist_defaults_are_the_official_cifar_ones() -> None:
    loss = build_loss("dist")
    assert (loss.temperature, loss.inter_weight, loss.intra_weight, loss.ce_weight) == (4.0, 2.0, 2.0, 1.0)


# ----------------------------------------------------------------------------- shared properties


@pytest.mark.parametrize("name, options, terms", [
    ("kd", {}, ("kd",)), ("kd", {"standardize": True}, ("kd",)),
    ("dkd", {"warmup_epochs": 0}, ("tckd", "nckd")), ("dkd", {"standardize": True, "warmup_epochs": 0}, ("tckd", "nckd")),
    ("dist", {}, ("inter", "intra")),
])
def test_distillation_terms_vanish_when_student_equals_teacher(name: str, options: dict, terms: tuple) -> None:
    s, _, y = _case(seed=5)
    out = build_loss(name, **options)(_t(s), _t(s.copy()), _t(y))
    # DIST's official epsilon (1e-8 on the norm product) leaves 1 - rho ~ 1e-8 / ||y - mean||^2.
    tolerance = 1e-3 if name == "dist" else 1e-9
    for term in terms:
        assert abs(out[term].item()) < tolerance, term


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_standardized_losses_ignore_shift_and_positive_scale(name: str) -> None:
    s, t, y = (_t(a) for a in _case(seed=6))
    loss = build_loss(name, standardize=True, warmup_epochs=0) if name == "dkd" else build_loss(name, standardize=True)
    reference = loss(s, t, y)
    for s2, t2 in [(s + 7.0, t), (s, 3.0 * t - 2.0), (0.25 * s + 1.0, 5.0 * t)]:
        moved = loss(s2, t2, y)
        for term in reference:
            if term != "ce":  # CE deliberately uses the raw logits
                assert moved[term].item() == pytest.approx(reference[term].item(), rel=1e-6, abs=1e-9)
    raw = build_loss(name, warmup_epochs=0) if name == "dkd" else build_loss(name)
    assert raw(s + 0.0, 3.0 * t, y)[next(k for k in reference if k != "ce")] != raw(s, t, y)[next(k for k in reference if k != "ce")]


def test_standardize_logits_matches_numpy_zscore() -> None:
    z = np.random.default_rng(7).normal(3, 5, (4, 9))
    expected = (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(standardize_logits(_t(z)).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name, options", [
    ("kd", {}), ("kd", {"standardize": True}), ("dkd", {"warmup_epochs": 0}),
    ("dkd", {"standardize": True, "warmup_epochs": 0}), ("dist", {}), ("figkd", {}), ("figkd", {"level": 3}),
])
def test_gradients_stay_finite_for_extreme_logits_and_low_precision(name: str, options: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(16, 100, generator=gen) * 1e4).requires_grad_(True)
    t = torch.randn(16, 100, generator=gen) * 1e4
    y = torch.randint(0, 100, (16,), generator=gen)
    loss = build_loss(name, **options)
    total = sum(loss(s, t, y).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(_grad(s)).all(), name
    for dtype in (torch.bfloat16, torch.float16):
        s.grad = None
        with torch.autocast("cpu", dtype=dtype):
            z = (s / 1e4) @ torch.eye(100)  # a low-precision head output
            total = sum(loss(z, t.to(dtype) / 1e4, y).values())
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(_grad(s)).all(), (name, dtype)


def test_kd_standardize_defaults() -> None:
    loss = KDLoss(standardize=True)
    assert (loss.temperature, loss.kd_weight, loss.ce_weight) == (2.0, 9.0, 0.1)
    assert KDLoss(standardize=True, temperature=3.0).temperature == 3.0
