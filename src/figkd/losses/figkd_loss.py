"""FiGKD: distil only the high-frequency (detail) wavelet bands of the logits.

Kim, "Fine-Grained Knowledge Distillation via High-Frequency Detail Transfer",
Expert Systems with Applications, 2026 (arXiv 2505.11897), Eqs. 4-7:

    L = alpha * CE(z_s, y) + beta * L_detail,
    L_detail = sum over detail bands k of  mean_{batch, coefficients} (D_k^s - D_k^t)^2,

where D_k are the LH / HL / HH bands of a one-level 2D Haar DWT of the logit
vector reshaped to a near-square H x W map.  The paper's symbols were lost in
our copy; every choice it leaves open is fixed here and documented in
docs/methods.md (grid rule, zero padding, mean reduction, alpha = 1, beta = 2).

The transform is linear, so the band difference equals the band of the logit
difference and we transform ``student - teacher`` once.  Three computations of
the same quantity, chosen per call for speed (docs/methods.md, "Fast paths"):

* the *band path*: explicit bands via :mod:`figkd.wavelets` -- any variant, and
  the only one that can add noise to the teacher's bands;
* the *band matrix* (:mod:`figkd.losses.linear_bands`): one matmul with a
  precomputed C x K matrix, for noise-free variants when C is small;
* the *fused Haar* node (:mod:`figkd.losses.haar_fused`): closed-form Haar
  energies for large C (default wavelet and mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd import wavelets
from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.haar_fused import haar_detail_loss
from figkd.losses.linear_bands import linear_band_loss
from figkd.losses.precision import as_float
from figkd.losses.validation import check_choice, check_logits, check_weight

BANDS = ("high", "low", "both")
TRANSFORMS = ("2d", "1d")
REDUCTIONS = ("mean", "sum")
DETAIL_LEVELS = ("all", "deepest")

class Band(NamedTuple):
    """One wavelet band of a logit difference and its weight in the loss."""

    coefficients: Tensor  # (B, ...) band of student - teacher
    weight: float  # 1 / coefficients per band under "mean", 1 under "sum"
    high: bool  # a detail band (True) or the final approximation band


#: Largest class count for which the band matrix is used, per device type.
#: A (B x C) @ (C x K) matmul is cheaper than many small ops up to a few hundred
#: classes on a CPU and far beyond on a GPU (benchmarks/results/loss_overhead.md).
BAND_MATRIX_MAX_CLASSES = {"cpu": 256, "cuda": 2048}


def _check_grid(grid: Sequence[int] | None) -> tuple[int, int] | None:
    """``grid`` as an (H, W) tuple (a config gives a list); its cell count is checked per call."""
    if grid is None:
        return None
    pair = tuple(grid)
    if len(pair) != 2 or any(not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"grid must be a pair of positive integers (H, W), got {grid!r}")
    return pair[0], pair[1]


@register_loss("figkd", aliases=("FiGKD",))
class FiGKDLoss(DistillationLoss):
    """Cross-entropy plus the wavelet detail loss; terms ``{"ce", "detail"}``.

    Args:
        alpha: weight of the cross-entropy term (paper's CE weight; default 1).
        beta: weight of the detail term (default 2: Fig. 4 sweeps the detail weight with the CE
            weight at 1 and the CE weight with the detail weight at 2; the optimum's
            numbers are lost in our copy of the paper).
        wavelet: any discrete PyWavelets wavelet; Haar by default (Table 16).
        level: decomposition depth (Table 11).
        detail_levels: which levels' detail bands are the high bands when ``level`` > 1:
            ``"all"`` (levels 1..J; default) or ``"deepest"`` (level J only, the
            "reduced spatial support" reading of §5.1.3).  No effect at level 1.
        bands: which bands are matched: ``"high"`` (LH, HL, HH; default),
            ``"low"`` (the final LL only) or ``"both"`` (Table 10).
        transform: ``"2d"`` on the H x W logit map (default) or ``"1d"`` on the
            flat logit vector (Table 13).
        noise_std: std of Gaussian noise added to the teacher's high bands, in
            training mode only (Table 12).
        reduction: ``"mean"`` averages each band over batch and coefficients,
            then sums the bands; ``"sum"`` sums squared differences over each
            sample's bands and averages over the batch (the literal Eq. 6).
        mode: wavelet boundary mode (PyWavelets' names); only odd map sides
            and non-Haar filters are affected.
        grid: explicit (H, W) for the logit map; default from
            :func:`figkd.wavelets.logit_grid_shape`.
        validate: check shapes, labels and finiteness on every call.

    Options are fixed at construction: derived matrices are cached per class
    count, dtype and device.
    """

    term_names = ("ce", "detail")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 2.0,
        wavelet: str = "haar",
        level: int = 1,
        bands: str = "high",
        transform: str = "2d",
        noise_std: float = 0.0,
        reduction: str = "mean",
        mode: str = "zero",
        grid: Sequence[int] | None = None,
        validate: bool = True,
        detail_levels: str = "all",
    ):
        super().__init__()
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.wavelet = wavelets.check_wavelet(wavelet).name
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise ValueError(f"level must be a positive integer (1, 2, 3, ...), got {level!r}")
        self.level = level
        self.bands = check_choice("bands", bands, BANDS)
        self.transform = check_choice("transform", transform, TRANSFORMS)
        self.noise_std = check_weight("noise_std", noise_std)
        if self.noise_std > 0 and self.bands == "low":
            raise ValueError(
                "noise_std perturbs the teacher's high bands, but bands='low' matches none; "
                "use bands='high' or 'both', or noise_std=0"
            )
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.detail_levels = check_choice("detail_levels", detail_levels, DETAIL_LEVELS)
        self.mode = wavelets.check_mode(mode)
        self.grid = _check_grid(grid)
        self.validate = validate
        self._band_matrices: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
        self._level_sizes: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ API

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        **context: Any,
    ) -> dict[str, Tensor]:
        if self.validate:
            check_logits(student_logits, teacher_logits, targets)
        return {
            "ce": self.alpha * F.cross_entropy(as_float(student_logits), targets),
            "detail": self._detail(student_logits, teacher_logits, self.beta),
        }

    def detail_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """The unweighted detail loss between two (B, C) logit matrices."""
        return self._detail(student_logits, teacher_logits, 1.0)

    def band_differences(self, difference: Tensor) -> list[Band]:
        """The selected bands of ``difference`` (B, C), each with its reduction weight.

        The weight turns a band's per-sample squared norm into its share of the
        loss: 1 / (coefficients per band) under "mean", 1 under "sum".
        """
        if self.transform == "2d":
            signal = wavelets.logits_to_grid(difference, self.grid)
            coeffs = wavelets.wavedec2(signal, self.wavelet, self.mode, self.level)
            levels = coeffs[1:2] if self.detail_levels == "deepest" else coeffs[1:]
            high = [band for level_bands in levels for band in level_bands]
        else:
            coeffs = wavelets.wavedec(difference, self.wavelet, self.mode, self.level)
            high = list(coeffs[1:2] if self.detail_levels == "deepest" else coeffs[1:])
        selected = []
        if self.bands in ("high", "both"):
            selected += [Band(band, self._band_weight(band[0].numel()), True) for band in high]
        if self.bands in ("low", "both"):
            selected.append(Band(coeffs[0], self._band_weight(coeffs[0][0].numel()), False))
        return selected

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, wavelet={self.wavelet!r}, level={self.level}, "
            f"bands={self.bands!r}, transform={self.transform!r}, noise_std={self.noise_std}, "
            f"reduction={self.reduction!r}, mode={self.mode!r}, detail_levels={self.detail_levels!r}"
        )

    # ------------------------------------------------------------ internals

    def _band_weight(self, coefficients: int) -> float:
        return 1.0 / coefficients if self.reduction == "mean" else 1.0

    def computation(self, num_classes: int, device_type: str) -> str:
        """Which node computes the detail loss at this size and device: "band path" (noise
        on the teacher's bands needs the bands themselves), "band matrix" or "fused Haar".
        ``figkd bench`` names it beside each timing."""
        if self.training and self.noise_std > 0:
            return "band path"
        if num_classes <= BAND_MATRIX_MAX_CLASSES.get(device_type, 0):
            return "band matrix"
        if self.transform == "2d" and self.wavelet in ("haar", "db1") and self.mode == "zero":
            return "fused Haar"
        return "band path"

    def _detail(self, student_logits: Tensor, teacher_logits: Tensor, scale: float) -> Tensor:
        # Low-precision (AMP) logits are upcast; float64 stays float64.
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        student = student_logits.to(dtype)
        teacher = teacher_logits.detach().to(dtype)
        batch, num_classes = student.shape
        node = self.computation(num_classes, student.device.type)
        if node == "band matrix":
            matrix = self.band_matrix(num_classes, dtype, student.device)
            return linear_band_loss(student, teacher, matrix, scale / batch)
        if node == "fused Haar":
            return self._fused_haar(student, teacher, scale)
        return self._band_path(student - teacher) * scale

    def _band_path(self, difference: Tensor) -> Tensor:
        noisy = self.training and self.noise_std > 0
        loss = difference.new_zeros(())
        for band, weight, high in self.band_differences(difference):
            if noisy and high:
                # (student band) - (teacher band + noise) = difference band - noise
                band = band - self.noise_std * torch.randn_like(band)
            loss = loss + band.square().flatten(1).sum(1).mean() * weight
        return loss

    def band_matrix(
        self, num_classes: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The (C, K) matrix M with detail = ||(s - t) M||^2 / B (noise-free variants).

        Column block k holds band k of each unit logit vector, times sqrt(weight_k);
        built once per (C, dtype, device) in float64 from the band path.
        """
        key = (num_classes, dtype, torch.device(device))
        matrix = self._band_matrices.get(key)
        if matrix is None:
            basis = torch.eye(num_classes, dtype=torch.float64)  # row i: unit logit i
            blocks = [band.reshape(num_classes, -1) * weight**0.5
                      for band, weight, _ in self.band_differences(basis)]
            matrix = torch.cat(blocks, dim=1).to(dtype=dtype, device=device)
            self._band_matrices[key] = matrix
        return matrix

    def _fused_haar(self, student: Tensor, teacher: Tensor, scale: float) -> Tensor:
        num_classes = student.shape[1]
        grid = wavelets.resolve_grid(num_classes, self.grid)
        sizes = self._level_sizes.get(num_classes)
        if sizes is None:
            wavelets.check_level(self.level, min(grid), self.wavelet)
            height, width, sizes = *grid, []
            for _ in range(self.level):  # Haar in zero mode halves each side, rounding up
                height, width = (height + 1) // 2, (width + 1) // 2
                sizes.append(height * width)
            self._level_sizes[num_classes] = sizes
        per_sample = scale / student.shape[0]
        high = [per_sample * self._band_weight(n) for n in sizes] if self.bands != "low" else [0.0] * len(sizes)
        if self.detail_levels == "deepest":  # levels 1 .. J-1 weigh nothing
            high = [0.0] * (len(sizes) - 1) + high[-1:]
        low = per_sample * self._band_weight(sizes[-1]) if self.bands != "high" else 0.0
        return haar_detail_loss(student, teacher, grid, high, low)
