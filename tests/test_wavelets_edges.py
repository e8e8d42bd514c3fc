"""figkd.wavelets at its edges: sides of one, single (H, W) maps and deeper batches, default
levels, argument boundaries and error paths.  Values are checked against PyWavelets (or NumPy)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import torch

from figkd import wavelets as W


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _assert_close(ours: torch.Tensor, ref: np.ndarray, atol: float = 1e-10) -> None:
    assert tuple(ours.shape) == ref.shape
    np.testing.assert_allclose(ours.detach().numpy(), ref, atol=atol, rtol=0)


def _assert_coeffs_close(ours: list, ref: list) -> None:
    assert len(ours) == len(ref)
    _assert_close(ours[0], ref[0])
    for our_level, ref_level in zip(ours[1:], ref[1:]):
        for o, r in zip(our_level, ref_level, strict=True):
            _assert_close(o, r)


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize("grid", [(1, 5), (5, 1), (1, 6), (2, 3)])
def test_grids_with_a_side_of_one_are_accepted(grid: tuple[int, int]) -> None:
    x = _random((2, 5), seed=1)
    h, w = grid
    expected = np.concatenate([x, np.zeros((2, h * w - 5))], axis=1).reshape(2, h, w)
    _assert_close(W.logits_to_grid(torch.tensor(x), grid), expected, atol=0)
    assert W.resolve_grid(5, grid) == grid


@pytest.mark.parametrize("grid", [(1, 4), (4, 1), (0, 6), (6, 0), (2, 3, 1)])
def test_grids_too_small_or_malformed_are_rejected(grid: tuple) -> None:
    message = "holds 4 cells but there are 5 classes" if 0 not in grid and len(grid) == 2 else "grid must be a pair"
    with pytest.raises(ValueError, match=message):
        W.resolve_grid(5, grid)


def test_a_single_logit_vector_and_a_single_map() -> None:
    x = _random((10,), seed=2)  # C = 10 -> 4 x 3, two zeros of padding
    expected = np.concatenate([x, np.zeros(2)]).reshape(4, 3)
    grid = W.logits_to_grid(torch.tensor(x))
    _assert_close(grid, expected, atol=0)
    _assert_close(W.grid_to_logits(grid, 10), x, atol=0)
    with pytest.raises(ValueError, match="at least one dimension"):
        W.logits_to_grid(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"grid_map must be shaped \(\.\.\., H, W\), got shape \(12,\)"):
        W.grid_to_logits(torch.zeros(12), 10)


def test_grid_to_logits_accepts_one_to_all_cells() -> None:
    grid = torch.tensor(_random((2, 3, 3), seed=3))
    flat = grid.numpy().reshape(2, 9)
    _assert_close(W.grid_to_logits(grid, 1), flat[:, :1], atol=0)
    _assert_close(W.grid_to_logits(grid, 9), flat, atol=0)
    for bad in (0, 10):
        with pytest.raises(ValueError, match=rf"num_classes must be in \[1, H \* W = 9\].*got {bad}"):
            W.grid_to_logits(grid, bad)


# ----------------------------------------------------------------------------- arguments


def test_wavelet_objects_are_accepted() -> None:
    x = _random((2, 6, 5), seed=4)
    wavelet = pywt.Wavelet("db2")
    assert W.check_wavelet(wavelet) is wavelet
    ll, bands = W.dwt2(torch.tensor(x), wavelet, "zero")
    ref_ll, ref_bands = pywt.dwt2(x, "db2", mode="zero")
    _assert_coeffs_close([ll, bands], [ref_ll, ref_bands])


def test_unknown_wavelet_message_lists_only_discrete_families() -> None:
    names = set(pywt.wavelist(kind="discrete"))
    discrete = [f for f in pywt.families(short=True) if names & set(pywt.wavelist(f))]
    assert discrete[-1] == "dmey" and "gaus" not in discrete  # continuous families follow
    with pytest.raises(ValueError) as info:
        W.check_wavelet("haarr")
    assert f"families {', '.join(discrete)}, ...;" in str(info.value)


def test_non_tensors_and_integer_tensors_are_rejected() -> None:
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        W.dwt(np.zeros(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cA must be a floating-point tensor"):
        W.idwt(torch.zeros(2, dtype=torch.int32), torch.zeros(2))


def test_complex_input_is_transformed_like_its_real_and_imaginary_parts() -> None:
    x = _random((2, 8), seed=5) + 1j * _random((2, 8), seed=6)
    ca, cd = W.dwt(torch.tensor(x), "db2", "zero")
    ref_ca, ref_cd = pywt.dwt(x, "db2", mode="zero")
    _assert_close(ca, ref_ca)
    _assert_close(cd, ref_cd)


# ----------------------------------------------------------------------------- levels


def test_default_level_of_a_rectangular_map_follows_the_shorter_side() -> None:
    x = _random((2, 8, 64), seed=7)
    ours = W.wavedec2(torch.tensor(x), "haar", "zero")
    ref = pywt.wavedec2(x, "haar", mode="zero")  # level = dwt_max_level(8) = 3, not 6
    assert len(ref) == 4
    _assert_coeffs_close(ours, ref)
    ours = W.wavedec2(torch.tensor(x.transpose(0, 2, 1).copy()), "haar", "zero")
    assert len(ours) == 4


def test_default_level_of_a_batch_of_1d_signals_follows_the_signal_length() -> None:
    x = _random((3, 40), seed=12)  # 3 signals of 40 samples: level 5, not dwt_max_level(3) = 1
    ref = pywt.wavedec(x, "haar", mode="zero")
    assert len(ref) == 6
    ours = W.wavedec(torch.tensor(x), "haar", "zero")
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        _assert_close(o, r)


def test_default_level_is_at_least_one() -> None:
    # pywt's maximum for 3 samples of db2 is 0; we still take one level (docstring).
    assert pywt.dwt_max_level(3, pywt.Wavelet("db2").dec_len) == 0
    assert W.check_level(None, 3, "db2") == 1
    x = _random((2, 3, 3), seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = pywt.wavedec2(x, "db2", mode="zero", level=1)
        _assert_coeffs_close(W.wavedec2(torch.tensor(x), "db2", "zero"), ref)


def test_the_maximum_level_does_not_warn_and_one_more_does() -> None:
    assert pywt.dwt_max_level(32, 2) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert W.check_level(5, 32, "haar") == 5
    with pytest.warns(UserWarning, match="level 6 is deeper than 5"):
        assert W.check_level(6, 32, "haar") == 6
    # The warning points at the caller of check_level, not at wavelets.py.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        W.check_level(7, 32, "haar")
    assert [w.filename for w in caught] == [__file__]
    for bad in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match="level must be a positive integer"):
            W.check_level(bad, 32, "haar")  # type: ignore[arg-type]
    assert W.check_level(1, 32, "haar") == 1


# ----------------------------------------------------------------------------- input ranks


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("shape", [(6, 5), (5, 4), (1, 4), (4, 1), (2, 3, 6, 5)])
def test_single_maps_and_deeper_batches_match_pywavelets(wavelet: str, shape: tuple[int, ...]) -> None:
    x = _random(shape, seed=sum(shape))
    t = torch.tensor(x)
    ll, bands = W.dwt2(t, wavelet, "zero")
    ref = pywt.dwt2(x, wavelet, mode="zero")
    _assert_coeffs_close([ll, bands], list(ref))
    bank = W.dwt2_filter_bank(t, wavelet, "zero")
    _assert_coeffs_close([bank[0], bank[1]], list(ref))
    _assert_close(W.idwt2((ll, bands), wavelet, "zero"), pywt.idwt2(ref, wavelet, mode="zero"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ours = W.wavedec2(t, wavelet, "zero", 2)
        ref2 = pywt.wavedec2(x, wavelet, mode="zero", level=2)
    _assert_coeffs_close(ours, ref2)
    _assert_close(W.waverec2(ours, wavelet, "zero"), pywt.waverec2(ref2, wavelet, mode="zero"))


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 6, 5)])
def test_the_haar_closed_form_inverse_rebuilds_pywavelets_inverse(shape: tuple[int, ...]) -> None:
    coeffs = [_random(shape, seed=i) for i in range(4)]  # arbitrary ll, lh, hl, hh
    ref = pywt.idwt2((coeffs[0], tuple(coeffs[1:])), "haar", mode="zero")
    ours = W.idwt2((torch.tensor(coeffs[0]), tuple(torch.tensor(c) for c in coeffs[1:])), "haar", "zero")
    _assert_close(ours, ref)


# ----------------------------------------------------------------------------- error paths


def test_an_empty_axis_is_rejected() -> None:
    with pytest.raises(ValueError, match="cannot transform an empty axis"):
        W.dwt(torch.zeros(2, 0))


def test_inverting_needs_enough_coefficients() -> None:
    # db2 (filter length 4): one coefficient rebuilds 2 * 1 - 4 + 2 = 0 samples; pywt refuses too.
    with pytest.raises(ValueError, match="Invalid coefficient arrays length"):
        pywt.idwt(np.ones(1), np.ones(1), "db2", mode="zero")
    with pytest.raises(ValueError, match="1 coefficients are too few to invert a db2 transform"):
        W.idwt(torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), "db2", "zero")
    ca, cd = _random((2,), seed=9), _random((2,), seed=10)  # two coefficients -> 2 samples
    _assert_close(W.idwt(torch.tensor(ca), torch.tensor(cd), "db2", "zero"), pywt.idwt(ca, cd, "db2", mode="zero"))


def test_reconstruction_needs_an_approximation_and_details() -> None:
    x = _random((2, 6, 6), seed=11)
    with pytest.raises(ValueError, match="coeffs must hold an approximation and at least one detail array"):
        W.waverec([torch.tensor(x[0, 0])])
    with pytest.raises(ValueError, match="coeffs must hold an approximation and at least one level of details"):
        W.waverec2([torch.tensor(x)])
    # Exactly one level is enough.
    ref = pywt.wavedec(x[0, 0], "db2", mode="zero", level=1)
    _assert_close(W.waverec([torch.tensor(c) for c in ref], "db2", "zero"), pywt.waverec(ref, "db2", mode="zero"))
    ref2 = pywt.wavedec2(x, "db2", mode="zero", level=1)
    ours2 = [torch.tensor(ref2[0]), tuple(torch.tensor(b) for b in ref2[1])]
    _assert_close(W.waverec2(ours2, "db2", "zero"), pywt.waverec2(ref2, "db2", mode="zero"))


def test_coefficients_of_unrelated_levels_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"coefficient shapes \(5,\) and \(3,\) do not belong"):
        W.waverec([torch.zeros(5), torch.zeros(3)], "haar", "zero")
    with pytest.raises(ValueError, match=r"coefficient shapes \(2, 3\) and \(3,\) do not belong"):
        W.waverec([torch.zeros(2, 3), torch.zeros(3)], "haar", "zero")
    with pytest.raises(ValueError, match="do not belong"):
        W.waverec2([torch.zeros(5, 4), (torch.zeros(3, 4),) * 3], "haar", "zero")


def test_detail_bands_must_be_three_of_the_approximation_shape() -> None:
    ll = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="expected three detail bands \\(lh, hl, hh\\), got 2"):
        W.idwt2((ll, (ll, ll)), "haar")
    for odd_one in range(3):
        bands = [ll, ll, ll]
        bands[odd_one] = torch.zeros(3, 4)
        with pytest.raises(ValueError, match="ll, lh, hl and hh must share one shape"):
            W.idwt2((ll, tuple(bands)), "haar")
