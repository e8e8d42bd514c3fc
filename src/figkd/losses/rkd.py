"""Relational knowledge distillation (Park et al., CVPR 2019): distance + angle on embeddings.

Distance: psi_D(i, j) = ||e_i - e_j|| / mu, mu the mean distance over the
batch's distinct pairs.  Angle: psi_A(i, j, k) = <(e_i - e_j)/||.||, (e_k - e_j)/||.||>
over all triplets.  Each term is the Huber (smooth-L1, delta 1) loss between the
student's and the teacher's values, averaged over entries (the authors' code).
L = ce_weight * CE + distance_weight * L_D + angle_weight * L_A.  Defaults:
mdistiller's CIFAR-100 ones (CE 1, distance 25, angle 50, eps 1e-12).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.precision import as_float, full_precision
from figkd.losses.validation import check_weight


def pairwise_distance(e: Tensor, eps: float = 1e-12, squared: bool = False) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances with a zero diagonal."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _normalised_distance(e: Tensor, eps: float, squared: bool) -> Tensor:
    d = pairwise_distance(e, eps, squared)
    mean = d.sum() / (d > 0).sum().clamp(min=1)  # mean of the positive entries, no host sync
    return d / mean.clamp(min=eps)  # a batch of 1 has no pair: all zeros, not 0/0


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_terms(
    student: Tensor, teacher: Tensor, *, eps: float = 1e-12, squared: bool = False
) -> tuple[Tensor, Tensor]:
    """(distance loss, angle loss), both unweighted."""
    s = as_float(student).flatten(1)
    t = as_float(teacher.detach()).flatten(1)
    with full_precision(s):  # the distance Gram trick cancels: bf16 put it 9x off
        distance = F.smooth_l1_loss(
            _normalised_distance(s, eps, squared), _normalised_distance(t, eps, squared)
        )
        angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return distance, angle


@register_loss("rkd")
class RKDLoss(DistillationLoss):
    """Terms ``{"ce", "distance", "angle"}``, each already weighted."""

    term_names = ("ce", "distance", "angle")
    needs_features = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        eps: float = 1e-12,
        squared: bool = False,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.distance_weight = check_weight("distance_weight", distance_weight)
        self.angle_weight = check_weight("angle_weight", angle_weight)
        self.eps = check_weight("eps", eps)
        self.squared = bool(squared)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        student_features: Any,
        teacher_features: Any,
        **context: Any,
    ) -> dict[str, Tensor]:
        distance, angle = rkd_terms(
            student_features["embedding"],
            teacher_features["embedding"],
            eps=self.eps,
            squared=self.squared,
        )
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "distance": self.distance_weight * distance,
            "angle": self.angle_weight * angle,
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, distance_weight={self.distance_weight}, "
            f"angle_weight={self.angle_weight}"
        )
