"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018 / TNNLS 2020).

On the pooled embeddings, each side's cosine kernel K_ij = (cos(e_i, e_j) + 1) / 2
is turned into conditional probabilities p_{j|i} = K_ij / sum_{k != i} K_ik
(the paper excludes the self-pair), and the student matches the teacher with
KL(P_t || P_s) averaged over the B(B-1) pairs.  L = ce_weight * CE +
feat_weight * KL.  ``exclude_self=False`` gives the public code's variant
(self-pairs kept, mean over B^2 entries).  Defaults: CE 1, feature weight
30000 (mdistiller / RepDistiller), eps 1e-7.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.precision import as_float, full_precision
from figkd.losses.validation import check_weight


def _conditional(embedding: Tensor, exclude_self: bool, eps: float) -> Tensor:
    e = as_float(embedding).flatten(1)
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    with full_precision(e):
        kernel = (e @ e.t() + 1.0) / 2.0
    if exclude_self:
        kernel = kernel * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(
    student: Tensor, teacher: Tensor, *, exclude_self: bool = True, eps: float = 1e-7
) -> Tensor:
    """Mean over pairs of p_t log((p_t + eps) / (p_s + eps))."""
    if len(student) < 2:
        raise ValueError("PKT needs a batch of at least 2 samples")
    p_s = _conditional(student, exclude_self, eps)
    p_t = _conditional(teacher.detach(), exclude_self, eps)
    kl = p_t * torch.log((p_t + eps) / (p_s + eps))
    n = len(student)
    return kl.sum() / (n * (n - 1) if exclude_self else n * n)


@register_loss("pkt")
class PKTLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "pkt": feat_weight * KL(P_t || P_s)}``."""

    term_names = ("ce", "pkt")
    needs_features = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        feat_weight: float = 30000.0,
        exclude_self: bool = True,
        eps: float = 1e-7,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)
        self.exclude_self = bool(exclude_self)
        self.eps = check_weight("eps", eps)

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
        pkt = pkt_loss(
            student_features["embedding"],
            teacher_features["embedding"],
            exclude_self=self.exclude_self,
            eps=self.eps,
        )
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "pkt": self.feat_weight * pkt,
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, feat_weight={self.feat_weight}, "
            f"exclude_self={self.exclude_self}"
        )
