"""figkd.wavelets against PyWavelets, the independent reference implementation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pywt
import torch

from figkd import wavelets as W

CLASS_COUNTS = [10, 40, 67, 100, 120, 200, 1000]
WAVELETS = ["haar", "db2", "bior1.3"]
LEVELS = [1, 2, 3]
ATOL = 1e-5


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _assert_close(ours: torch.Tensor, ref: np.ndarray, atol: float = ATOL) -> None:
    assert tuple(ours.shape) == ref.shape
    np.testing.assert_allclose(ours.detach().numpy(), ref, atol=atol, rtol=0)


def _pywt_levels(size: int, wavelet: str) -> list[int]:
    """Levels 1-3 that PyWavelets computes without an error for this size."""
    return [lvl for lvl in LEVELS if lvl <= max(pywt.dwt_max_level(size, wavelet), 1) + 2]


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize(
    "num_classes, expected",
    [(100, (10, 10)), (200, (15, 14)), (120, (11, 11)), (67, (9, 8)), (40, (7, 6)), (1000, (32, 32)),
     (1, (1, 1)), (2, (2, 1)), (10, (4, 3))],
)
def test_logit_grid_shape_known_values(num_classes: int, expected: tuple[int, int]) -> None:
    assert W.logit_grid_shape(num_classes) == expected


def test_logit_grid_shape_matches_brute_force_rule() -> None:
    # Independent statement of the rule: H is the smallest side with H*H >= C,
    # W the smallest with H*W >= C.
    for c in range(1, 3000):
        h = next(k for k in range(1, c + 1) if k * k >= c)
        w = next(k for k in range(1, c + 1) if h * k >= c)
        assert W.logit_grid_shape(c) == (h, w), c


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100"])
def test_logit_grid_shape_rejects_bad_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        W.logit_grid_shape(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [40, 67, 100, 200])
def test_logits_to_grid_pads_with_zeros_row_major(num_classes: int) -> None:
    x = _random((3, num_classes))
    h, w = W.logit_grid_shape(num_classes)
    expected = np.concatenate([x, np.zeros((3, h * w - num_classes))], axis=1).reshape(3, h, w)
    grid = W.logits_to_grid(torch.tensor(x))
    _assert_close(grid, expected, atol=0)
    _assert_close(W.grid_to_logits(grid, num_classes), x, atol=0)


def test_logits_to_grid_explicit_grid_and_errors() -> None:
    x = torch.arange(24.0).reshape(1, 24)
    assert W.logits_to_grid(x, grid=(4, 6)).shape == (1, 4, 6)
    assert W.logits_to_grid(x, grid=(4, 6))[0, 1, 0] == 6.0
    with pytest.raises(ValueError, match="grid=.*holds 20 cells but there are 24 classes"):
        W.logits_to_grid(x, grid=(4, 5))
    with pytest.raises(ValueError, match="grid must be a pair"):
        W.logits_to_grid(x, grid=(0, 30))
    with pytest.raises(ValueError, match="num_classes must be in"):
        W.grid_to_logits(torch.zeros(2, 3, 3), 10)


# ------------------------------------------------------------------ 2D vs PyWavelets


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_wavedec2_and_dwt2_match_pywavelets(num_classes: int, wavelet: str) -> None:
    grid = W.logits_to_grid(torch.tensor(_random((4, num_classes), seed=num_classes)))
    x = grid.numpy()
    ll, (lh, hl, hh) = W.dwt2(grid, wavelet, "zero")
    ref_ll, (ref_lh, ref_hl, ref_hh) = pywt.dwt2(x, wavelet, mode="zero")
    for ours, ref in zip((ll, lh, hl, hh), (ref_ll, ref_lh, ref_hl, ref_hh)):
        _assert_close(ours, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # deep levels warn in both libraries
        for level in _pywt_levels(min(x.shape[-2:]), wavelet):
            our_coeffs = W.wavedec2(grid, wavelet, "zero", level)
            ref_coeffs = pywt.wavedec2(x, wavelet, mode="zero", level=level)
            assert len(our_coeffs) == len(ref_coeffs) == level + 1
            _assert_close(our_coeffs[0], ref_coeffs[0])
            for our_bands, ref_bands in zip(our_coeffs[1:], ref_coeffs[1:]):
                for o, r in zip(our_bands, ref_bands):
                    _assert_close(o, r)
            rec = W.waverec2(our_coeffs, wavelet, "zero")
            _assert_close(rec, pywt.waverec2(ref_coeffs, wavelet, mode="zero"))
            _assert_close(rec[..., : x.shape[-2], : x.shape[-1]], x)  # perfect reconstruction


@pytest.mark.parametrize("mode", W.MODES)
@pytest.mark.parametrize("wavelet", WAVELETS + ["db4", "sym3", "coif1"])
@pytest.mark.parametrize("shape", [(10, 10), (15, 14), (9, 8), (7, 6), (3, 5), (2, 2)])
def test_every_boundary_mode_matches_pywavelets(mode: str, wavelet: str, shape: tuple[int, int]) -> None:
    x = _random((2, *shape), seed=sum(shape))
    t = torch.tensor(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for level in (1, 2):
            try:
                ref = pywt.wavedec2(x, wavelet, mode=mode, level=level)
            except ValueError:  # length-1 axis in [anti]reflect mode: we must refuse too
                with pytest.raises(ValueError, match="at least 2 samples"):
                    W.wavedec2(t, wavelet, mode, level)
                continue
            ours = W.wavedec2(t, wavelet, mode, level)
            _assert_close(ours[0], ref[0], atol=1e-9)
            for our_bands, ref_bands in zip(ours[1:], ref[1:]):
                for o, r in zip(our_bands, ref_bands):
                    _assert_close(o, r, atol=1e-9)
            _assert_close(W.waverec2(ours, wavelet, mode), pywt.waverec2(ref, wavelet, mode=mode), 1e-9)


@pytest.mark.parametrize("mode", W.MODES)
@pytest.mark.parametrize("shape", [(10, 10), (15, 14), (9, 8), (7, 7), (1, 3)])
def test_haar_closed_form_equals_filter_bank(mode: str, shape: tuple[int, int]) -> None:
    if shape[0] == 1 and mode in ("reflect", "antireflect"):
        pytest.skip("PyWavelets rejects length-1 axes in [anti]reflect mode")
    x = torch.tensor(_random((3, *shape), seed=7))
    closed_ll, closed_bands = W.dwt2_haar(x, mode)
    bank_ll, bank_bands = W.dwt2_filter_bank(x, "haar", mode)
    torch.testing.assert_close(closed_ll, bank_ll, atol=1e-12, rtol=0)
    for c, b in zip(closed_bands, bank_bands):
        torch.testing.assert_close(c, b, atol=1e-12, rtol=0)
    # The closed-form inverse against the general synthesis path.
    rec_closed = W.idwt2((closed_ll, closed_bands), "haar", mode)
    rec_ref = pywt.idwt2(pywt.dwt2(x.numpy(), "haar", mode=mode), "haar", mode=mode)
    _assert_close(rec_closed, rec_ref, atol=1e-12)


def test_haar_closed_form_float32_matches_float64() -> None:
    x = torch.tensor(_random((64, 10, 10)))
    ll64, bands64 = W.dwt2(x, "haar")
    ll32, bands32 = W.dwt2(x.float(), "haar")
    assert ll32.dtype == torch.float32
    torch.testing.assert_close(ll32, ll64.float(), atol=1e-5, rtol=1e-5)
    for a, b in zip(bands32, bands64):
        torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ 1D vs PyWavelets


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_wavedec_1d_matches_pywavelets(num_classes: int, wavelet: str) -> None:
    x = _random((3, num_classes), seed=num_classes + 1)
    t = torch.tensor(x)
    ca, cd = W.dwt(t, wavelet, "zero")
    ref_ca, ref_cd = pywt.dwt(x, wavelet, mode="zero")
    _assert_close(ca, ref_ca)
    _assert_close(cd, ref_cd)
    _assert_close(W.idwt(ca, cd, wavelet, "zero"), pywt.idwt(ref_ca, ref_cd, wavelet, mode="zero"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for level in LEVELS:
            ours = W.wavedec(t, wavelet, "zero", level)
            ref = pywt.wavedec(x, wavelet, mode="zero", level=level)
            for o, r in zip(ours, ref, strict=True):
                _assert_close(o, r)
            rec = W.waverec(ours, wavelet, "zero")
            _assert_close(rec[..., :num_classes], x)


@pytest.mark.parametrize("mode", W.MODES)
@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("length", [1, 2, 3, 5, 10, 67])
def test_dwt_1d_every_mode_matches_pywavelets(mode: str, wavelet: str, length: int) -> None:
    x = _random((2, length), seed=length)
    try:
        ref = pywt.wavedec(x, wavelet, mode=mode, level=1)
    except ValueError as err:  # pywt rejects length-1 [anti]reflect: so must we
        with pytest.raises(ValueError, match="at least 2 samples"):
            W.wavedec(torch.tensor(x), wavelet, mode, 1)
        assert "reflect" in str(err)
        return
    ours = W.wavedec(torch.tensor(x), wavelet, mode, 1)
    for o, r in zip(ours, ref, strict=True):
        _assert_close(o, r, atol=1e-9)
    _assert_close(W.waverec(ours, wavelet, mode), pywt.waverec(ref, wavelet, mode=mode), atol=1e-9)


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_haar_preserves_energy(num_classes: int) -> None:
    grid = W.logits_to_grid(torch.tensor(_random((5, num_classes), seed=3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for level in LEVELS:
            coeffs = W.wavedec2(grid, "haar", "zero", level)
            energy = coeffs[0].square().sum((-2, -1)) + sum(
                band.square().sum((-2, -1)) for bands in coeffs[1:] for band in bands
            )
            torch.testing.assert_close(energy, grid.square().sum((-2, -1)), atol=1e-9, rtol=1e-12)


@pytest.mark.parametrize("wavelet", ["db2", "db4", "sym3"])
def test_orthogonal_wavelets_preserve_energy_in_periodization_mode(wavelet: str) -> None:
    x = torch.tensor(_random((4, 16, 12), seed=11))
    ll, bands = W.dwt2(x, wavelet, "periodization")
    energy = ll.square().sum((-2, -1)) + sum(b.square().sum((-2, -1)) for b in bands)
    # PyWavelets stores some filters (sym3) to ~1e-11, which bounds the tolerance.
    torch.testing.assert_close(energy, x.square().sum((-2, -1)), atol=1e-8, rtol=1e-9)


@pytest.mark.filterwarnings("ignore:level 2 is deeper")
def test_transforms_pass_gradcheck_in_float64() -> None:
    x = torch.tensor(_random((2, 7, 6), seed=2), requires_grad=True)

    def flat(coeffs: list) -> torch.Tensor:
        parts = [coeffs[0].flatten()] + [b.flatten() for bands in coeffs[1:] for b in bands]
        return torch.cat(parts)

    for wavelet, mode in [("haar", "zero"), ("db2", "symmetric"), ("bior1.3", "periodization"),
                          ("db2", "smooth"), ("haar", "antireflect")]:
        assert torch.autograd.gradcheck(lambda t: flat(W.wavedec2(t, wavelet, mode, 2)), (x,))
        assert torch.autograd.gradcheck(lambda t: torch.cat(W.wavedec(t, wavelet, mode, 2), -1), (x,))
    coeffs = [c.detach().requires_grad_(True) for c in W.dwt2(x.detach(), "db2", "zero")[1]]
    ll = W.dwt2(x.detach(), "db2", "zero")[0].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, *b: W.idwt2((a, b), "db2", "zero"), (ll, *coeffs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_follows_input_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(2, 10, 10, dtype=dtype)
    ll, bands = W.dwt2(x, "haar")
    assert ll.dtype == dtype and all(b.dtype == dtype for b in bands)
    ll, bands = W.dwt2(x.float().to(dtype), "db2")
    assert ll.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - runs only with a GPU
    x = torch.randn(8, 15, 14, dtype=torch.float64)
    for wavelet in WAVELETS:
        cpu = W.wavedec2(x, wavelet, "zero", 2)
        gpu = W.wavedec2(x.cuda(), wavelet, "zero", 2)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0])


def test_batched_leading_dims_are_independent() -> None:
    x = torch.tensor(_random((2, 3, 10, 10), seed=9))
    ll, _bands = W.dwt2(x, "db2")
    single_ll, _ = W.dwt2(x[1, 2], "db2")
    torch.testing.assert_close(ll[1, 2], single_ll)


# ------------------------------------------------------------------ errors


def test_bad_arguments_name_the_problem() -> None:
    x = torch.randn(2, 10, 10)
    with pytest.raises(ValueError, match="wavelet must be a discrete wavelet.*got 'haarr'"):
        W.dwt2(x, "haarr")
    with pytest.raises(ValueError, match="wavelet must be a discrete wavelet.*'morl'"):
        W.dwt2(x, "morl")  # continuous wavelets have no filter bank
    with pytest.raises(ValueError, match="mode must be one of zero, constant"):
        W.dwt2(x, "haar", "wrap")
    with pytest.raises(ValueError, match=r"shaped \(\.\.\., H, W\)"):
        W.dwt2(torch.randn(5), "haar")
    with pytest.raises(ValueError, match="floating-point"):
        W.dwt2(torch.ones(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="level must be a positive integer"):
        W.wavedec2(x, "haar", "zero", 0)
    with pytest.warns(UserWarning, match="deeper than"):
        W.wavedec2(x, "db2", "zero", 3)
    with pytest.raises(ValueError, match="same shape"):
        W.idwt(torch.zeros(3), torch.zeros(4))


def test_default_level_is_pywavelets_maximum() -> None:
    x = torch.randn(1, 32, 32, dtype=torch.float64)
    assert len(W.wavedec2(x, "haar")) == pywt.dwt_max_level(32, "haar") + 1 == 6
    assert W.dwt_max_level(10, "db2") == pywt.dwt_max_level(10, "db2") == 1
    assert math.isclose(float(W.wavedec(x[0, 0], "haar")[0][0]),
                        float(pywt.wavedec(x[0, 0].numpy(), "haar")[0][0]), rel_tol=1e-12)
