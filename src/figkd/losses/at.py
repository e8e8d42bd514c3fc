"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based, p = 2.

A stage's attention map is Q = vec(mean_c |F_c|^p), L2-normalised per sample.
L = ce_weight * CE + feat_weight * sum over paired stages of mean((Q_s - Q_t)^2),
the mean over batch and positions (the authors' code; the paper writes the
norm of the difference).  Stages are paired from the deepest back, the larger
map average-pooled to the smaller.  Defaults: mdistiller's CIFAR-100 ones
(p 2, CE 1, feature weight 1000).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import match_spatial, paired_stages
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """(B, C, H, W) -> (B, H*W): channel mean of |F|^p, L2-normalised per sample."""
    q = as_float(feature).abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, dim=1)


def at_loss(student_stages: list[Tensor], teacher_stages: list[Tensor], p: float = 2.0) -> Tensor:
    """Sum over paired stages of the mean squared difference of attention maps."""
    total: Tensor | float = 0.0
    for f_s, f_t in paired_stages(student_stages, teacher_stages):
        f_s, f_t = match_spatial(f_s, f_t.detach())
        total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
    assert isinstance(total, Tensor)
    return total


@register_loss("at", aliases=("attention_transfer",))
class ATLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "at": feat_weight * sum_stages AT}``."""

    term_names = ("ce", "at")
    needs_features = True

    def __init__(self, p: float = 2.0, ce_weight: float = 1.0, feat_weight: float = 1000.0):
        super().__init__()
        self.p = check_weight("p", p)
        if self.p == 0:
            raise ValueError("p must be > 0")
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
        at = at_loss(student_features["stages"], teacher_features["stages"], self.p)
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "at": self.feat_weight * at,
        }

    def extra_repr(self) -> str:
        return f"p={self.p}, ce_weight={self.ce_weight}, feat_weight={self.feat_weight}"
