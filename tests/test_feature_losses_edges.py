"""Edge cases of the feature-distillation losses (OFD, CRD, ReviewKD, DiffKD) that the mutation
runs showed untested.

Each test closes a gap `tools/mutation.py` found (see docs/testing.md). Expected values are
worked here in NumPy/SciPy or by hand from the module docstrings' formulas, never read back from
the loss under test; the tests read only the networks' and the loss modules' parameters.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
import torch
from functional_weights import submodule as _part
from numpy_reference import as_numpy, np_bn_train, np_ce, np_conv1x1
from scipy.stats import norm

from figkd.losses import build_loss
from figkd.losses.crd import CRDLoss
from figkd.losses.ofd import OFDLoss
from figkd.losses.reviewkd import ABF, ReviewKDLoss
from figkd.models import Features, ZooModel, create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no OpenMP spin


def _pair(seed: int = 0) -> tuple[ZooModel, ZooModel]:
    torch.manual_seed(seed)
    student = create_model("tiny_cnn", num_classes=5, width=2)
    teacher = create_model("tiny_cnn", num_classes=5, width=4)
    for net in (student, teacher):  # non-trivial BN affine parameters: margins differ per channel
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    teacher.eval().requires_grad_(False)
    return student, teacher


def _np_block_mean(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Average pooling to ``size`` by block means (the sizes here divide evenly)."""
    sh, sw = (size, size) if isinstance(size, int) else size
    b, c, h, w = x.shape
    return x.reshape(b, c, sh, h // sh, sw, w // sw).mean(axis=(3, 5))


# ------------------------------------------------------------------------------------ OFD
def _np_margin(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E[x | x < 0], x ~ N(mean, std^2); -3 std when P(x < 0) <= 1e-3 (official fallback)."""
    std = np.abs(std)
    p = norm.cdf(-mean / std)
    cond = mean - std * norm.pdf(mean / std) / np.maximum(p, 1e-300)
    return np.where(p > 1e-3, cond, -3 * std)


def _np_partial_l2(s: np.ndarray, t: np.ndarray) -> float:
    """Docstring's d_p summed over (C, H, W), written out element by element."""
    d = 0.0
    for sv, tv in zip(s.ravel(), t.ravel()):
        d += 0.0 if sv <= tv <= 0 else (tv - sv) ** 2
    return d


Sizes = tuple[tuple[int, int], tuple[int, int]]


@pytest.mark.parametrize(
    "s_sizes,t_sizes",
    [(((8, 6), (4, 6)), ((4, 3), (2, 3))), (((2, 1), (2, 3)), ((4, 2), (4, 6)))],
)
def test_ofd_pools_the_larger_map_to_the_smaller_one(s_sizes: Sizes, t_sizes: Sizes) -> None:
    # the tests with equal maps never pool: here the student's (then the teacher's) maps are
    # larger, and the docstring says the larger one is average-pooled to the smaller size;
    # non-square maps, so height and width cannot be swapped unnoticed
    student, teacher = _pair(11)
    loss = build_loss("ofd")
    loss.setup(student, teacher, example_input=torch.randn(4, 3, 8, 8), num_train_samples=4)
    g = torch.Generator().manual_seed(0)
    b = 4
    s_pre = [torch.randn(b, c, *hw, generator=g) for c, hw in zip((4, 8), s_sizes)]
    t_pre = [torch.randn(b, c, *hw, generator=g) for c, hw in zip((8, 16), t_sizes)]
    logits, y = torch.randn(b, 5, generator=g), torch.tensor([0, 3, 1, 4])
    terms = loss(
        logits,
        None,
        y,
        student_features={"preact_stages": s_pre},
        teacher_features={"preact_stages": t_pre},
    )

    total = 0.0
    for i in range(2):
        conv = _part(loss, f"connectors.{i}.0", torch.nn.Conv2d)
        bn = _part(loss, f"connectors.{i}.1", torch.nn.BatchNorm2d)
        s = np_bn_train(np_conv1x1(as_numpy(s_pre[i]), conv), bn)
        t = as_numpy(t_pre[i])
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s, t = _np_block_mean(s, size), _np_block_mean(t, size)
        t_bn = _part(teacher, f"stages.{i}.0.bn", torch.nn.BatchNorm2d)
        t = np.maximum(t, _np_margin(as_numpy(t_bn.bias), as_numpy(t_bn.weight)).reshape(1, -1, 1, 1))
        total += _np_partial_l2(s, t) / b * 0.5 ** (1 - i)
    assert terms["ofd"].item() == pytest.approx(1e-3 * total, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(np_ce(as_numpy(logits), y.numpy()), rel=1e-5)


def test_ofd_eval_mode_uses_a_bias_free_connector_and_bn_running_statistics() -> None:
    # the connector is the official conv1x1 (no bias) + BN; in eval mode BN applies its running
    # statistics, so a conv bias would no longer cancel and would shift the value
    student, teacher = _pair(12)
    x = torch.randn(4, 3, 8, 8)
    loss = build_loss("ofd", feat_weight=1.0)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    assert isinstance(loss, OFDLoss) and loss.connectors is not None
    g = torch.Generator().manual_seed(3)
    for conn in loss.connectors:
        bn = _part(conn, "1", torch.nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    loss.eval()
    sf, tf = student.forward_features(x), teacher.forward_features(x)
    terms = loss(
        sf["logits"],
        None,
        torch.zeros(4, dtype=torch.long),
        student_features=sf,
        teacher_features=tf,
    )

    total = 0.0
    for i in range(2):
        conv = _part(loss, f"connectors.{i}.0", torch.nn.Conv2d)
        bn = _part(loss, f"connectors.{i}.1", torch.nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        w = as_numpy(conv.weight)[:, :, 0, 0]
        s = np.einsum("oc,bchw->bohw", w, as_numpy(sf["preact_stages"][i]))  # no bias term
        mean, var = as_numpy(bn.running_mean), as_numpy(bn.running_var)
        scale = as_numpy(bn.weight) / np.sqrt(var + bn.eps)
        s = (s - mean[None, :, None, None]) * scale[None, :, None, None]
        s = s + as_numpy(bn.bias)[None, :, None, None]
        t_bn = _part(teacher, f"stages.{i}.0.bn", torch.nn.BatchNorm2d)
        margin = _np_margin(as_numpy(t_bn.bias), as_numpy(t_bn.weight)).reshape(1, -1, 1, 1)
        t = np.maximum(as_numpy(tf["preact_stages"][i]), margin)
        total += _np_partial_l2(s, t) / 4 * 0.5 ** (1 - i)
    assert terms["ofd"].item() == pytest.approx(total, rel=1e-4)


def test_ofd_partial_l2_by_hand_including_ties_at_zero() -> None:
    # d_p is 0 where S <= T <= 0, so a teacher response of exactly 0 with a negative student
    # costs nothing; the random-valued tests never hit T == 0.  Margin -1 lifts T = -2 to -1.
    from figkd.losses.ofd import partial_l2

    t_raw = torch.tensor([0.0, -0.5, -2.0, -2.0, 0.7, -0.5, 0.0, 0.3]).view(2, 1, 1, 4)
    s = torch.tensor([-0.3, -0.8, -1.5, -0.5, 0.2, -0.5, 0.4, 0.9]).view(2, 1, 1, 4)
    # per element: 0, 0, 0 (S <= -1), (-1 + 0.5)^2, 0.5^2, 0 (tie), 0.4^2, 0.6^2
    want = (0.25 + 0.25 + 0.16 + 0.36) / 2  # summed, then averaged over the batch of 2
    got = partial_l2(s, t_raw, torch.tensor([-1.0]))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_ofd_margin_of_a_tiny_but_positive_std() -> None:
    # the 1e-12 floor only guards std == 0: std = 1.2e-12 is used as is, and for a zero mean
    # E[x | x < 0] = -std * phi(0) / Phi(0) = -std * sqrt(2 / pi)
    from figkd.losses.ofd import gaussian_negative_mean

    got = gaussian_negative_mean(torch.tensor([0.0]), torch.tensor([1.2e-12], dtype=torch.float64))
    # abs=0: approx's default absolute tolerance (1e-12) would swallow the whole value
    assert got.item() == pytest.approx(-1.2e-12 * np.sqrt(2 / np.pi), rel=1e-5, abs=0)


def test_ofd_connector_init_is_he_normal_over_output_channels() -> None:
    # official code: conv weight ~ N(0, 2 / (k * k * out_channels)) with k = 1
    from figkd.losses.ofd import _connector

    torch.manual_seed(0)
    conv = _part(_connector(64, 200), "0", torch.nn.Conv2d)
    w = as_numpy(conv.weight)  # 12800 draws: mean and std pinned to ~1 %
    assert abs(w.mean()) < 0.005
    assert w.std() == pytest.approx(np.sqrt(2 / 200), rel=0.03)


def test_ofd_margin_falls_back_to_minus_three_std() -> None:
    # P(x < 0) <= 1e-3 -> -3 std; the existing check has std = 1, where -3 * std == -3 / std
    from figkd.losses.ofd import gaussian_negative_mean

    got = gaussian_negative_mean(torch.tensor([8.0, 1.5]), torch.tensor([2.0, 0.25]))
    np.testing.assert_allclose(got.numpy(), [-6.0, -0.75], rtol=1e-6)  # z = 4 and z = 6
    # z = 3: P(x < 0) = 1.35e-3 is just above the cut, so the conditional mean still applies
    near = gaussian_negative_mean(torch.tensor([3.0]), torch.tensor([1.0])).item()
    assert near == pytest.approx(3.0 - norm.pdf(3.0) / norm.cdf(-3.0), rel=1e-5)
    assert -0.3 < near < -0.25  # far from the -3 std fallback


def test_ofd_resumed_batch_margins_are_not_re_estimated() -> None:
    # margins estimated from the first batch are checkpointed with their ready flags: a loss
    # restored from the state dict keeps them on a different batch (docstring: never
    # re-estimated), so a resumed run matches the uninterrupted one
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=5)
    teacher = create_model("resnet8", num_classes=5).eval().requires_grad_(False)
    x = torch.randn(4, 3, 16, 16)

    def step(loss: torch.nn.Module, images: torch.Tensor) -> None:
        with torch.no_grad():
            sf, tf = student.forward_features(images), teacher.forward_features(images)
        loss(
            sf["logits"],
            None,
            torch.zeros(4, dtype=torch.long),
            student_features=sf,
            teacher_features=tf,
        )

    first = build_loss("ofd")
    first.setup(student, teacher, example_input=x, num_train_samples=4)
    step(first, x)
    resumed = build_loss("ofd")
    assert isinstance(resumed, OFDLoss)
    resumed.setup(student, teacher, example_input=x, num_train_samples=4)
    resumed.load_state_dict(first.state_dict())
    step(resumed, 3 * torch.randn(4, 3, 16, 16))  # other statistics: other margins if redone
    t = as_numpy(teacher.forward_features(x)["preact_stages"][0])
    a = t.transpose(1, 0, 2, 3).reshape(t.shape[1], -1)
    np.testing.assert_allclose(
        as_numpy(resumed.margins()[0]), _np_margin(a.mean(1), a.std(1)), rtol=1e-4, atol=1e-5
    )


def test_ofd_has_no_stages_before_setup() -> None:
    # margins() lists one buffer per paired stage; setup has paired none yet
    loss = build_loss("ofd")
    assert isinstance(loss, OFDLoss)
    assert loss.num_stages == 0 and loss.margins() == []


def test_ofd_needs_both_feature_sets() -> None:
    # one missing set is the caller's mistake: a clear ValueError, not a TypeError deep inside
    student, teacher = _pair(0)
    x = torch.randn(2, 3, 8, 8)
    loss = build_loss("ofd")
    loss.setup(student, teacher, example_input=x, num_train_samples=2)
    sf, y = student.forward_features(x), torch.zeros(2, dtype=torch.long)
    for s_feats, t_feats in ((sf, None), (None, sf)):
        with pytest.raises(ValueError, match="OFD needs"):
            loss(sf["logits"], None, y, student_features=s_feats, teacher_features=t_feats)


# ------------------------------------------------------------------------------------ CRD
def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _crd_setup(seed: int = 2, n: int = 20, **options: object) -> tuple[CRDLoss, Features, Features]:
    student, teacher = _pair(seed)
    x = torch.randn(4, 3, 8, 8)
    loss = build_loss("crd", **{"num_negatives": 5, "feat_dim": 8, **options})
    assert isinstance(loss, CRDLoss)
    loss.setup(student, teacher, example_input=x, num_train_samples=n)
    with torch.no_grad():
        tf = teacher.forward_features(x)
    return loss, student.forward_features(x), tf


def test_crd_adds_the_kd_term_when_kd_weight_is_positive() -> None:
    # docstring: + kd_weight * T^2 * KL(p_t^T || p_s^T), batch mean
    loss, sf, tf = _crd_setup(kd_weight=0.7, kd_temperature=3.0, ce_weight=0.4)
    y = torch.tensor([0, 1, 2, 3])
    terms = loss(
        sf["logits"],
        tf["logits"],
        y,
        student_features=sf,
        teacher_features=tf,
        index=torch.tensor([0, 5, 9, 19]),
    )
    ls, lt = _np_log_softmax(as_numpy(sf["logits"]) / 3.0), _np_log_softmax(as_numpy(tf["logits"]) / 3.0)
    want = 0.7 * 9.0 * float((np.exp(lt) * (lt - ls)).sum(1).mean())
    assert set(terms) == {"ce", "crd", "kd"}
    assert terms["kd"].item() == pytest.approx(want, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.4 * np_ce(as_numpy(sf["logits"]), y.numpy()), rel=1e-5)
    with pytest.raises(ValueError, match="teacher_logits"):
        loss(
            sf["logits"],
            None,
            y,
            student_features=sf,
            teacher_features=tf,
            index=torch.tensor([0, 5, 9, 19]),
        )


def test_crd_index_must_lie_in_the_training_set() -> None:
    loss, sf, tf = _crd_setup(n=20)
    y = torch.zeros(4, dtype=torch.long)

    def call(index: list[int]) -> dict:
        return loss(
            sf["logits"],
            None,
            y,
            student_features=sf,
            teacher_features=tf,
            index=torch.tensor(index),
        )

    for bad in ([0, 1, 2, 20], [-1, 1, 2, 3]):  # one past either end
        with pytest.raises(ValueError, match=r"\[0, 20\)"):
            call(bad)
    assert torch.isfinite(call([0, 1, 2, 19])["crd"])  # both ends themselves are fine


@pytest.mark.parametrize(
    "options,match",
    [
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.01}, "momentum"),
        ({"feat_dim": 0}, "feat_dim"),
        ({"feat_dim": 2.5}, "feat_dim"),
        ({"feat_dim": True}, "feat_dim"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"memory_dtype": torch.int8}, "memory_dtype"),
    ],
)
def test_crd_refuses_bad_settings(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_loss("crd", **options)


def test_crd_accepts_the_boundary_settings() -> None:
    # momentum 0 (no memory), one negative, one feature, a torch dtype for the bank
    loss = build_loss("crd", momentum=0.0, feat_dim=1, num_negatives=1, memory_dtype=torch.float16)
    assert (loss.momentum, loss.feat_dim, loss.num_negatives) == (0.0, 1, 1)
    assert loss.memory_dtype == torch.float16


# ------------------------------------------------------------------------------- ReviewKD
def _np_conv3x3(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    w = as_numpy(conv.weight)  # (O, C, 3, 3), padding 1, no bias
    b, c, h, wd = x.shape
    pad = np.zeros((b, c, h + 2, wd + 2))
    pad[:, :, 1:-1, 1:-1] = x
    out = np.zeros((b, w.shape[0], h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, :, i, j] = np.einsum("bcuv,ocuv->bo", pad[:, :, i : i + 3, j : j + 3], w)
    return out


def _np_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return x[:, :, rows][:, :, :, cols]


def _np_hcl(fs: np.ndarray, ft: np.ndarray) -> float:
    h = fs.shape[-1]
    total, weight, norm_ = ((fs - ft) ** 2).mean(), 1.0, 1.0
    for size in (4, 2, 1):
        if size >= h:
            continue
        weight /= 2
        total += weight * ((_np_block_mean(fs, size) - _np_block_mean(ft, size)) ** 2).mean()
        norm_ += weight
    return total / norm_


def _np_bn_eval(x: np.ndarray, bn: torch.nn.BatchNorm2d) -> np.ndarray:
    assert bn.running_mean is not None and bn.running_var is not None

    def c(v: torch.Tensor) -> np.ndarray:
        return as_numpy(v).reshape(1, -1, 1, 1)

    return (x - c(bn.running_mean)) / np.sqrt(c(bn.running_var) + bn.eps) * c(bn.weight) + c(
        bn.bias
    )


@pytest.mark.parametrize("eval_mode", [False, True])
def test_reviewkd_resizes_to_the_teachers_map_when_the_student_is_larger(
    eval_mode: bool,
) -> None:
    # the value test has equal maps; here each fused student map is 2x the teacher's and must
    # be nearest-resized to the teacher's size before the 3x3 conv.  In eval mode BN uses its
    # running statistics, where a conv bias (the official convs have none) would show.
    student, teacher = _pair(6)
    loss = build_loss("reviewkd", warmup_epochs=0)
    loss.setup(student, teacher, example_input=torch.randn(4, 3, 8, 8), num_train_samples=4)
    g = torch.Generator().manual_seed(1)
    if eval_mode:
        for m in loss.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        loss.eval()
    bn_ref = _np_bn_eval if eval_mode else np_bn_train
    b = 4
    sf: dict[str, Any] = {
        "stages": [torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 8, 4, 4, generator=g)],
        "embedding": torch.randn(b, 8, generator=g),
    }
    tf: dict[str, Any] = {
        "preact_stages": [
            torch.randn(b, 8, 4, 4, generator=g),
            torch.randn(b, 16, 2, 2, generator=g),
        ],
        "embedding": torch.randn(b, 16, generator=g),
    }
    logits, y = torch.randn(b, 5, generator=g), torch.tensor([1, 0, 4, 2])
    terms = loss(logits, None, y, student_features=sf, teacher_features=tf)  # no epoch: no ramp

    s_lv = [as_numpy(s) for s in sf["stages"]] + [as_numpy(sf["embedding"])[:, :, None, None]]
    t_lv = [as_numpy(t) for t in tf["preact_stages"]] + [as_numpy(tf["embedding"])[:, :, None, None]]
    want, residual = 0.0, None
    for abf, xs, xt in zip(_abfs(loss), s_lv[::-1], t_lv[::-1]):  # deepest level first
        # bias-free 1x1 conv, written out
        w1 = as_numpy(_part(abf, "conv1.0", torch.nn.Conv2d).weight)[:, :, 0, 0]
        h = bn_ref(np.einsum("oc,bchw->bohw", w1, xs), _part(abf, "conv1.1", torch.nn.BatchNorm2d))
        if residual is not None:
            r = _np_nearest(residual, h.shape[-2:])
            att_conv = _part(abf, "att_conv.0", torch.nn.Conv2d)
            att = 1 / (1 + np.exp(-np_conv1x1(np.concatenate([h, r], 1), att_conv)))
            h = h * att[:, 0:1] + r * att[:, 1:2]
        h = _np_nearest(h, xt.shape[-2:])
        conv2 = _part(abf, "conv2.0", torch.nn.Conv2d)
        bn2 = _part(abf, "conv2.1", torch.nn.BatchNorm2d)
        want += _np_hcl(bn_ref(_np_conv3x3(h, conv2), bn2), xt)
        residual = h
    assert terms["review"].item() == pytest.approx(want, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(np_ce(as_numpy(logits), y.numpy()), rel=1e-5)


def test_reviewkd_mid_width_is_capped_by_max_mid_channels() -> None:
    # mid = min(max_mid_channels, student embedding width): 8 for this student, 3 when capped
    student, teacher = _pair(0)
    x = torch.randn(2, 3, 8, 8)
    for cap, mid in ((512, 8), (3, 3)):
        loss = build_loss("reviewkd", max_mid_channels=cap)
        loss.setup(student, teacher, example_input=x, num_train_samples=2)
        conv1s = [_part(abf, "conv1.0", torch.nn.Conv2d) for abf in _abfs(loss)]
        assert [conv.out_channels for conv in conv1s] == [mid] * 3


@pytest.mark.parametrize("warmup", [-1, 2.5, True])
def test_reviewkd_refuses_a_warmup_that_is_not_a_non_negative_integer(warmup: object) -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_loss("reviewkd", warmup_epochs=warmup)


def _abfs(loss: torch.nn.Module) -> list[ABF]:
    """ReviewKD's fusion modules (built by setup), deepest level first."""
    assert isinstance(loss, ReviewKDLoss) and loss.abfs is not None
    abfs = list(loss.abfs)
    assert all(isinstance(abf, ABF) for abf in abfs)
    return cast("list[ABF]", abfs)


def _np_embed(f: torch.Tensor, lin: torch.nn.Linear) -> np.ndarray:
    v = as_numpy(f) @ as_numpy(lin.weight).T + as_numpy(lin.bias)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_crd_second_step_keeps_the_first_batch_z_and_reads_the_updated_banks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Z is estimated once, on the first batch, then frozen; step 2 scores against the banks
    # as step 1's momentum update left them (docstring formulas, m = 0.3 here)
    n, k, tau, m = 20, 5, 0.07, 0.3
    loss, sf, tf = _crd_setup(n=n, momentum=m)
    rng = np.random.default_rng(1)
    idx = [np.array([3, 0, 19, 7]), np.array([3, 11, 12, 0])]  # rows 3 and 0 meet again
    rows = [np.concatenate([i[:, None], rng.integers(0, n, (4, k))], 1) for i in idx]
    draws = iter(rows)
    monkeypatch.setattr(loss, "sample_indices", lambda index: torch.as_tensor(next(draws)))
    bank_s, bank_t = as_numpy(loss.memory_s), as_numpy(loss.memory_t)
    s, t = (
        _np_embed(sf["embedding"], _part(loss, "embed_s.linear", torch.nn.Linear)),
        _np_embed(tf["embedding"], _part(loss, "embed_t.linear", torch.nn.Linear)),
    )
    y = torch.zeros(4, dtype=torch.long)
    got = [
        loss(
            sf["logits"],
            None,
            y,
            student_features=sf,
            teacher_features=tf,
            index=torch.as_tensor(i),
        )["crd"].item()
        for i in idx
    ]

    z: dict[str, float] = {}
    want = []
    for step in range(2):
        total = 0.0
        for side, anchor, bank in (("s", s, bank_t), ("t", t, bank_s)):
            e = np.exp(np.einsum("bkd,bd->bk", bank[rows[step]], anchor) / tau)
            z.setdefault(side, e.mean() * n)  # first batch only
            p = e / z[side]
            h = p / (p + k / n)
            total += -(np.log(h[:, 0]) + np.log(1 - h[:, 1:]).sum(1)).mean()
        want.append(0.8 * total)
        for bank, v in ((bank_s, s), (bank_t, t)):
            upd = m * bank[idx[step]] + (1 - m) * v
            bank[idx[step]] = upd / np.linalg.norm(upd, axis=1, keepdims=True)
    assert got == pytest.approx(want, rel=1e-4)


def test_crd_needs_both_feature_sets() -> None:
    loss, sf, tf = _crd_setup()
    y, index = torch.zeros(4, dtype=torch.long), torch.arange(4)
    for s_feats, t_feats in ((sf, None), (None, tf)):
        with pytest.raises(ValueError, match="CRD needs student_features"):
            loss(
                sf["logits"],
                None,
                y,
                student_features=s_feats,
                teacher_features=t_feats,
                index=index,
            )


def test_crd_restored_z_is_kept_not_re_estimated() -> None:
    # log Z is part of the state dict: a resumed run keeps the first run's estimate instead of
    # estimating it again from its own first batch (docstring: estimated once, then frozen)
    first, sf, tf = _crd_setup(n=20)
    y = torch.zeros(4, dtype=torch.long)
    first(
        sf["logits"],
        None,
        y,
        student_features=sf,
        teacher_features=tf,
        index=torch.tensor([0, 1, 2, 3]),
    )
    saved = first.state_dict()
    resumed, sf2, tf2 = _crd_setup(n=20)
    resumed.load_state_dict(saved)
    resumed(
        sf2["logits"],
        None,
        y,
        student_features=sf2,
        teacher_features=tf2,
        index=torch.tensor([4, 5, 6, 7]),
    )
    assert torch.equal(resumed.log_z, saved["log_z"])


def test_crd_half_precision_bank_is_scored_in_float32_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # docstring: on CPU the gathered bank rows are computed in float32 (b_c = 4), so a
    # float16 bank gives the value of its stored (rounded) rows with float32 accuracy
    n, k, tau = 20, 5, 0.07
    loss, sf, tf = _crd_setup(n=n, memory_dtype="float16")
    rng = np.random.default_rng(2)
    index = np.array([3, 0, 19, 7])
    rows = np.concatenate([index[:, None], rng.integers(0, n, (4, k))], 1)
    monkeypatch.setattr(loss, "sample_indices", lambda idx: torch.as_tensor(rows))
    bank_s, bank_t = as_numpy(loss.memory_s), as_numpy(loss.memory_t)  # the float16 values, exactly
    got = loss(
        sf["logits"],
        None,
        torch.zeros(4, dtype=torch.long),
        student_features=sf,
        teacher_features=tf,
        index=torch.as_tensor(index),
    )["crd"].item()
    s, t = (
        _np_embed(sf["embedding"], _part(loss, "embed_s.linear", torch.nn.Linear)),
        _np_embed(tf["embedding"], _part(loss, "embed_t.linear", torch.nn.Linear)),
    )
    want = 0.0
    for anchor, bank in ((s, bank_t), (t, bank_s)):
        e = np.exp(np.einsum("bkd,bd->bk", bank[rows], anchor) / tau)
        p = e / (e.mean() * n)
        h = p / (p + k / n)
        want += -(np.log(h[:, 0]) + np.log(1 - h[:, 1:]).sum(1)).mean()
    assert got == pytest.approx(0.8 * want, rel=2e-5)


def test_reviewkd_hcl_pools_an_8x8_map_to_4x4_2x2_and_1x1() -> None:
    # the value tests' maps are at most 4x4, where the 4x4 level is skipped; at 8x8 all three
    # pooled levels count: (MSE + MSE_4/2 + MSE_2/4 + MSE_1/8) / (1 + 1/2 + 1/4 + 1/8)
    from figkd.losses.reviewkd import hcl_loss

    g = torch.Generator().manual_seed(4)
    fs, ft = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    a, b = as_numpy(fs), as_numpy(ft)
    want = ((a - b) ** 2).mean()
    for size, w in ((4, 0.5), (2, 0.25), (1, 0.125)):
        want += w * ((_np_block_mean(a, size) - _np_block_mean(b, size)) ** 2).mean()
    want /= 1.875
    assert hcl_loss([fs], [ft]).item() == pytest.approx(want, rel=1e-5)


def test_reviewkd_one_warmup_epoch_still_needs_the_epoch() -> None:
    # warm-up 1 ramps min(epoch / 1, 1): epoch 0 would give 0, so the epoch is required
    student, teacher = _pair(7)
    x = torch.randn(4, 3, 8, 8)
    loss = build_loss("reviewkd", warmup_epochs=1)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    sf, tf = student.forward_features(x), teacher.forward_features(x)
    with pytest.raises(ValueError, match="epoch"):
        loss(
            sf["logits"],
            None,
            torch.zeros(4, dtype=torch.long),
            student_features=sf,
            teacher_features=tf,
        )


def test_reviewkd_abf_convs_use_kaiming_uniform_with_a_1() -> None:
    # official ABF init: kaiming_uniform_(a=1), gain sqrt(2 / (1 + a^2)) = 1, so the weights
    # fill U(-sqrt(3 / fan_in), sqrt(3 / fan_in)); thousands of draws reach close to the bound
    from figkd.losses.reviewkd import ABF

    torch.manual_seed(0)
    abf = ABF(64, 32, 16, fuse=False)
    for conv, fan_in in ((_part(abf, "conv1.0", torch.nn.Conv2d), 64),
                         (_part(abf, "conv2.0", torch.nn.Conv2d), 32 * 9)):
        bound = np.sqrt(3 / fan_in)
        top = np.abs(as_numpy(conv.weight)).max()
        assert 0.98 * bound < top <= bound


# ------------------------------------------------------------- CRD: constructor, setup, memory
# Gaps the mutation run of crd.py lines 1-258 found (docs/testing.md, "Mutation checks").
def test_crd_defaults_are_the_papers_settings() -> None:
    """Module docstring: CE 1, CRD 0.8, KD 0 (T 4), K = 16384, tau = 0.07, d = 128, m = 0.5,
    float32 banks on the compute device, negatives seeded with 0; the trainer must hand CRD
    the features and the dataset indices."""
    from figkd.losses.crd import CRDLoss

    loss = build_loss("crd")
    assert isinstance(loss, CRDLoss)
    weights = (loss.ce_weight, loss.crd_weight, loss.kd_weight, loss.kd_temperature)
    assert weights == (1.0, 0.8, 0.0, 4.0)
    nce = (loss.feat_dim, loss.num_negatives, loss.nce_temperature, loss.momentum)
    assert nce == (128, 16384, 0.07, 0.5)
    assert loss.memory_dtype == torch.float32 and loss.memory_device is None and loss.seed == 0
    assert loss.needs_features is True and loss.needs_sample_index is True


def test_crd_memory_bytes_defaults_and_the_compute_element_size() -> None:
    """Docstring: banks 2 N d b, gathered rows 2 B (K+1) d b_c, scores 2 B (K+1) 4, with
    d = 128, K = 16384, B = 64 by default and b_c = b on CUDA (the default), 4 on the CPU."""
    from figkd.losses.crd import crd_memory_bytes

    rows = 64 * 16385
    for dtype, b in (("float32", 4), ("float16", 2)):
        got = crd_memory_bytes(1000, memory_dtype=dtype)
        want = {"banks": 2 * 1000 * 128 * b, "gathered_per_step": 2 * rows * 128 * b,
                "scores_per_step": 2 * rows * 4}  # fmt: skip
        want["total"] = sum(want.values())
        assert got == want
    cpu = crd_memory_bytes(1000, memory_dtype="float16", compute_on_cuda=False)
    assert cpu["gathered_per_step"] == 2 * rows * 128 * 4
    # before setup: no samples yet, and the estimate assumes a CUDA run
    half, default = build_loss("crd", memory_dtype="float16"), build_loss("crd")
    assert isinstance(half, CRDLoss) and isinstance(default, CRDLoss)
    early = half.memory_bytes(batch_size=8)
    assert early["banks"] == 0 and early["gathered_per_step"] == 2 * 8 * 16385 * 128 * 2
    assert default.memory_bytes()["scores_per_step"] == 2 * rows * 4  # B = 64


def test_crd_setup_with_two_samples_builds_seeded_unit_banks_and_keeps_train_modes() -> None:
    """Two samples are enough (one positive, one negative). Banks: uniform in [-s, s], then
    L2-normalised (s cancels), drawn from Generator(seed) for M_S then M_T; the generator's
    state after those draws is the negatives' stream; log Z starts unknown (NaN)."""
    student, teacher = _pair(3)
    student.train()
    loss = build_loss("crd", feat_dim=6, num_negatives=3)  # default seed 0
    assert isinstance(loss, CRDLoss)
    loss.setup(student, teacher, example_input=torch.randn(3, 3, 8, 8), num_train_samples=2)
    assert student.training and not teacher.training
    embed_s = _part(loss, "embed_s.linear", torch.nn.Linear)
    embed_t = _part(loss, "embed_t.linear", torch.nn.Linear)
    assert embed_s.in_features == 8 and embed_t.in_features == 16
    replay = torch.Generator().manual_seed(0)
    for name in ("memory_s", "memory_t"):
        u = 2.0 * as_numpy(torch.rand(2, 6, generator=replay)) - 1.0
        want = u / np.linalg.norm(u, axis=1, keepdims=True)
        np.testing.assert_allclose(as_numpy(getattr(loss, name)), want, rtol=1e-6, atol=1e-7)
    assert torch.equal(loss.rng_state, replay.get_state())
    assert loss.log_z.shape == (2,) and bool(torch.isnan(loss.log_z).all())


def test_crd_memory_device_holds_the_banks_whatever_the_compute_device() -> None:
    """``memory_device`` places the banks (the meta device stands in for a second device)."""
    student, teacher = _pair(4)
    loss = build_loss("crd", feat_dim=4, num_negatives=2, memory_device="meta")
    loss.setup(student, teacher, example_input=torch.randn(2, 3, 8, 8), num_train_samples=5)
    assert loss.memory_s.device.type == "meta" and loss.memory_t.device.type == "meta"
    embed_s = _part(loss, "embed_s.linear", torch.nn.Linear)
    assert embed_s.weight.device.type == "cpu" and loss.log_z.device.type == "cpu"


def test_crd_gather_ranks_concatenates_uneven_batches_without_their_padding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ranks with batches of 2 (this rank) and 3 (the other): every tensor is padded to 3
    rows for all_gather, and the result is rank 0's 2 rows then rank 1's 3, padding dropped.
    The collectives are faked: the other rank's rows are handed in as if gathered."""
    from figkd.losses import crd

    other = {"index": torch.tensor([7, 8, 9]), "value": torch.arange(6.0).reshape(3, 2) + 10}
    calls: list[int] = []

    def all_gather(out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        calls.append(tensor.shape[0])
        assert len(out) == 2
        if len(calls) == 1:  # the sizes
            out[0].copy_(tensor)
            out[1].fill_(3)
            return
        theirs = other["index"] if tensor.dim() == 1 else other["value"]
        assert tensor.shape[0] == 3  # padded to the largest batch
        out[0].copy_(tensor)
        out[1].copy_(theirs)

    monkeypatch.setattr(crd, "_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    index, value = torch.tensor([1, 2]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got_index, got_value = crd._gather_ranks(index, value)
    assert got_index.tolist() == [1, 2, 7, 8, 9]
    assert got_value.tolist() == [[1.0, 2.0], [3.0, 4.0], [10.0, 11.0], [12.0, 13.0], [14.0, 15.0]]
    calls.clear()
    (only_index,) = crd._gather_ranks(index)  # indices alone (no values to follow)
    assert only_index.tolist() == [1, 2, 7, 8, 9]


# ------------------------------------------------------------ ReviewKD: constructor, setup, levels
# Gaps the mutation run of reviewkd.py lines 103-197 found (docs/testing.md, "Mutation checks").
class _FixedFeatures(torch.nn.Module):
    """A network whose forward_features returns fixed maps: stage counts and widths at will."""

    def __init__(self, **features: object) -> None:
        super().__init__()
        self.features = features

    def forward_features(self, x: torch.Tensor) -> dict[str, object]:
        return self.features


def _np_review(loss: torch.nn.Module, s_lv: list[np.ndarray], t_lv: list[np.ndarray]) -> float:
    """sum_j HCL(ABF_j, t_j), deepest level first, training-mode BN (module docstring)."""
    total, residual = 0.0, None
    for abf, xs, xt in zip(_abfs(loss), s_lv[::-1], t_lv[::-1], strict=True):
        conv1 = _part(abf, "conv1.0", torch.nn.Conv2d)
        bn1 = _part(abf, "conv1.1", torch.nn.BatchNorm2d)
        h = np_bn_train(np_conv1x1(xs, conv1), bn1)
        if residual is not None:
            r = _np_nearest(residual, h.shape[-2:])
            att_conv = _part(abf, "att_conv.0", torch.nn.Conv2d)
            att = 1 / (1 + np.exp(-np_conv1x1(np.concatenate([h, r], 1), att_conv)))
            h = h * att[:, 0:1] + r * att[:, 1:2]
        h = _np_nearest(h, xt.shape[-2:])
        conv2 = _part(abf, "conv2.0", torch.nn.Conv2d)
        bn2 = _part(abf, "conv2.1", torch.nn.BatchNorm2d)
        total += _np_hcl(np_bn_train(_np_conv3x3(h, conv2), bn2), xt)
        residual = h
    return total


def test_reviewkd_defaults_are_the_official_settings() -> None:
    """Module docstring: CE 1, review weight 1, 20 warm-up epochs, mid width capped at 512,
    the student's post-ReLU stages; the trainer must hand ReviewKD the features."""
    loss = build_loss("reviewkd")
    assert (loss.ce_weight, loss.review_weight, loss.warmup_epochs) == (1.0, 1.0, 20)
    assert loss.max_mid_channels == 512 and loss.student_preact is False
    assert loss.needs_features is True


def _review_nets(s_stages: int, t_stages: int, b: int = 4) -> tuple[_FixedFeatures, _FixedFeatures]:
    """Stage j (from the deepest, j = 0) is (2 + j) channels wide for the student, (5 + j) for the
    teacher, at 2^(j+1) x 2^(j+1); pre-ReLU stages differ from the post-ReLU ones."""
    g = torch.Generator().manual_seed(s_stages * 10 + t_stages)

    def maps(n: int, base: int) -> list[torch.Tensor]:
        sizes = [2 ** (j + 1) for j in range(n)]
        return [torch.randn(b, base + j, h, h, generator=g) for j, h in enumerate(sizes)][::-1]

    s_pre, t_pre = maps(s_stages, 2), maps(t_stages, 5)
    student = _FixedFeatures(
        stages=[m.relu() for m in s_pre], preact_stages=s_pre,
        embedding=torch.randn(b, 3, generator=g), logits=torch.randn(b, 5, generator=g),
    )  # fmt: skip
    teacher = _FixedFeatures(
        stages=[m.relu() for m in t_pre], preact_stages=t_pre,
        embedding=torch.randn(b, 6, generator=g), logits=torch.randn(b, 5, generator=g),
    )  # fmt: skip
    return student, teacher


def _levels_np(features: dict, preact: bool) -> list[np.ndarray]:
    stages = features["preact_stages" if preact else "stages"]
    return [as_numpy(s) for s in stages] + [as_numpy(features["embedding"])[:, :, None, None]]


@pytest.mark.parametrize("s_stages, t_stages", [(3, 2), (2, 3)])
def test_reviewkd_pairs_levels_from_the_deepest_when_stage_counts_differ(
    s_stages: int, t_stages: int
) -> None:
    """With 3 + 1 levels on one side and 2 + 1 on the other, the 3 deepest are paired and the
    extra shallow stage is ignored, in setup and in forward."""
    student, teacher = _review_nets(s_stages, t_stages)
    student.train()
    teacher.eval()
    torch.manual_seed(0)
    loss = build_loss("reviewkd", warmup_epochs=0)
    loss.setup(student, teacher, example_input=torch.zeros(4, 3, 8, 8), num_train_samples=4)
    assert student.training and not teacher.training  # setup restores both modes
    assert loss.num_levels == 3
    # deepest first: the embeddings (3 -> 6 wide), then stage widths 2 -> 5 and 3 -> 6
    conv1s = [_part(abf, "conv1.0", torch.nn.Conv2d) for abf in _abfs(loss)]
    conv2s = [_part(abf, "conv2.0", torch.nn.Conv2d) for abf in _abfs(loss)]
    assert [conv.in_channels for conv in conv1s] == [3, 2, 3]
    assert [conv.out_channels for conv in conv2s] == [6, 5, 6]
    assert [conv.out_channels for conv in conv1s] == [3, 3, 3]  # mid: the embedding's
    assert loss.out_sizes == [(4, 4), (2, 2), (1, 1)]
    sf, tf = student.features, teacher.features
    y = torch.tensor([0, 1, 2, 3])
    terms = loss(sf["logits"], None, y, student_features=sf, teacher_features=tf)
    want = _np_review(loss, _levels_np(sf, False)[-3:], _levels_np(tf, True)[-3:])
    assert terms["review"].item() == pytest.approx(want, rel=1e-4)


def test_reviewkd_student_preact_distils_the_pre_relu_student_stages() -> None:
    student, teacher = _review_nets(2, 2)
    torch.manual_seed(1)
    loss = build_loss("reviewkd", warmup_epochs=0, review_weight=2.0, student_preact=True)
    loss.setup(student, teacher, example_input=torch.zeros(4, 3, 8, 8), num_train_samples=4)
    sf, tf = student.features, teacher.features
    terms = loss(sf["logits"], None, torch.zeros(4, dtype=torch.long),
                 student_features=sf, teacher_features=tf)  # fmt: skip
    want = 2.0 * _np_review(loss, _levels_np(sf, True), _levels_np(tf, True))
    assert terms["review"].item() == pytest.approx(want, rel=1e-4)


def test_reviewkd_needs_a_teacher_and_both_feature_sets() -> None:
    student, teacher = _review_nets(2, 2)
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match="teacher"):
        build_loss("reviewkd").setup(student, None, example_input=x, num_train_samples=4)
    loss = build_loss("reviewkd", warmup_epochs=0)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    sf, tf = student.features, teacher.features
    y = torch.zeros(4, dtype=torch.long)
    for s_feat, t_feat in ((sf, None), (None, tf)):
        with pytest.raises(ValueError, match="student_features= and teacher_features="):
            loss(sf["logits"], None, y, student_features=s_feat, teacher_features=t_feat)
