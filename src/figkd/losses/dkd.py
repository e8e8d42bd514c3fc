"""Decoupled knowledge distillation (Zhao et al., CVPR 2022).

KD's KL splits exactly into a target-class part and a non-target part:

    KL(p_t || p_s) = KL(b_t || b_s) + (1 - p_t[y]) * KL(p^_t || p^_s),

with b = (p[y], 1 - p[y]) the binary target/other split and p^ the softmax over
the non-target classes.  DKD drops the (1 - p_t[y]) coupling and weights the
parts freely:

    L = ce_weight * CE + w(e) * T^2 * (alpha * TCKD + beta * NCKD),  w(e) = min(e / warmup, 1),

each KL batch-mean, e the epoch counted from 1.  Defaults are mdistiller's
CIFAR-100 ones (alpha 1, beta 8, T 4, warm-up 20; per-pair beta in configs).
Unlike the official code we take logs through log-softmax / logsumexp and drop
the target column exactly (instead of subtracting 1000), so gradients stay
finite for extreme logits; values agree otherwise.  ``standardize=True`` z-scores
both sides first (Sun et al., CVPR 2024) with that paper's defaults: T 2,
alpha 9, beta 72 (its KD weight 9 times alpha 1 and beta 8).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.kd import check_temperature
from figkd.losses.precision import as_float
from figkd.losses.standardize import standardize_logits
from figkd.losses.validation import check_logits, check_weight


def non_target_columns(logits: Tensor, targets: Tensor) -> Tensor:
    """(B, C) -> (B, C-1): every column but the target's, in class order, without a sync."""
    batch, num_classes = logits.shape
    columns = torch.arange(num_classes - 1, device=logits.device).expand(batch, -1)
    index = columns + (columns >= targets[:, None]).long()
    return logits.gather(1, index)


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD) = (KL(b_t || b_s), KL(p^_t || p^_s)) at ``temperature``, no T^2."""
    if student_logits.shape[1] < 2:
        raise ValueError("DKD needs at least 2 classes (a target and a non-target)")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = student_logits.to(dtype) / temperature
    t = teacher_logits.detach().to(dtype) / temperature
    log_p_s, log_p_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    index = targets[:, None]
    other_s = non_target_columns(log_p_s, targets)
    other_t = non_target_columns(log_p_t, targets)
    log_b_s = torch.cat([log_p_s.gather(1, index), torch.logsumexp(other_s, dim=1, keepdim=True)], 1)
    log_b_t = torch.cat([log_p_t.gather(1, index), torch.logsumexp(other_t, dim=1, keepdim=True)], 1)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)
    log_q_s = F.log_softmax(non_target_columns(s, targets), dim=1)
    log_q_t = F.log_softmax(non_target_columns(t, targets), dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return tckd, nckd


def warmup_factor(epoch: int | None, warmup_epochs: int, method: str) -> float:
    """min(epoch / warmup_epochs, 1), epochs counted from 1."""
    if warmup_epochs <= 0:
        return 1.0
    if epoch is None:
        raise ValueError(
            f"{method} ramps its loss over the first {warmup_epochs} epochs and needs epoch= "
            "(counted from 1) in the loss call; pass it, or set warmup_epochs=0"
        )
    return min(epoch / warmup_epochs, 1.0)


@register_loss("dkd", aliases=("DKD",))
class DKDLoss(DistillationLoss):
    """Terms ``{"ce", "tckd", "nckd"}``, the latter two already warm-up weighted."""

    term_names = ("ce", "tckd", "nckd")

    def __init__(
        self,
        alpha: float | None = None,
        beta: float | None = None,
        temperature: float | None = None,
        ce_weight: float = 1.0,
        warmup_epochs: int = 20,
        standardize: bool = False,
        validate: bool = True,
    ):
        super().__init__()
        self.standardize = bool(standardize)
        default_alpha, default_beta, default_t = (9.0, 72.0, 2.0) if self.standardize else (1.0, 8.0, 4.0)
        self.alpha = check_weight("alpha", default_alpha if alpha is None else alpha)
        self.beta = check_weight("beta", default_beta if beta is None else beta)
        self.temperature = check_temperature(default_t if temperature is None else temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.validate = validate

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        epoch: int | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        if self.validate:
            check_logits(student_logits, teacher_logits, targets)
        ramp = warmup_factor(epoch, self.warmup_epochs, "DKD")
        soft_student, soft_teacher = student_logits, teacher_logits
        if self.standardize:
            dtype = torch.promote_types(student_logits.dtype, torch.float32)
            soft_student = standardize_logits(student_logits.to(dtype))
            soft_teacher = standardize_logits(teacher_logits.detach().to(dtype))
        tckd, nckd = dkd_parts(soft_student, soft_teacher, targets, self.temperature)
        scale = ramp * self.temperature**2
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "tckd": scale * self.alpha * tckd.mean(),
            "nckd": scale * self.beta * nckd.mean(),
        }

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"ce_weight={self.ce_weight}, warmup_epochs={self.warmup_epochs}, standardize={self.standardize}"
        )
