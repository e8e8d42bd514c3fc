"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022).

Instead of matching probabilities exactly, DIST matches their *relations*:
with Y = softmax(z / tau) (B x C) and Pearson correlation rho,

    inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])     (across classes, per sample)
    intra = 1 - mean_c rho(Y_s[:, c], Y_t[:, c])     (across the batch, per class)
    L = ce_weight * CE + tau^2 * (inter_weight * inter + intra_weight * intra).

Defaults are the official CIFAR-100 setting (tau 4; module weights 1 times an
outer loss weight 2, i.e. inter and intra weight 2 each; CE 1).  rho uses the
official epsilon, 1e-8 added to the product of norms.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.kd import check_temperature
from figkd.losses.precision import as_float
from figkd.losses.validation import check_logits, check_weight


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching rows of two (N, D) matrices."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """(inter, intra) = 1 - mean Pearson correlation row-wise and column-wise."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    y_s = F.softmax(student_logits.to(dtype) / temperature, dim=1)
    y_t = F.softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.T, y_t.T).mean()
    return inter, intra


@register_loss("dist", aliases=("DIST",))
class DISTLoss(DistillationLoss):
    """Terms ``{"ce", "inter", "intra"}`` (the relation terms include tau^2 and their weights)."""

    term_names = ("ce", "inter", "intra")

    def __init__(
        self,
        temperature: float = 4.0,
        inter_weight: float = 2.0,
        intra_weight: float = 2.0,
        ce_weight: float = 1.0,
        validate: bool = True,
    ):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.inter_weight = check_weight("inter_weight", inter_weight)
        self.intra_weight = check_weight("intra_weight", intra_weight)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.validate = validate

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        **context: Any,
    ) -> dict[str, Tensor]:
        if self.validate:
            check_logits(student_logits, teacher_logits, targets)
        inter, intra = dist_relations(student_logits, teacher_logits, self.temperature)
        scale = self.temperature**2
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "inter": scale * self.inter_weight * inter,
            "intra": scale * self.intra_weight * intra,
        }

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, inter_weight={self.inter_weight}, "
            f"intra_weight={self.intra_weight}, ce_weight={self.ce_weight}"
        )
