"""The detail loss through one band matrix: a matmul for any noise-free variant.

Without noise, every FiGKD variant (wavelet, mode, level, band choice, 1D or
2D, either reduction) is a weighted sum of squared *linear* maps of the logit
difference D = s - t.  Stacking the maps, scaled by the square roots of their
reduction weights, into one C x K matrix M gives

    detail = (1 / B) * || D M ||_F^2,

a sum of squares (never negative, exactly zero when D has no selected-band
content up to rounding of D M itself).  M is built once from the band path;
a step then costs one (B x C) @ (C x K) matmul forward and one backward, which
beats the band path's dozens of small ops whenever C is small.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class LinearBandLoss(torch.autograd.Function):
    """``scale * ||(student - teacher) @ band_matrix||^2``; the teacher gets no gradient."""

    @staticmethod
    def forward(
        ctx: Any, student: Tensor, teacher: Tensor, band_matrix: Tensor, scale: float
    ) -> Tensor:
        with torch.autocast(device_type=student.device.type, enabled=False):
            coefficients = (student - teacher) @ band_matrix
            flat = coefficients.reshape(-1)
            loss = torch.vdot(flat, flat) * scale
        ctx.save_for_backward(coefficients, band_matrix)
        ctx.scale = scale
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        coefficients, band_matrix = ctx.saved_tensors
        grad = (coefficients * (2.0 * ctx.scale * grad_output)) @ band_matrix.T
        return grad, None, None, None


def linear_band_loss(student: Tensor, teacher: Tensor, band_matrix: Tensor, scale: float) -> Tensor:
    """Functional entry point of :class:`LinearBandLoss` (the teacher is detached)."""
    return LinearBandLoss.apply(student, teacher.detach(), band_matrix, scale)
