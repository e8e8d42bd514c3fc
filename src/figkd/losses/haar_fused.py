"""Fused Haar detail loss: one autograd node with a closed-form backward.

The default FiGKD loss is a handful of tiny tensor ops; on a CPU (and as kernel
launches on a GPU) their autograd bookkeeping costs more than the arithmetic,
and reductions over interleaved 2x2 blocks are slow.  We therefore compute a
level's detail energy in two separable steps on contiguous slices.  For a block
[[a, b], [c, d]] with row sums p = a + c, q = b + d:

    detail energy = a^2 + b^2 + c^2 + d^2 - LL^2
                  = ((a - c)^2 + (b - d)^2) / 2  +  (p - q)^2 / 4,

a sum of squared *differences* (no cancellation), and LL = (p + q) / 2 feeds the
next level.  The backward pass needs only the saved differences.  Matches
``pywt.wavedec2(..., "haar", mode="zero")`` band energies; see tests/test_losses.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _sq_norm(x: Tensor) -> Tensor:
    flat = x.reshape(-1)
    return torch.vdot(flat, flat)


class HaarDetailLoss(torch.autograd.Function):
    """sum_j w_j * ||detail bands of level j||^2 + w_low * ||LL_J||^2 of (student - teacher).

    ``student``/``teacher`` are (B, C) logits, zero-padded to ``grid`` (H, W)
    row-major; odd sides get a zero row/column, as PyWavelets' ``mode="zero"``.
    The teacher receives no gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        student: Tensor,
        teacher: Tensor,
        grid: tuple[int, int],
        level_weights: Sequence[float],
        low_weight: float,
    ) -> Tensor:
        batch, num_classes = student.shape
        height, width = grid
        diff = student - teacher
        if height * width > num_classes:
            diff = F.pad(diff, (0, height * width - num_classes))
        x = diff.view(batch, height, width)
        saved: list[Tensor] = []
        sides: list[tuple[int, int]] = []
        loss = diff.new_zeros(())
        for weight in level_weights:
            h, w = x.shape[-2:]
            sides.append((h, w))
            if h % 2 or w % 2:
                x = F.pad(x, (0, w % 2, 0, h % 2))
            rows = x.view(batch, x.shape[1] // 2, 2, x.shape[2])
            row_sum = rows[:, :, 0] + rows[:, :, 1]
            row_diff = rows[:, :, 0] - rows[:, :, 1]
            cols = row_sum.view(batch, row_sum.shape[1], row_sum.shape[2] // 2, 2)
            col_diff = cols[..., 0] - cols[..., 1]
            if weight:
                loss = loss + (_sq_norm(row_diff) * 0.5 + _sq_norm(col_diff) * 0.25) * weight
            saved += [row_diff, col_diff]
            x = (cols[..., 0] + cols[..., 1]) * 0.5
        if low_weight:
            loss = loss + _sq_norm(x) * low_weight
        ctx.save_for_backward(*saved, x)
        ctx.meta = (num_classes, tuple(sides), tuple(level_weights), low_weight)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        *saved, approx = ctx.saved_tensors
        num_classes, sides, level_weights, low_weight = ctx.meta
        batch = approx.shape[0]
        grad_approx = approx * (2.0 * low_weight * grad_output) if low_weight else None
        for level in reversed(range(len(sides))):
            row_diff, col_diff = saved[2 * level], saved[2 * level + 1]
            weight, (h, w) = level_weights[level], sides[level]
            grad_col_diff = col_diff * (0.5 * weight * grad_output)
            if grad_approx is None:
                grad_left, grad_right = grad_col_diff, -grad_col_diff
            else:  # LL = (left + right) / 2
                half = 0.5 * grad_approx
                grad_left, grad_right = half + grad_col_diff, half - grad_col_diff
            grad_row_sum = torch.stack([grad_left, grad_right], dim=-1).flatten(-2)
            grad_row_diff = row_diff * (weight * grad_output)
            grad_x = torch.stack(
                [grad_row_sum + grad_row_diff, grad_row_sum - grad_row_diff], dim=2
            ).flatten(1, 2)
            grad_approx = grad_x[:, :h, :w]
        if grad_approx is None:  # no levels and no low weight: the loss is a constant 0
            return None, None, None, None, None
        grad_student = grad_approx.reshape(batch, -1)[:, :num_classes]
        return grad_student, None, None, None, None


def haar_detail_loss(
    student: Tensor,
    teacher: Tensor,
    grid: tuple[int, int],
    level_weights: Sequence[float],
    low_weight: float = 0.0,
) -> Tensor:
    """Functional entry point of :class:`HaarDetailLoss` (the teacher is detached)."""
    return HaarDetailLoss.apply(student, teacher.detach(), grid, tuple(level_weights), low_weight)
