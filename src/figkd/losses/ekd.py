"""Evidential knowledge distillation, EKD (Xiang, Gao and Xu, ICCV 2025).

EKD treats a network's class distribution as a random variable with a Dirichlet (evidential,
second-order) distribution whose concentrations come from the logits. It distils both the
distribution's expectation (first order) and the distribution itself (second order):

    first order:   alpha = exp(z) + c,          m = alpha / sum(alpha)
                   L_1st = KL(m_t || m_s)
    second order:  alpha' = softplus(z) + c
                   L_2nd = KL(Dir(alpha'_t) || Dir(alpha'_s))
                         = lnG(S_t) - lnG(S_s) - sum_c [lnG(a_t) - lnG(a_s)]
                           + sum_c (a_t - a_s)(psi(a_t) - psi(S_t)),   S = sum_c a
    label term:    CE_ev = psi(S) - psi(alpha_y), with alpha = exp(z_s) + c (the expected
                   cross-entropy under the student's Dirichlet, replacing plain CE)

    L = ce_weight * CE_ev + first_weight * L_1st + w(e) * second_weight * L_2nd,
    w(e) = min(e / warmup, 1),   c = exp(lamb)

lnG is log-Gamma and psi is digamma. Every term is a batch mean, and e counts epochs from 1.
There is no temperature. Defaults are the official ResNet32x4 -> ResNet8x4 config
(lyxiang-casia/EKD, ``configs/cifar100/ekd/resnet32x4_resnet8x4.yaml`` with
``mdistiller/distillers/EKD.py``): lamb = -1.22 for both networks, CE 1, first 4.5, second 4.5,
warm-up 30. Other pairs set their own lamb, weights and warm-up, and those values live in our
configs. ``evidential_ce=False`` swaps the label term for ordinary CE.

Our copy of the paper gave only its summary, L_EKD = L_1st + gamma * L_2nd. The exact forms
follow the official code. Numerics differ from that code but the values agree: exp(z) is never
formed. log(exp(z) + c) = logaddexp(z, log c), and psi(exp(u)) switches to its asymptotic
series u - exp(-u)/2 for u > 30. So logits of +-1e4, where the official code's exp overflows,
keep finite values and gradients. The official code can also learn lamb (lamb = 0 in a config);
no published CIFAR config uses that, and it is not implemented.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.dkd import warmup_factor
from figkd.losses.precision import as_float
from figkd.losses.validation import check_logits, check_weight

_ASYMPTOTIC_FROM = 30.0


def digamma_of_exp(u: Tensor) -> Tensor:
    """psi(exp(u)), finite for any finite u; the series is exact to float precision above u = 30."""
    direct = torch.digamma(torch.exp(u.clamp(max=_ASYMPTOTIC_FROM)))
    series = u - 0.5 * torch.exp(-u.clamp(min=_ASYMPTOTIC_FROM))
    return torch.where(u > _ASYMPTOTIC_FROM, series, direct)


def log_concentration(logits: Tensor, lamb: float) -> Tensor:
    """log(exp(z) + exp(lamb)), elementwise and stable."""
    return torch.logaddexp(logits, torch.full_like(logits, lamb))


def dirichlet_kl(alpha_t: Tensor, alpha_s: Tensor) -> Tensor:
    """Per-row KL(Dir(alpha_t) || Dir(alpha_s)) for (B, C) concentrations."""
    total_t = alpha_t.sum(1)
    total_s = alpha_s.sum(1)
    return (
        torch.lgamma(total_t)
        - torch.lgamma(total_s)
        - (torch.lgamma(alpha_t) - torch.lgamma(alpha_s)).sum(1)
        + ((alpha_t - alpha_s) * (torch.digamma(alpha_t) - torch.digamma(total_t)[:, None])).sum(1)
    )


def ekd_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    lamb: float,
    teacher_lamb: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (CE_ev, L_1st, L_2nd); see the module docstring."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = student_logits.to(dtype)
    t = teacher_logits.detach().to(dtype)

    log_alpha_s = log_concentration(s, lamb)
    log_alpha_t = log_concentration(t, teacher_lamb)
    log_total_s = torch.logsumexp(log_alpha_s, dim=1)
    ce = digamma_of_exp(log_total_s) - digamma_of_exp(log_alpha_s.gather(1, targets[:, None])[:, 0])

    log_m_s = log_alpha_s - log_total_s[:, None]
    log_m_t = log_alpha_t - torch.logsumexp(log_alpha_t, dim=1, keepdim=True)
    first = (log_m_t.exp() * (log_m_t - log_m_s)).sum(1)

    second = dirichlet_kl(F.softplus(t) + math.exp(teacher_lamb), F.softplus(s) + math.exp(lamb))
    return ce, first, second


@register_loss("ekd", aliases=("EKD",))
class EKDLoss(DistillationLoss):
    """Terms ``{"ce", "first", "second"}``; "second" is already warmed up."""

    term_names = ("ce", "first", "second")

    def __init__(
        self,
        lamb: float = -1.22,
        teacher_lamb: float | None = None,
        ce_weight: float = 1.0,
        first_weight: float = 4.5,
        second_weight: float = 4.5,
        warmup_epochs: int = 30,
        evidential_ce: bool = True,
        validate: bool = True,
    ):
        super().__init__()
        self.lamb = float(lamb)
        self.teacher_lamb = self.lamb if teacher_lamb is None else float(teacher_lamb)
        for name, value in (("lamb", self.lamb), ("teacher_lamb", self.teacher_lamb)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.first_weight = check_weight("first_weight", first_weight)
        self.second_weight = check_weight("second_weight", second_weight)
        if type(warmup_epochs) is not int or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.evidential_ce = bool(evidential_ce)
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
        ramp = warmup_factor(epoch, self.warmup_epochs, "EKD")
        ce_ev, first, second = ekd_parts(
            student_logits, teacher_logits, targets, self.lamb, self.teacher_lamb
        )
        ce = ce_ev.mean() if self.evidential_ce else F.cross_entropy(as_float(student_logits), targets)
        return {
            "ce": self.ce_weight * ce,
            "first": self.first_weight * first.mean(),
            "second": ramp * self.second_weight * second.mean(),
        }

    def extra_repr(self) -> str:
        return (
            f"lamb={self.lamb}, teacher_lamb={self.teacher_lamb}, ce_weight={self.ce_weight}, "
            f"first_weight={self.first_weight}, second_weight={self.second_weight}, "
            f"warmup_epochs={self.warmup_epochs}, evidential_ce={self.evidential_ce}"
        )
