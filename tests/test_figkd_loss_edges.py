"""FiGKD loss edges the main loss tests leave open: degenerate grids on the fused Haar node,
the band-path fallback and the noise branch, boundary modes on the fast paths, the RNG stream.

Every value is checked against PyWavelets (``pywt.wavedec2`` / ``pywt.wavedec``) applied to
student and teacher separately, or against NumPy.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import pywt
import torch
from torch import Tensor

from figkd.losses import FiGKDLoss, figkd_loss, standardize_logits
from figkd.losses.haar_fused import haar_detail_loss


def _logits(batch: int, classes: int, seed: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(0, 3, (batch, classes)), dtype=torch.float64)


def _ref_grid_shape(num_classes: int) -> tuple[int, int]:
    # The documented rule, stated independently: smallest H with H*H >= C, then smallest W with H*W >= C.
    h = next(k for k in range(1, num_classes + 1) if k * k >= num_classes)
    return h, next(k for k in range(1, num_classes + 1) if h * k >= num_classes)


def _pywt_coeffs(z: np.ndarray, grid: tuple[int, int], wavelet: str, mode: str, level: int, transform: str) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # levels past pywt's maximum warn
        if transform == "1d":
            coeffs = pywt.wavedec(z, wavelet, mode=mode, level=level)
            return [coeffs[0]] + [[d] for d in coeffs[1:]]
        h, w = grid
        padded = np.zeros((z.shape[0], h * w))
        padded[:, : z.shape[1]] = z
        return pywt.wavedec2(padded.reshape(-1, h, w), wavelet, mode=mode, level=level)


def _ref_detail(
    student: torch.Tensor, teacher: torch.Tensor, *, wavelet: str = "haar", mode: str = "zero",
    level: int = 1, bands: str = "high", transform: str = "2d", grid: tuple[int, int] | None = None,
) -> float:
    """Mean-reduction detail loss from PyWavelets on each side separately (no difference trick)."""
    s, t = student.numpy(), teacher.numpy()
    grid = grid or _ref_grid_shape(s.shape[1])
    cs, ct = (_pywt_coeffs(z, grid, wavelet, mode, level, transform) for z in (s, t))
    pairs = []
    if bands in ("high", "both"):
        pairs += [(a, b) for sb, tb in zip(cs[1:], ct[1:]) for a, b in zip(sb, tb)]
    if bands in ("low", "both"):
        pairs.append((cs[0], ct[0]))
    return float(sum(((a - b) ** 2).mean() for a, b in pairs))


# ------------------------------------------------------------ fused Haar node


DEGENERATE_GRIDS = [(1, 1), (1, 4), (2, 1), (4, 1), (3, 1), (1, 3), (2, 4), (5, 2), (2, 6)]


def _pywt_haar_band_matrices(grid: tuple[int, int], level: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per level, the (H*W, K) matrix of its three detail bands, and the final LL's matrix."""
    h, w = grid
    per_unit = [_pywt_coeffs(np.eye(h * w)[i : i + 1], grid, "haar", "zero", level, "2d") for i in range(h * w)]
    details = [
        np.stack([np.concatenate([b.ravel() for b in unit[j]]) for unit in per_unit])
        for j in range(level, 0, -1)  # pywt lists level J first; we want level 1 first
    ]
    return details, np.stack([unit[0].ravel() for unit in per_unit])


@pytest.mark.parametrize("grid", DEGENERATE_GRIDS)
@pytest.mark.parametrize("level", [1, 2])
def test_fused_haar_node_on_thin_and_odd_grids_matches_pywavelets(grid: tuple[int, int], level: int) -> None:
    # Sides of 1 (and maps that shrink to one row / column at level 2) must still be zero
    # padded to even length per level, exactly as pywt's mode="zero".
    num_classes = grid[0] * grid[1] - (1 if grid[0] * grid[1] > 2 else 0)  # some grids with a pad
    s, t = _logits(3, num_classes, 1), _logits(3, num_classes, 2)
    d = np.zeros((3, grid[0] * grid[1]))
    d[:, :num_classes] = (s - t).numpy()
    details, low = _pywt_haar_band_matrices(grid, level)
    weights = [0.7, 1.3][:level]
    expected_high = sum(wj * np.sum((d @ a) ** 2) for wj, a in zip(weights, details))
    # low_weight left at its default: the detail bands alone.
    ours = haar_detail_loss(s, t, grid, weights)
    assert ours.item() == pytest.approx(expected_high, rel=1e-12)
    expected = expected_high + 0.4 * np.sum((d @ low) ** 2)
    student = s.clone().requires_grad_(True)
    ours = haar_detail_loss(student, t, grid, weights, 0.4)
    assert ours.item() == pytest.approx(expected, rel=1e-12)
    # Gradient of sum_j w_j ||d A_j||^2 + w_low ||d L||^2 is 2 d (sum_j w_j A_j A_j^T + w_low L L^T),
    # here scaled by an upstream gradient of 1.5.
    gram = sum(wj * a @ a.T for wj, a in zip(weights, details)) + 0.4 * low @ low.T
    expected_grad = (2.0 * 1.5 * d @ gram)[:, :num_classes]
    (grad,) = torch.autograd.grad(ours, student, torch.tensor(1.5, dtype=torch.float64))
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------ dispatch to the right path


@pytest.mark.parametrize("mode", ["zero", "symmetric", "periodization"])
def test_large_class_counts_honour_the_boundary_mode(mode: str) -> None:
    # C = 300 > the CPU band-matrix limit: a 18 x 17 map with an odd side, where the mode matters.
    # Only mode="zero" may take the fused Haar node; the others need the band path.
    s, t = _logits(3, 300, 3), _logits(3, 300, 4)
    ours = FiGKDLoss(mode=mode).detail_loss(s, t).item()
    assert ours == pytest.approx(_ref_detail(s, t, mode=mode), rel=1e-10)


@pytest.mark.parametrize("options", [dict(wavelet="db2"), dict(transform="1d"), dict(mode="symmetric", level=2)])
def test_band_path_fallback_applies_beta(options: dict) -> None:
    s, t, y = _logits(3, 300, 5), _logits(3, 300, 6), torch.tensor([0, 150, 299])
    terms = FiGKDLoss(beta=2.5, **options)(s, t, y)
    expected = 2.5 * _ref_detail(s, t, **options)
    assert terms["detail"].item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("num_classes, options", [(4, {}), (300, {}), (300, dict(wavelet="db2", bands="both")),
                                                  (300, dict(transform="1d", bands="both", level=2))])
def test_a_batch_of_one_sample_works_on_every_path(num_classes: int, options: dict) -> None:
    # Band sizes are read per sample; a single-sample batch must not trip over that.
    s, t = _logits(1, num_classes, 15), _logits(1, num_classes, 16)
    assert FiGKDLoss(**options).detail_loss(s, t).item() == pytest.approx(_ref_detail(s, t, **options), rel=1e-10)


@pytest.mark.parametrize("num_classes", [100, 300])
def test_noise_branch_uses_the_difference_and_applies_beta(num_classes: int) -> None:
    # A noise std of 1e-30 cannot move float64 band values of order 1, so the noisy branch must
    # give beta times the clean reference: the student - teacher difference, scaled by beta.
    s, t = _logits(4, num_classes, 7), _logits(4, num_classes, 8)
    y = torch.zeros(4, dtype=torch.long)
    loss = FiGKDLoss(beta=3.0, noise_std=1e-30, bands="both", level=2).train()
    expected = 3.0 * _ref_detail(s, t, bands="both", level=2)
    assert loss(s, t, y)["detail"].item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("options", [dict(wavelet="db2"), dict(transform="1d"), dict(bands="both")])
def test_eval_mode_adds_no_noise_on_the_band_path(options: dict) -> None:
    s, t = _logits(3, 300, 9), _logits(3, 300, 10)
    loss = FiGKDLoss(noise_std=0.5, **options).eval()
    for _ in range(2):
        assert loss.detail_loss(s, t).item() == pytest.approx(_ref_detail(s, t, **options), rel=1e-10)


def test_noise_reaches_only_the_high_bands() -> None:
    # Student == teacher: every coefficient of the loss is pure noise.  Noise on the three high
    # bands gives E = 3 sigma^2 under "mean"; noise on the LL band too would give 4 sigma^2.
    torch.manual_seed(0)
    z = _logits(4096, 100, 11)
    sigma = 0.5
    loss = FiGKDLoss(noise_std=sigma, bands="both").train()
    assert loss.detail_loss(z, z.clone()).item() == pytest.approx(3 * sigma**2, abs=0.03)


@pytest.mark.parametrize("num_classes, options", [(100, {}), (300, {}), (300, dict(wavelet="db2")),
                                                  (300, dict(transform="1d", bands="both"))])
def test_noise_free_loss_leaves_the_global_rng_alone(num_classes: int, options: dict) -> None:
    # Without noise the loss draws no random numbers, so a run's random stream (dropout,
    # augmentation) does not depend on which FiGKD variant is trained.
    s, t = _logits(2, num_classes, 12), _logits(2, num_classes, 13)
    loss = FiGKDLoss(**options).train()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    value = loss.detail_loss(s, t)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    assert value.item() == pytest.approx(_ref_detail(s, t, **options), rel=1e-10)


# ------------------------------------------------------------ logit standardization


def test_standardize_logits_uses_the_last_axis_of_any_rank() -> None:
    z = np.random.default_rng(14).normal(2.0, 4.0, (2, 3, 5))
    expected = (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(standardize_logits(torch.tensor(z)).numpy(), expected, rtol=1e-12, atol=0)


# ------------------------------------------------------------ which path computes the loss


@pytest.mark.parametrize("train", [False, True])
def test_band_matrix_serves_up_to_256_classes_on_the_cpu(train: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # BAND_MATRIX_MAX_CLASSES["cpu"] = 256 is the largest C for the band matrix (documented); past it,
    # Haar in zero mode takes the fused node.  Without noise, training mode must not leave the fast paths.
    calls: list[str] = []  # each wrapper records its path, then computes as before
    matrix_loss, fused_loss = figkd_loss.linear_band_loss, figkd_loss.haar_detail_loss

    def matrix(*a: Any) -> Tensor:
        calls.append("matrix")
        return matrix_loss(*a)

    def fused(*a: Any) -> Tensor:
        calls.append("fused")
        return fused_loss(*a)

    monkeypatch.setattr(figkd_loss, "linear_band_loss", matrix)
    monkeypatch.setattr(figkd_loss, "haar_detail_loss", fused)
    for num_classes, path in [(256, "matrix"), (257, "fused")]:
        s, t = _logits(2, num_classes, 17), _logits(2, num_classes, 18)
        calls.clear()
        loss = FiGKDLoss().train(train)
        assert loss.detail_loss(s, t).item() == pytest.approx(_ref_detail(s, t), rel=1e-10)
        assert calls == [path], num_classes


@pytest.mark.filterwarnings("ignore:level 1 is deeper than 0")  # a 1 x 1 map: pywt's maximum level is 0
def test_a_device_type_missing_from_the_table_never_uses_the_band_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # A device type with no entry gets the limit 0: no class count, not even C = 1, takes the matrix.
    calls: list[str] = []
    matrix_loss = figkd_loss.linear_band_loss
    monkeypatch.setattr(figkd_loss, "BAND_MATRIX_MAX_CLASSES", {})

    def matrix(*a: Any) -> Tensor:
        calls.append("matrix")
        return matrix_loss(*a)

    monkeypatch.setattr(figkd_loss, "linear_band_loss", matrix)
    s, t = _logits(2, 1, 19), _logits(2, 1, 20)
    # C = 1 -> 1 x 1 map, zero padded to [[d, 0], [0, 0]]: LH = HL = HH = d / 2, so the loss is
    # 3 * mean(d^2) / 4 over the batch.
    d = (s - t).numpy()[:, 0]
    assert FiGKDLoss().detail_loss(s, t).item() == pytest.approx(3 * np.mean(d**2) / 4, rel=1e-12)
    assert calls == []


# ------------------------------------------------------------ constructor arguments


@pytest.mark.parametrize("level", [True, 2.0, "2", 0])
def test_level_must_be_a_positive_int_not_a_bool_or_float(level: object) -> None:
    with pytest.raises(ValueError, match="level must be a positive integer"):
        FiGKDLoss(level=level)  # type: ignore[arg-type]


def test_fused_haar_node_without_levels_or_low_band_is_zero_and_has_no_gradient() -> None:
    """No level weights and no low weight: the loss is the constant 0 and backward must not
    fail (it used to reshape a missing gradient); the student gets no gradient from it."""
    student = _logits(3, 10, 0).requires_grad_(True)
    loss = haar_detail_loss(student, _logits(3, 10, 1), (4, 3), [], 0.0)
    assert loss.item() == 0.0
    (loss + student.sum()).backward()  # the sum gives a gradient of ones
    assert student.grad is not None and torch.equal(student.grad, torch.ones_like(student))


@pytest.mark.parametrize("grid", [(10,), (0, 10), (2, 5, 10), (2.5, 4)])
def test_a_malformed_grid_is_refused_when_the_loss_is_built(grid: tuple) -> None:
    with pytest.raises(ValueError, match=r"grid must be a pair of positive integers \(H, W\)"):
        FiGKDLoss(grid=grid)
    assert FiGKDLoss(grid=[2, 5]).grid == (2, 5)  # a config gives a list
    assert FiGKDLoss(grid=(1, 10)).grid == (1, 10)  # one row is a pair of positive integers
