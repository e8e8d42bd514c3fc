"""Hinton et al. (2015) knowledge distillation, optionally with logit standardization.

L = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),
the KL summed over classes and averaged over the batch ("batchmean").  The T^2
factor keeps the soft-target gradients on the scale of the CE gradients.

Defaults are mdistiller's CIFAR-100 ones (T = 4, CE 0.1, KD 0.9).  With
``standardize=True`` both sides' logits are z-scored before softening (Sun et
al., CVPR 2024) and the defaults become that paper's: base temperature 2,
KD weight 9, CE 0.1.  CE always uses the raw student logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.precision import as_float
from figkd.losses.standardize import standardize_logits
from figkd.losses.validation import check_logits, check_weight


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * batch-mean KL(p_t^T || p_s^T), computed in at least float32 for stability."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def check_temperature(value: float) -> float:
    value = check_weight("temperature", value)
    if value == 0.0:
        raise ValueError("temperature must be > 0, got 0")
    return value


@register_loss("kd", aliases=("hinton",))
class KDLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "kd": kd_weight * T^2 * KL}``.

    ``temperature`` and ``kd_weight`` default to 4 and 0.9, or to 2 and 9 with
    ``standardize=True``.
    """

    term_names = ("ce", "kd")

    def __init__(
        self,
        temperature: float | None = None,
        ce_weight: float = 0.1,
        kd_weight: float | None = None,
        standardize: bool = False,
        validate: bool = True,
    ):
        super().__init__()
        self.standardize = bool(standardize)
        default_t, default_w = (2.0, 9.0) if self.standardize else (4.0, 0.9)
        self.temperature = check_temperature(default_t if temperature is None else temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", default_w if kd_weight is None else kd_weight)
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
        soft_student, soft_teacher = student_logits, teacher_logits
        if self.standardize:
            dtype = torch.promote_types(student_logits.dtype, torch.float32)
            soft_student = standardize_logits(student_logits.to(dtype))
            soft_teacher = standardize_logits(teacher_logits.detach().to(dtype))
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "kd": self.kd_weight * kd_divergence(soft_student, soft_teacher, self.temperature),
        }

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, ce_weight={self.ce_weight}, "
            f"kd_weight={self.kd_weight}, standardize={self.standardize}"
        )
