"""Similarity-preserving distillation (Tung & Mori, ICCV 2019).

On one stage's output F (B, C, H, W): G = Q Q^T with Q = F reshaped to
(B, C*H*W), each row of G L2-normalised.  L = ce_weight * CE +
feat_weight * ||G_s - G_t||_F^2 / B^2.  Default stage: the last; defaults
CE 1, feature weight 3000 (mdistiller / the SP paper's CIFAR setting).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.precision import as_float, full_precision
from figkd.losses.validation import check_weight


def similarity_matrix(feature: Tensor) -> Tensor:
    """(B, ...) -> (B, B) row-normalised Gram matrix of the flattened features."""
    q = as_float(feature).flatten(1)
    with full_precision(q):
        return F.normalize(q @ q.t(), p=2, dim=1)


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """||G_s - G_t||_F^2 / B^2."""
    diff = similarity_matrix(student) - similarity_matrix(teacher.detach())
    return diff.pow(2).sum() / (len(student) ** 2)


@register_loss("sp", aliases=("similarity_preserving",))
class SPLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "sp": feat_weight * SP}`` on ``stages[stage]``."""

    term_names = ("ce", "sp")
    needs_features = True

    def __init__(self, stage: int = -1, ce_weight: float = 1.0, feat_weight: float = 3000.0):
        super().__init__()
        self.stage = int(stage)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)

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
        sp = sp_loss(student_features["stages"][self.stage], teacher_features["stages"][self.stage])
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "sp": self.feat_weight * sp,
        }

    def extra_repr(self) -> str:
        return f"stage={self.stage}, ce_weight={self.ce_weight}, feat_weight={self.feat_weight}"
