"""Refined logit distillation, RLD.

Sun et al., "Knowledge Distillation with Refined Logits", ICCV 2025.

A teacher that is wrong on a sample pulls the student away from the label, in conflict with CE.
RLD keeps the teacher's knowledge but refines it with the label. There are two parts:

* **Sample confidence distillation (SCD).** b_s = (p_s[y], 1 - p_s[y]) is the student's binary
  split around the *label* y. b_t = (p_t[m], 1 - p_t[m]) is the teacher's split around its *own
  top class* m = argmax z_t, so it carries the teacher's confidence without naming a wrong class.
  SCD = KL(b_t || b_s) at temperature T_c.
* **Masked correlation distillation (MCD).** Every class that the teacher ranks at or above the
  label, z_t[c] >= z_t[y] (the label included), is dropped. Softmax runs over the remaining
  classes for both sides at temperature T, and MCD = KL(q_t || q_s) over them. A teacher that
  ranks the label first keeps all non-target classes, so MCD is then DKD's NCKD.

    L = ce_weight * CE + w(e) * (alpha * T_c^2 * SCD + beta * T^2 * MCD),  w(e) = min(e / warmup, 1)

Both parts are batch means and e counts epochs from 1. Defaults come from the official code
(zju-SWJ/RLD, ``mdistiller/engine/cfg.py``): CE 1, alpha 1, beta 8, T 4, T_c 1, warm-up 20. The
official CIFAR-100 configs override none of them for any pair. When the teacher's top class is
the label and T_c = T, RLD equals DKD with the same alpha and beta (tested).
Unlike the official code, the masked classes are removed exactly (it fills them with -1e9) and
logs go through log-softmax / logsumexp, so extreme logits keep finite gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.dkd import non_target_columns, warmup_factor
from figkd.losses.kd import check_temperature
from figkd.losses.precision import as_float
from figkd.losses.validation import check_logits, check_weight


def _binary_split(log_p: Tensor, index: Tensor) -> Tensor:
    """(B, C) log-probabilities -> (B, 2) log of (p[index], 1 - p[index])."""
    inside = log_p.gather(1, index[:, None])
    outside = torch.logsumexp(non_target_columns(log_p, index), dim=1, keepdim=True)
    return torch.cat([inside, outside], dim=1)


def _masked_log_softmax(scaled: Tensor, drop: Tensor) -> Tensor:
    """log-softmax over the columns where ``drop`` is False; dropped columns get a huge negative."""
    # A finite fill (not -inf) keeps 0 * (fill - fill) at exactly 0 in the KL and its gradient,
    # and a row with every column dropped comes out uniform on both sides (KL 0).
    fill = torch.finfo(scaled.dtype).min / 4
    return F.log_softmax(scaled.masked_fill(drop, fill), dim=1)


def rld_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    confidence_temperature: float,
) -> tuple[Tensor, Tensor]:
    """Per-sample (SCD, MCD) without the T^2 factors; see the module docstring."""
    if student_logits.shape[1] < 2:
        raise ValueError("RLD needs at least 2 classes")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = student_logits.to(dtype)
    t = teacher_logits.detach().to(dtype)

    top = t.argmax(dim=1)
    log_b_s = _binary_split(F.log_softmax(s / confidence_temperature, dim=1), targets)
    log_b_t = _binary_split(F.log_softmax(t / confidence_temperature, dim=1), top)
    scd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)

    drop = t >= t.gather(1, targets[:, None])
    log_q_s = _masked_log_softmax(s / temperature, drop)
    log_q_t = _masked_log_softmax(t / temperature, drop)
    mcd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(drop, 0.0).sum(1)
    return scd, mcd


@register_loss("rld", aliases=("RLD",))
class RLDLoss(DistillationLoss):
    """Terms ``{"ce", "scd", "mcd"}``; the latter two are already weighted and warmed up."""

    term_names = ("ce", "scd", "mcd")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        confidence_temperature: float = 1.0,
        ce_weight: float = 1.0,
        warmup_epochs: int = 20,
        validate: bool = True,
    ):
        super().__init__()
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.temperature = check_temperature(temperature)
        self.confidence_temperature = check_temperature(confidence_temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        if type(warmup_epochs) is not int or warmup_epochs < 0:
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
        ramp = warmup_factor(epoch, self.warmup_epochs, "RLD")
        scd, mcd = rld_parts(
            student_logits, teacher_logits, targets, self.temperature, self.confidence_temperature
        )
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "scd": ramp * self.alpha * self.confidence_temperature**2 * scd.mean(),
            "mcd": ramp * self.beta * self.temperature**2 * mcd.mean(),
        }

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"confidence_temperature={self.confidence_temperature}, ce_weight={self.ce_weight}, "
            f"warmup_epochs={self.warmup_epochs}"
        )
