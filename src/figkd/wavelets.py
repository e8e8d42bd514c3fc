"""Discrete wavelet transforms of logit vectors, in PyTorch.

FiGKD treats a logit vector as a signal: it is reshaped into a near-square
H x W map and split by a 2D DWT into a low band (LL) and three detail bands
(LH, HL, HH).  This module provides

* the logit <-> grid reshaping (:func:`logit_grid_shape`, :func:`logits_to_grid`,
  :func:`grid_to_logits`);
* 1D and 2D DWTs, their inverses and multi-level versions for any discrete
  wavelet and boundary mode PyWavelets knows, with exactly PyWavelets' output
  order, sign convention and sizes (:func:`dwt`, :func:`idwt`, :func:`wavedec`,
  :func:`waverec`, :func:`dwt2`, :func:`idwt2`, :func:`wavedec2`, :func:`waverec2`);
* a closed form for the Haar wavelet, which is the default hot path.

Everything works on tensors shaped ``(..., N)`` (1D) or ``(..., H, W)`` (2D), is
differentiable, and follows the input's device and dtype.  PyWavelets is used
only for its filter coefficients; the boundary extensions and the filtering are
implemented here, and the tests compare the result with ``pywt`` itself.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import pywt
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODES",
    "Bands2D",
    "WaveletLike",
    "check_level",
    "check_mode",
    "check_wavelet",
    "dwt",
    "dwt2",
    "dwt2_filter_bank",
    "dwt2_haar",
    "dwt_max_level",
    "grid_to_logits",
    "idwt",
    "idwt2",
    "logit_grid_shape",
    "logits_to_grid",
    "resolve_grid",
    "wavedec",
    "wavedec2",
    "waverec",
    "waverec2",
]

#: Boundary modes, named and behaving as in PyWavelets (``pywt.Modes.modes``).
MODES: tuple[str, ...] = (
    "zero",
    "constant",
    "symmetric",
    "periodic",
    "smooth",
    "periodization",
    "reflect",
    "antisymmetric",
    "antireflect",
)

WaveletLike: TypeAlias = str | pywt.Wavelet
#: The three 2D detail bands in PyWavelets' order: (cH, cV, cD) = (LH, HL, HH).
Bands2D = tuple[Tensor, Tensor, Tensor]

_HAAR_NAMES = frozenset({"haar", "db1"})


# --------------------------------------------------------------------------
# Logit vector <-> 2D map
# --------------------------------------------------------------------------


def logit_grid_shape(num_classes: int) -> tuple[int, int]:
    """Near-square map size for ``num_classes`` logits: H = ceil(sqrt(C)), W = ceil(C / H).

    C=100 -> (10, 10), 200 -> (15, 14), 120 -> (11, 11), 67 -> (9, 8), 40 -> (7, 6).
    H * W >= C always holds and the padding H * W - C is smaller than H.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    height = math.isqrt(num_classes - 1) + 1  # exact integer ceil(sqrt(C))
    width = -(-num_classes // height)
    return height, width


def resolve_grid(num_classes: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """``grid`` checked against ``num_classes``, or the default shape when ``None``."""
    if grid is None:
        return logit_grid_shape(num_classes)
    if len(grid) != 2 or any(not isinstance(s, int) or s < 1 for s in grid):
        raise ValueError(f"grid must be a pair of positive integers (H, W), got {grid!r}")
    height, width = grid
    if height * width < num_classes:
        raise ValueError(
            f"grid={grid} holds {height * width} cells but there are {num_classes} classes; "
            f"choose H * W >= {num_classes} or pass grid=None for {logit_grid_shape(num_classes)}"
        )
    return height, width


def logits_to_grid(logits: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Reshape ``(..., C)`` logits into ``(..., H, W)`` maps, row-major.

    The vector is zero-padded at its end to H * W entries.  For distillation the
    pad is harmless: teacher and student get the same zeros, so their difference
    (all the detail loss sees, the transform being linear) is zero there.
    """
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension (..., C), got a scalar")
    num_classes = logits.shape[-1]
    height, width = resolve_grid(num_classes, grid)
    pad = height * width - num_classes
    if pad:
        logits = F.pad(logits, (0, pad))
    return logits.reshape(*logits.shape[:-1], height, width)


def grid_to_logits(grid_map: Tensor, num_classes: int) -> Tensor:
    """Inverse of :func:`logits_to_grid`: flatten ``(..., H, W)`` and drop the padding."""
    if grid_map.dim() < 2:
        raise ValueError(f"grid_map must be shaped (..., H, W), got shape {tuple(grid_map.shape)}")
    height, width = grid_map.shape[-2:]
    if not 1 <= num_classes <= height * width:
        raise ValueError(
            f"num_classes must be in [1, H * W = {height * width}] for a {height}x{width} map, "
            f"got {num_classes}"
        )
    return grid_map.flatten(-2)[..., :num_classes]


# --------------------------------------------------------------------------
# Argument checks and filter banks
# --------------------------------------------------------------------------


def check_wavelet(wavelet: WaveletLike) -> pywt.Wavelet:
    """Return the ``pywt.Wavelet`` for a name, or raise a ValueError naming valid ones."""
    if isinstance(wavelet, pywt.Wavelet):
        return wavelet
    if isinstance(wavelet, str) and wavelet in _discrete_wavelets():
        return pywt.Wavelet(wavelet)
    families = ", ".join(pywt.families(short=True)[:7])
    raise ValueError(
        f"wavelet must be a discrete wavelet known to PyWavelets (e.g. 'haar', 'db2', 'bior1.3'; "
        f"families {families}, ...; full list: pywt.wavelist(kind='discrete')), got {wavelet!r}"
    )


@functools.lru_cache(maxsize=1)
def _discrete_wavelets() -> frozenset[str]:
    return frozenset(pywt.wavelist(kind="discrete"))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _is_haar(wavelet: pywt.Wavelet) -> bool:
    return wavelet.name in _HAAR_NAMES


_FilterKey = tuple[str, torch.dtype, torch.device]
_FILTER_CACHE: dict[_FilterKey, tuple[Tensor, Tensor]] = {}


def _filters(wavelet: pywt.Wavelet, like: Tensor) -> tuple[Tensor, Tensor]:
    """(analysis, synthesis) filter pairs as (2, 1, F) tensors on ``like``'s device/dtype.

    The analysis pair is stored reversed so that ``conv1d`` (a cross-correlation)
    computes PyWavelets' convolution ``out[k] = sum_j f[j] x[2k + 1 - j]``.
    """
    key = (wavelet.name, like.dtype, like.device)
    cached = _FILTER_CACHE.get(key)
    if cached is None:
        dec = np.stack([wavelet.dec_lo[::-1], wavelet.dec_hi[::-1]])[:, None, :]
        rec = np.stack([wavelet.rec_lo, wavelet.rec_hi])[:, None, :]
        cached = (
            torch.as_tensor(dec.copy(), dtype=like.dtype, device=like.device),
            torch.as_tensor(rec.copy(), dtype=like.dtype, device=like.device),
        )
        _FILTER_CACHE[key] = cached
    return cached


def dwt_max_level(size: int, wavelet: WaveletLike) -> int:
    """Deepest level at which at least one coefficient avoids boundary effects (as pywt)."""
    return pywt.dwt_max_level(size, check_wavelet(wavelet).dec_len)


def _check_floating(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


# --------------------------------------------------------------------------
# Boundary extension (PyWavelets' modes, written out as index rules)
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _extension_matrix(mode: str, length: int, positions: tuple[int, ...]) -> np.ndarray:
    # Cached: callers must copy (torch.tensor does) and never write to the result.
    """Rows expressing the extended samples at ``positions`` as combinations of x[0..N-1].

    Every PyWavelets mode is linear in the signal, so an extended sample is a
    weighted sum of at most three original samples; we return that (len(positions), N)
    weight matrix.  Positions < 0 lie left of the signal, >= N right of it.
    """
    n = length
    rows = np.zeros((len(positions), n))
    for row, i in enumerate(positions):
        if mode == "zero":
            continue
        if mode == "constant" or (n == 1 and mode == "smooth"):
            rows[row, min(max(i, 0), n - 1)] = 1.0
        elif mode == "periodic":
            rows[row, i % n] = 1.0
        elif mode in ("symmetric", "antisymmetric"):
            r = i % (2 * n)
            mirrored = r >= n
            rows[row, 2 * n - 1 - r if mirrored else r] = -1.0 if mirrored and mode == "antisymmetric" else 1.0
        elif mode == "reflect":
            r = i % (2 * n - 2)
            rows[row, r if r < n else 2 * n - 2 - r] = 1.0
        elif mode == "smooth":  # straight-line continuation of the first / last two samples
            if i < 0:
                rows[row, 0] += 1.0 - i
                rows[row, 1] += i
            else:
                k = i - (n - 1)
                rows[row, n - 1] += 1.0 + k
                rows[row, n - 2] -= k
        elif mode == "antireflect":  # point symmetry about each end sample, repeated
            period = 2 * n - 2
            q, r = divmod(i, period)
            if r < n:
                rows[row, r] += 1.0
            else:
                rows[row, n - 1] += 2.0
                rows[row, period - r] -= 1.0
            rows[row, n - 1] += 2.0 * q
            rows[row, 0] -= 2.0 * q
        else:  # pragma: no cover - guarded by check_mode
            raise ValueError(mode)
    return rows


def _extend(x: Tensor, left: int, right: int, mode: str) -> Tensor:
    """Extend the last axis of ``x`` by ``left`` / ``right`` samples in PyWavelets' ``mode``."""
    if left == 0 and right == 0:
        return x
    if mode == "zero":
        return F.pad(x, (left, right))
    n = x.shape[-1]
    if n == 1 and mode in ("reflect", "antireflect"):
        raise ValueError(f"mode {mode!r} needs at least 2 samples along the transformed axis, got 1")
    parts = []
    if left:
        weights = _extension_matrix(mode, n, tuple(range(-left, 0)))
        parts.append(x @ torch.tensor(weights.T, dtype=x.dtype, device=x.device))
    parts.append(x)
    if right:
        weights = _extension_matrix(mode, n, tuple(range(n, n + right)))
        parts.append(x @ torch.tensor(weights.T, dtype=x.dtype, device=x.device))
    return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------
# 1D transforms along the last axis
# --------------------------------------------------------------------------


def _analysis_last_axis(x: Tensor, wavelet: pywt.Wavelet, mode: str) -> tuple[Tensor, Tensor]:
    """One analysis step along the last axis: (approximation, detail)."""
    n = x.shape[-1]
    if n < 1:
        raise ValueError("cannot transform an empty axis")
    dec, _ = _filters(wavelet, x)
    flen = dec.shape[-1]
    lead = x.shape[:-1]
    if mode == "periodization":
        if n % 2:
            x = _extend(x, 0, 1, "constant")  # pywt repeats the last sample for odd lengths
        half = flen // 2
        padded = _extend(x, half - 1, half - 1, "periodic")
    else:
        padded = _extend(x, flen - 2, flen - 1, mode)
    out = F.conv1d(padded.reshape(-1, 1, padded.shape[-1]), dec, stride=2)
    out_len = (n + 1) // 2 if mode == "periodization" else (n + flen - 1) // 2
    out = out[..., :out_len]
    return out[:, 0].reshape(*lead, out_len), out[:, 1].reshape(*lead, out_len)


def _synthesis_last_axis(
    approx: Tensor, detail: Tensor, wavelet: pywt.Wavelet, mode: str
) -> Tensor:
    """One synthesis step along the last axis (inverse of :func:`_analysis_last_axis`)."""
    if approx.shape != detail.shape:
        raise ValueError(
            f"approximation and detail coefficients must have the same shape, got "
            f"{tuple(approx.shape)} and {tuple(detail.shape)}"
        )
    n = approx.shape[-1]
    _, rec = _filters(wavelet, approx)
    flen = rec.shape[-1]
    lead = approx.shape[:-1]
    stacked = torch.stack([approx, detail], dim=-2).reshape(-1, 2, n)
    full = F.conv_transpose1d(stacked, rec, stride=2)[:, 0]  # length 2(n - 1) + F
    if mode == "periodization":
        out_len = 2 * n
        shift = 1 - flen // 2
        index = (torch.arange(full.shape[-1], device=full.device) + shift) % out_len
        out = full.new_zeros(full.shape[0], out_len).index_add_(1, index, full)
    else:
        out_len = 2 * n - flen + 2
        if out_len < 1:
            raise ValueError(
                f"{n} coefficients are too few to invert a {wavelet.name} transform "
                f"(filter length {flen}) in mode {mode!r}"
            )
        out = full[:, flen - 2 : flen - 2 + out_len]
    return out.reshape(*lead, out_len)


def dwt(x: Tensor, wavelet: WaveletLike = "haar", mode: str = "zero") -> tuple[Tensor, Tensor]:
    """Single-level 1D DWT along the last axis; returns ``(cA, cD)`` exactly as ``pywt.dwt``."""
    _check_floating(x)
    return _analysis_last_axis(x, check_wavelet(wavelet), check_mode(mode))


def idwt(cA: Tensor, cD: Tensor, wavelet: WaveletLike = "haar", mode: str = "zero") -> Tensor:
    """Inverse of :func:`dwt` (as ``pywt.idwt``)."""
    _check_floating(cA, "cA")
    return _synthesis_last_axis(cA, cD, check_wavelet(wavelet), check_mode(mode))


@functools.lru_cache(maxsize=256)
def _max_level(size: int, filter_length: int) -> int:
    return pywt.dwt_max_level(size, filter_length)


def check_level(level: int | None, size: int, wavelet: WaveletLike) -> int:
    """Validate a decomposition depth; like pywt, warn (not fail) past the useful maximum.

    ``None`` means the maximum level for ``size`` (at least 1).
    """
    wavelet = check_wavelet(wavelet)
    max_level = _max_level(size, wavelet.dec_len)
    if level is None:
        return max(max_level, 1)
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f"level must be a positive integer, got {level!r}")
    if level > max_level:
        warnings.warn(
            f"level {level} is deeper than {max_level}, the largest for size {size} and "
            f"wavelet {wavelet.name!r}: every coefficient will see boundary effects",
            UserWarning,
            stacklevel=2,
        )
    return level


def wavedec(
    x: Tensor, wavelet: WaveletLike = "haar", mode: str = "zero", level: int | None = None
) -> list[Tensor]:
    """Multi-level 1D DWT along the last axis: ``[cA_n, cD_n, ..., cD_1]`` as ``pywt.wavedec``."""
    _check_floating(x)
    wav, mode = check_wavelet(wavelet), check_mode(mode)
    level = check_level(level, x.shape[-1], wav)
    details: list[Tensor] = []
    approx = x
    for _ in range(level):
        approx, detail = _analysis_last_axis(approx, wav, mode)
        details.append(detail)
    return [approx, *reversed(details)]


def waverec(coeffs: Sequence[Tensor], wavelet: WaveletLike = "haar", mode: str = "zero") -> Tensor:
    """Inverse of :func:`wavedec` (as ``pywt.waverec``)."""
    if len(coeffs) < 2:
        raise ValueError("coeffs must hold an approximation and at least one detail array")
    wav, mode = check_wavelet(wavelet), check_mode(mode)
    approx = coeffs[0]
    for detail in coeffs[1:]:
        approx = _trim_to(approx, detail.shape)
        approx = _synthesis_last_axis(approx, detail, wav, mode)
    return approx


def _trim_to(approx: Tensor, shape: torch.Size) -> Tensor:
    """Drop the one extra sample per axis that odd sizes leave (pywt does the same)."""
    if approx.shape == shape:
        return approx
    if approx.dim() != len(shape) or any(a - s not in (0, 1) for a, s in zip(approx.shape, shape)):
        raise ValueError(
            f"coefficient shapes {tuple(approx.shape)} and {tuple(shape)} do not belong to "
            "consecutive levels of one decomposition"
        )
    return approx[tuple(slice(0, s) for s in shape)]


# --------------------------------------------------------------------------
# 2D transforms over the last two axes
# --------------------------------------------------------------------------


def dwt2_filter_bank(
    x: Tensor, wavelet: WaveletLike = "haar", mode: str = "zero"
) -> tuple[Tensor, Bands2D]:
    """General separable 2D DWT for any wavelet and mode: rows (axis -2), then columns."""
    _check_floating(x)
    if x.dim() < 2:
        raise ValueError(f"x must be shaped (..., H, W), got shape {tuple(x.shape)}")
    wav, mode = check_wavelet(wavelet), check_mode(mode)
    lo, hi = _analysis_last_axis(x.transpose(-1, -2), wav, mode)  # along axis -2
    lo, hi = lo.transpose(-1, -2), hi.transpose(-1, -2)
    ll, c_v = _analysis_last_axis(lo, wav, mode)  # low along rows, high along columns
    c_h, c_d = _analysis_last_axis(hi, wav, mode)  # high along rows, low along columns
    return ll, (c_h, c_v, c_d)


def _pad_even_haar(x: Tensor, mode: str) -> Tensor:
    """Extend odd sides by one sample, as PyWavelets does before a Haar step."""
    pad_w, pad_h = x.shape[-1] % 2, x.shape[-2] % 2
    if not (pad_w or pad_h):
        return x
    ext_mode = "constant" if mode == "periodization" else mode
    if pad_w:
        x = _extend(x, 0, 1, ext_mode)
    if pad_h:
        x = _extend(x.transpose(-1, -2), 0, 1, ext_mode).transpose(-1, -2)
    return x


def _haar_blocks(x: Tensor, mode: str) -> Tensor:
    """View an (..., H, W) map as (..., H', 2, W', 2) Haar blocks after even padding."""
    x = _pad_even_haar(x, mode)
    height, width = x.shape[-2:]
    return x.reshape(*x.shape[:-2], height // 2, 2, width // 2, 2)


def dwt2_haar(x: Tensor, mode: str = "zero") -> tuple[Tensor, Bands2D]:
    """Closed-form one-level 2D Haar DWT.

    For a 2x2 block [[a, b], [c, d]]: LL = (a+b+c+d)/2, LH = (a+b-c-d)/2,
    HL = (a-b+c-d)/2, HH = (a-b-c+d)/2 -- PyWavelets' cA, cH, cV, cD.
    """
    _check_floating(x)
    if x.dim() < 2:
        raise ValueError(f"x must be shaped (..., H, W), got shape {tuple(x.shape)}")
    blocks = _haar_blocks(x, check_mode(mode))
    a, b = blocks[..., 0, :, 0], blocks[..., 0, :, 1]
    c, d = blocks[..., 1, :, 0], blocks[..., 1, :, 1]
    top, bottom = a + b, c + d
    left_minus_right_top, left_minus_right_bottom = a - b, c - d
    return (top + bottom) * 0.5, (
        (top - bottom) * 0.5,
        (left_minus_right_top + left_minus_right_bottom) * 0.5,
        (left_minus_right_top - left_minus_right_bottom) * 0.5,
    )


def _idwt2_haar(ll: Tensor, bands: Bands2D) -> Tensor:
    lh, hl, hh = bands
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    c = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    top = torch.stack([a, b], dim=-1).flatten(-2)
    bottom = torch.stack([c, d], dim=-1).flatten(-2)
    return torch.stack([top, bottom], dim=-2).flatten(-3, -2)


def dwt2(x: Tensor, wavelet: WaveletLike = "haar", mode: str = "zero") -> tuple[Tensor, Bands2D]:
    """Single-level 2D DWT over the last two axes: ``(ll, (lh, hl, hh))`` as ``pywt.dwt2``.

    Haar takes the closed form; every other wavelet the general filter bank.
    """
    wav = check_wavelet(wavelet)
    if _is_haar(wav):
        return dwt2_haar(x, mode)
    return dwt2_filter_bank(x, wav, mode)


def _check_bands(ll: Tensor, bands: Sequence[Tensor]) -> Bands2D:
    if len(bands) != 3:
        raise ValueError(f"expected three detail bands (lh, hl, hh), got {len(bands)}")
    lh, hl, hh = bands
    if not ll.shape == lh.shape == hl.shape == hh.shape:
        raise ValueError(
            "ll, lh, hl and hh must share one shape, got "
            f"{[tuple(t.shape) for t in (ll, lh, hl, hh)]}"
        )
    return lh, hl, hh


def idwt2(
    coeffs: tuple[Tensor, Sequence[Tensor]], wavelet: WaveletLike = "haar", mode: str = "zero"
) -> Tensor:
    """Inverse of :func:`dwt2` (as ``pywt.idwt2``)."""
    ll, bands = coeffs
    _check_floating(ll, "ll")
    c_h, c_v, c_d = _check_bands(ll, bands)
    wav, mode = check_wavelet(wavelet), check_mode(mode)
    if _is_haar(wav):
        return _idwt2_haar(ll, (c_h, c_v, c_d))
    lo = _synthesis_last_axis(ll, c_v, wav, mode)  # undo the column step, low rows
    hi = _synthesis_last_axis(c_h, c_d, wav, mode)  # ... and high rows
    out = _synthesis_last_axis(lo.transpose(-1, -2), hi.transpose(-1, -2), wav, mode)
    return out.transpose(-1, -2)


def wavedec2(
    x: Tensor, wavelet: WaveletLike = "haar", mode: str = "zero", level: int | None = None
) -> list[Any]:
    """Multi-level 2D DWT: ``[ll_n, (lh_n, hl_n, hh_n), ..., (lh_1, hl_1, hh_1)]`` as pywt."""
    _check_floating(x)
    if x.dim() < 2:
        raise ValueError(f"x must be shaped (..., H, W), got shape {tuple(x.shape)}")
    wav, mode = check_wavelet(wavelet), check_mode(mode)
    level = check_level(level, min(x.shape[-2:]), wav)
    details: list[Bands2D] = []
    approx = x
    for _ in range(level):
        approx, bands = dwt2(approx, wav, mode)
        details.append(bands)
    return [approx, *reversed(details)]


def waverec2(coeffs: Sequence[Any], wavelet: WaveletLike = "haar", mode: str = "zero") -> Tensor:
    """Inverse of :func:`wavedec2` (as ``pywt.waverec2``)."""
    if len(coeffs) < 2:
        raise ValueError("coeffs must hold an approximation and at least one level of details")
    wav, mode = check_wavelet(wavelet), check_mode(mode)
    approx = coeffs[0]
    for bands in coeffs[1:]:
        approx = _trim_to(approx, bands[0].shape)
        approx = idwt2((approx, bands), wav, mode)
    return approx
