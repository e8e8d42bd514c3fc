"""Edge cases of the relation and feature losses (RKD, PKT, ...) that mutation runs left untested.

Each test closes a gap `tools/mutation.py` found (see docs/testing.md): defaults of the public
helpers, the variants behind a flag, the eps terms and tiny batches. Expected values are worked
here with NumPy loops from the module docstrings' formulas (the authors' code they cite), never
read back from the loss under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy_reference import np_ce
from torch import Tensor, nn

from figkd.losses import build_loss
from figkd.losses.feature_utils import (
    ConvRegressor,
    match_spatial,
    paired_stages,
    pool_to,
    probe_features,
)
from figkd.losses.pkt import pkt_loss
from figkd.losses.rkd import pairwise_distance, rkd_terms
from figkd.losses.vid import VIDHead, VIDLoss
from figkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _t(a: np.ndarray) -> Tensor:
    return torch.tensor(a, dtype=torch.float64)


def _features(embedding: np.ndarray) -> dict[str, Tensor]:
    return {"embedding": _t(embedding)}


# --------------------------------------------------------------------------- RKD


def _np_dist(e: np.ndarray, eps: float, squared: bool) -> np.ndarray:
    """Authors' psi_D: ||e_i - e_j|| (squared or not), clamped at eps, over the mean of pairs."""
    n = len(e)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                v = max(float(((e[i] - e[j]) ** 2).sum()), eps)
                d[i, j] = v if squared else math.sqrt(v)
    positive = d[d > 0]
    mean = positive.mean() if positive.size else 0.0
    return d / max(mean, eps)


def _np_angles(e: np.ndarray) -> np.ndarray:
    """psi_A(i, j, k) = cos of the angle at vertex j; 0 where an edge has zero length."""
    n = len(e)
    out = np.zeros((n, n, n))
    for j in range(n):
        for i in range(n):
            for k in range(n):
                a, b = e[i] - e[j], e[k] - e[j]
                na, nb = np.linalg.norm(a), np.linalg.norm(b)
                if na > 0 and nb > 0:
                    out[j, i, k] = a @ b / (na * nb)
    return out


def _huber(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def test_pairwise_distance_defaults_are_plain_distances_clamped_at_1e12() -> None:
    # integer rows: the Gram trick is exact, so a repeated row gives exactly 0 -> sqrt(1e-12)
    e = _t(np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]]))
    expected = np.array([[0.0, 5.0, 5.0], [5.0, 0.0, 1e-6], [5.0, 1e-6, 0.0]])
    np.testing.assert_allclose(pairwise_distance(e).numpy(), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        pairwise_distance(e, squared=True).numpy(),
        np.array([[0.0, 25.0, 25.0], [25.0, 0.0, 1e-12], [25.0, 1e-12, 0.0]]),
        rtol=1e-12,
        atol=0,
    )


def test_rkd_terms_defaults_match_numpy_with_a_repeated_row() -> None:
    # the repeated student row makes the eps clamp count; squared=False is the default
    s = np.array([[0.0, 0.0, 1.0], [3.0, 4.0, 0.0], [3.0, 4.0, 0.0], [1.0, -2.0, 2.0]])
    t = np.random.default_rng(1).normal(size=(4, 5))
    distance, angle = rkd_terms(_t(s), _t(t))
    expected_d = _huber(_np_dist(s, 1e-12, False), _np_dist(t, 1e-12, False))
    expected_a = _huber(_np_angles(s), _np_angles(t))
    assert float(distance) == pytest.approx(expected_d, rel=1e-12)
    assert float(angle) == pytest.approx(expected_a, rel=1e-12)
    # the loss's own default eps is the same 1e-12
    zs, y = np.zeros((4, 2)), np.zeros(4, dtype=np.int64)
    terms = build_loss("rkd")(_t(zs), None, torch.tensor(y), student_features=_features(s),
                              teacher_features=_features(t))
    assert float(terms["distance"]) == pytest.approx(25 * expected_d, rel=1e-12)


def test_rkd_squared_distances_and_custom_weights_match_numpy() -> None:
    rng = np.random.default_rng(2)
    zs, y = rng.normal(size=(5, 3)), np.array([0, 2, 1, 1, 0])
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 6))
    loss = build_loss("rkd", squared=True, distance_weight=2.0, angle_weight=3.0, ce_weight=0.5)
    terms = loss(_t(zs), None, torch.tensor(y), student_features=_features(s),
                 teacher_features=_features(t))
    assert float(terms["distance"]) == pytest.approx(
        2.0 * _huber(_np_dist(s, 1e-12, True), _np_dist(t, 1e-12, True)), rel=1e-10
    )
    assert float(terms["angle"]) == pytest.approx(
        3.0 * _huber(_np_angles(s), _np_angles(t)), rel=1e-10
    )
    assert float(terms["ce"]) == pytest.approx(0.5 * np_ce(zs, y), rel=1e-10)


def test_rkd_batch_of_one_has_no_pair_and_gives_zero_not_nan() -> None:
    # no pair: mean distance 0 must give 0 / eps = 0, not 0 / 0
    distance, angle = rkd_terms(_t(np.array([[1.0, 2.0]])), _t(np.array([[3.0, 1.0, 2.0]])))
    assert float(distance) == 0.0
    assert float(angle) == 0.0


# --------------------------------------------------------------------------- PKT


def _np_pkt(s: np.ndarray, t: np.ndarray, exclude_self: bool, eps: float) -> float:
    """Docstring formula with eps where the module documents it: in the norm and the log."""

    def cond(e: np.ndarray) -> np.ndarray:
        n = len(e)
        k = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                a = e[i] / (np.linalg.norm(e[i]) + eps)
                b = e[j] / (np.linalg.norm(e[j]) + eps)
                k[i, j] = 0.0 if (exclude_self and i == j) else (a @ b + 1.0) / 2.0
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(s), cond(t)
    n = len(s)
    pairs = [(i, j) for i in range(n) for j in range(n) if not (exclude_self and i == j)]
    total = sum(pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i, j in pairs)
    return total / len(pairs)


def test_pkt_loss_defaults_exclude_self_with_eps_1e7() -> None:
    # small embeddings (norm ~1e-3) make the eps in the norm visible at rel 1e-12
    rng = np.random.default_rng(3)
    s, t = 1e-3 * rng.normal(size=(4, 3)), 1e-3 * rng.normal(size=(4, 5))
    value = float(pkt_loss(_t(s), _t(t)))
    assert value == pytest.approx(_np_pkt(s, t, True, 1e-7), rel=1e-12)
    assert value != pytest.approx(_np_pkt(s, t, True, 0.0), rel=1e-9)  # the eps is really seen


def test_pkt_large_eps_in_norm_and_log_matches_numpy() -> None:
    # eps 0.05: its place in the norm and in the log changes the value far above rounding
    rng = np.random.default_rng(4)
    zs, y = rng.normal(size=(3, 4)), np.array([3, 0, 1])
    s, t = rng.normal(size=(3, 2)), rng.normal(size=(3, 6))
    for exclude in (True, False):
        loss = build_loss("pkt", exclude_self=exclude, eps=0.05, feat_weight=2.0, ce_weight=3.0)
        terms = loss(_t(zs), None, torch.tensor(y), student_features=_features(s),
                     teacher_features=_features(t))
        assert float(terms["pkt"]) == pytest.approx(2.0 * _np_pkt(s, t, exclude, 0.05), rel=1e-12)
        assert float(terms["ce"]) == pytest.approx(3.0 * np_ce(zs, y), rel=1e-12)


def test_pkt_loss_defaults_eps_1e7_exclude_self_ce_weight_1() -> None:
    rng = np.random.default_rng(5)
    zs, y = rng.normal(size=(3, 4)), np.array([1, 0, 2])
    s, t = 1e-3 * rng.normal(size=(3, 3)), 1e-3 * rng.normal(size=(3, 3))
    terms = build_loss("pkt")(_t(zs), None, torch.tensor(y), student_features=_features(s),
                              teacher_features=_features(t))
    assert float(terms["pkt"]) == pytest.approx(30000 * _np_pkt(s, t, True, 1e-7), rel=1e-12)
    assert float(terms["ce"]) == pytest.approx(np_ce(zs, y), rel=1e-12)  # ce_weight 1


def test_pkt_batch_of_two_works_and_one_is_refused() -> None:
    # with 2 samples each row has one other pair: p = 1 on both sides, KL 0
    s, t = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    assert float(pkt_loss(_t(s), _t(t))) == pytest.approx(0.0, abs=1e-15)
    # self-pairs kept: row i is (K_ii, K_ij) / sum; KL over the B^2 = 4 entries
    assert float(pkt_loss(_t(s), _t(t), exclude_self=False)) == pytest.approx(
        _np_pkt(s, t, False, 1e-7), rel=1e-12
    )
    with pytest.raises(ValueError, match="at least 2"):
        pkt_loss(_t(s[:1]), _t(t[:1]))


# --------------------------------------------------------------------------- FitNet


def _stage_features(stem: np.ndarray, stages: list[np.ndarray]) -> dict[str, object]:
    return {"stem": _t(stem), "stages": [_t(f) for f in stages]}


def test_fitnet_default_hint_layer_2_and_ce_weight_1() -> None:
    # [stem, *stages][2] == stages[1]; the regressor is swapped for the identity to see the MSE
    rng = np.random.default_rng(6)
    zs, y = rng.normal(size=(2, 3)), np.array([2, 0])
    s = [rng.normal(size=(2, 2, 3, 3)) for _ in range(4)]
    t = [rng.normal(size=(2, 2, 3, 3)) for _ in range(4)]
    loss = build_loss("fitnet")
    loss.regressor = nn.Identity()
    terms = loss(_t(zs), None, torch.tensor(y), student_features=_stage_features(s[0], s[1:]),
                 teacher_features=_stage_features(t[0], t[1:]))
    assert float(terms["hint"]) == pytest.approx(100 * ((s[2] - t[2]) ** 2).mean(), rel=1e-12)
    assert float(terms["ce"]) == pytest.approx(np_ce(zs, y), rel=1e-12)


def test_fitnet_hint_layer_bounds_are_python_indexing() -> None:
    rng = np.random.default_rng(7)
    zs, y = rng.normal(size=(2, 3)), np.array([1, 0])
    s = [rng.normal(size=(2, 2, 3, 3)) for _ in range(3)]
    t = [rng.normal(size=(2, 2, 3, 3)) for _ in range(3)]
    feats_s, feats_t = _stage_features(s[0], s[1:]), _stage_features(t[0], t[1:])
    loss = build_loss("fitnet", hint_layer=-3)  # -len(layers): the stem
    loss.regressor = nn.Identity()
    terms = loss(_t(zs), None, torch.tensor(y), student_features=feats_s, teacher_features=feats_t)
    assert float(terms["hint"]) == pytest.approx(100 * ((s[0] - t[0]) ** 2).mean(), rel=1e-12)
    for bad in (3, -4):  # one past either end
        loss = build_loss("fitnet", hint_layer=bad)
        loss.regressor = nn.Identity()
        with pytest.raises(ValueError, match="hint layers"):
            loss(_t(zs), None, torch.tensor(y), student_features=feats_s, teacher_features=feats_t)


# --------------------------------------------------------------------------- VID


def _np_vid_head(head: VIDHead, f_s: np.ndarray, f_t: np.ndarray) -> float:
    """Docstring NLL with the head's own weights and variance (its inputs, not its output)."""
    w = [m.weight.detach().double().numpy()[:, :, 0, 0] for m in head.mean
         if isinstance(m, nn.Conv2d)]
    x = np.moveaxis(f_s, 1, -1)
    mu = np.maximum(np.maximum(x @ w[0].T, 0) @ w[1].T, 0) @ w[2].T
    var = np.log1p(np.exp(head.alpha.detach().double().numpy())) + head.eps
    return float((0.5 * ((mu - np.moveaxis(f_t, 1, -1)) ** 2 / var + np.log(var))).mean())


def test_vid_head_starts_at_init_var() -> None:
    # softplus(alpha) + eps == init_var; a large eps shows where it enters
    head = VIDHead(2, 3, 2.0, 0.5)
    np.testing.assert_allclose(head.variance().detach().double().numpy(), 2.0, rtol=1e-6)


def test_vid_defaults_and_two_pooled_stage_pairs_match_numpy() -> None:
    torch.manual_seed(0)
    loss = build_loss("vid")
    assert isinstance(loss, VIDLoss)
    loss.setup(create_model("tiny_cnn", num_classes=4, in_channels=1, width=2),
               create_model("tiny_cnn", num_classes=4, in_channels=1, width=3),
               example_input=torch.randn(2, 1, 8, 8), num_train_samples=2)
    assert loss.heads is not None
    for head in loss.heads:  # documented defaults: initial variance 5, eps 1e-5
        assert isinstance(head, VIDHead)
        assert head.eps == 1e-5
        np.testing.assert_allclose(head.variance().detach().double().numpy(), 5.0, rtol=3e-7)
    # rebuild for two stage pairs; the student's 4x4 map is average-pooled to the teacher's 2x2
    loss.heads = nn.ModuleList([VIDHead(2, 3, 5.0, 1e-5), VIDHead(3, 2, 5.0, 1e-5)]).double()
    first, second = loss.heads
    assert isinstance(first, VIDHead) and isinstance(second, VIDHead)
    rng = np.random.default_rng(8)
    zs, y = rng.normal(size=(2, 4)), np.array([3, 1])
    s = [rng.normal(size=(2, 1, 2, 2)), rng.normal(size=(2, 2, 4, 4)),
         rng.normal(size=(2, 3, 2, 2))]
    t = [rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 2, 2, 2))]
    with torch.no_grad():
        second.alpha.copy_(torch.tensor([0.3, -1.0]))
    pooled = s[1].reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))
    expected = _np_vid_head(first, pooled, t[0]) + _np_vid_head(second, s[2], t[1])
    terms = loss(_t(zs), None, torch.tensor(y), student_features={"stages": [_t(f) for f in s]},
                 teacher_features={"stages": [_t(f) for f in t]})
    assert float(terms["vid"].detach()) == pytest.approx(expected, rel=1e-12)
    assert float(terms["ce"]) == pytest.approx(np_ce(zs, y), rel=1e-12)


def test_vid_init_var_must_exceed_eps() -> None:
    with pytest.raises(ValueError, match="init_var must exceed eps"):
        build_loss("vid", init_var=1e-5, eps=1e-5)
    assert build_loss("vid", init_var=2e-5, eps=1e-5).init_var == 2e-5


# --------------------------------------------------------------------------- feature_utils


def _np_adaptive_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's adaptive windows: [floor(i H / out), ceil((i + 1) H / out))."""
    h, w = x.shape[-2:]
    out = np.zeros((*x.shape[:-2], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[..., i, j] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


@pytest.mark.parametrize(("shape", "size"), [((5, 4), (2, 2)), ((4, 5), (2, 2)),
                                              ((6, 4), 2), ((6, 6), (3, 2)),
                                              ((1, 4), (2, 2)), ((4, 1), (2, 2))])
def test_pool_to_matches_adaptive_windows(
    shape: tuple[int, int], size: int | tuple[int, int]
) -> None:
    x = np.random.default_rng(9).normal(size=(1, 2, *shape))
    out_h, out_w = (size, size) if isinstance(size, int) else size
    np.testing.assert_allclose(pool_to(_t(x), size).numpy(), _np_adaptive_pool(x, out_h, out_w),
                               rtol=1e-12)


def test_match_spatial_pools_the_larger_map_and_refuses_crossed_sizes() -> None:
    rng = np.random.default_rng(10)
    wide, square = rng.normal(size=(1, 1, 4, 8)), rng.normal(size=(1, 1, 4, 4))
    a, b = match_spatial(_t(wide), _t(square))  # same height, wider student: pool its width
    np.testing.assert_allclose(a.numpy(), _np_adaptive_pool(wide, 4, 4), rtol=1e-12)
    assert torch.equal(b, _t(square))
    a, b = match_spatial(_t(square), _t(wide))  # same height, wider teacher
    assert torch.equal(a, _t(square))
    np.testing.assert_allclose(b.numpy(), _np_adaptive_pool(wide, 4, 4), rtol=1e-12)
    tall = rng.normal(size=(1, 1, 8, 4))
    a, b = match_spatial(_t(tall), _t(square))  # same width, taller student: pool its height
    np.testing.assert_allclose(a.numpy(), _np_adaptive_pool(tall, 4, 4), rtol=1e-12)
    a, b = match_spatial(_t(square), _t(tall))  # same width, taller teacher
    np.testing.assert_allclose(b.numpy(), _np_adaptive_pool(tall, 4, 4), rtol=1e-12)
    with pytest.raises(ValueError, match="cannot pool"):
        match_spatial(_t(rng.normal(size=(1, 1, 8, 2))), _t(square))
    with pytest.raises(ValueError, match="cannot pool"):
        match_spatial(_t(square), _t(rng.normal(size=(1, 1, 8, 2))))


class _Recorder(nn.Module):
    """A zoo-like model that records what ``forward_features`` saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, bool]] = []

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        self.seen.append((len(x), self.training))
        return {"embedding": x}


@pytest.mark.parametrize("training", [True, False])
def test_probe_features_uses_two_images_in_eval_mode_and_restores_the_mode(
    training: bool,
) -> None:
    model = _Recorder().train(training)
    probe_features(model, torch.zeros(5, 1))
    assert model.seen == [(2, False)]
    assert model.training is training
    with pytest.raises(TypeError, match="no forward_features"):
        probe_features(nn.Linear(1, 1), torch.zeros(2, 1))


def test_paired_stages_when_the_student_has_fewer_stages() -> None:
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert paired_stages([a], [b, c]) == [(a, c)]
    assert paired_stages([a, b], [c]) == [(b, c)]


@pytest.mark.parametrize(
    ("student", "teacher", "kind", "kernel", "stride", "padding"),
    [
        ((4, 16, 16), (6, 8, 8), nn.Conv2d, (3, 3), (2, 2), (1, 1)),
        ((4, 8, 8), (6, 16, 16), nn.ConvTranspose2d, (4, 4), (2, 2), (1, 1)),
        ((4, 6, 5), (6, 4, 4), nn.Conv2d, (3, 2), (1, 1), (0, 0)),
    ],
)
def test_conv_regressor_layer_is_the_documented_one(
    student: tuple[int, int, int],
    teacher: tuple[int, int, int],
    kind: type,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> None:
    # the docstring's choice: 3x3/2 halving, 4x4/2 transposed doubling, else a valid conv of
    # kernel 1 + H_s - H_t; a full (N, C, H, W) shape reads its last three entries
    for s_shape, t_shape in ((student, teacher), ((2, *student), (2, *teacher))):
        conv = ConvRegressor(s_shape, t_shape)[0]
        assert type(conv) is kind
        assert (conv.in_channels, conv.out_channels) == (student[0], teacher[0])
        assert (conv.kernel_size, conv.stride, conv.padding) == (kernel, stride, padding)


def test_conv_regressor_refuses_a_student_map_smaller_in_one_dimension() -> None:
    with pytest.raises(ValueError, match="no regressor"):
        ConvRegressor((4, 6, 4), (6, 4, 6))
    with pytest.raises(ValueError, match="no regressor"):
        ConvRegressor((4, 4, 6), (6, 6, 4))
