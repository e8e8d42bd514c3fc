"""Multi-level logit distillation (Jin, Wang and Lin, CVPR 2023).

Predictions are aligned at three levels, over a set of temperatures tau
("prediction augmentation"), on a weak and a strong augmented view of each
image, with P = softmax(z / tau) (B x C):

* instance:  tau^2 * KL(p_t,i || p_s,i) per sample,
* batch:     the B x B input correlation G = P P^T:    ||G_t - G_s||_F^2 / B,
* class:     the C x C class correlation M = P^T P:    ||M_t - M_s||_F^2 / C.

Confidence masks come from the teacher's weak-view softmax at tau = 1: sample i
takes part when its top probability is at most the batch median, class c when
its summed probability is at most the median over classes (the public code's
rule).  ``variant="paper"`` (default) applies the masks per sample / class and
adds every level on both views; ``variant="official"`` reproduces the public
code's arithmetic exactly, defects included -- see docs/methods.md for the list.

    L = ce_weight * (CE_weak + CE_strong) + kd_weight * (instance + batch + class)

Defaults: temperatures (4, 3, 5, 2, 6), CE 0.1, KD 0.9 (the public code's
cfg.py values).  ``standardize=True`` z-scores the logits of the instance terms
only, with base temperature 2 and KD weight 9, as in the logit-standardization
code (its temperature set becomes (2, 3, 5, 2, 6)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.kd import check_temperature
from figkd.losses.precision import as_float, full_precision
from figkd.losses.standardize import standardize_logits
from figkd.losses.validation import check_choice, check_logits, check_weight

VARIANTS = ("paper", "official")


def instance_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-sample tau^2 * KL(p_t || p_s)."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1) * temperature**2


def _gram_gap(p_s: Tensor, p_t: Tensor, transpose: bool) -> Tensor:
    """``Q_t^T Q_t - Q_s^T Q_s`` with ``Q = P^T`` or ``P``, in >= float32 even under autocast.

    Autocast would run the products in bf16/fp16, and the gap is a difference of two nearly
    equal matrices once the student fits the teacher: bf16 put 21 % error on the batch term
    and 23 % on its gradient there.  The public code trains in float32.
    """
    p_s, p_t = as_float(p_s), as_float(p_t)  # float64 stays float64
    with full_precision(p_s):
        if transpose:
            return p_t.T @ p_t - p_s.T @ p_s
        return p_t @ p_t.T - p_s @ p_s.T


def batch_gram_gap(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-sample row of ||G_t - G_s||^2 / B with G = P P^T (rows sum to the full term)."""
    p_s, p_t = F.softmax(student / temperature, 1), F.softmax(teacher / temperature, 1)
    gap = _gram_gap(p_s, p_t, transpose=False)
    return gap.square().sum(1) / student.shape[0]


def class_gram_gap(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-class row of ||M_t - M_s||^2 / C with M = P^T P (rows sum to the full term)."""
    p_s, p_t = F.softmax(student / temperature, 1), F.softmax(teacher / temperature, 1)
    gap = _gram_gap(p_s, p_t, transpose=True)
    return gap.square().sum(1) / student.shape[1]


def confidence_masks(teacher_weak: Tensor) -> tuple[Tensor, Tensor]:
    """(sample mask (B,), class mask (C,)): at or below the median confidence, as floats."""
    probs = F.softmax(teacher_weak, dim=1)
    sample_conf = probs.max(dim=1).values
    class_conf = probs.sum(dim=0)
    sample_mask = sample_conf <= torch.quantile(sample_conf, 0.5)
    class_mask = class_conf <= torch.quantile(class_conf, 0.5)
    return sample_mask.to(probs.dtype), class_mask.to(probs.dtype)


@register_loss("mlkd", aliases=("MLKD",))
class MLKDLoss(DistillationLoss):
    """Terms ``{"ce", "instance", "batch", "class"}``; needs a weak and a strong view."""

    term_names = ("ce", "instance", "batch", "class")
    num_views: ClassVar[int] = 2

    def __init__(
        self,
        temperatures: Sequence[float] | None = None,
        ce_weight: float = 0.1,
        kd_weight: float | None = None,
        variant: str = "paper",
        standardize: bool = False,
        validate: bool = True,
    ):
        super().__init__()
        self.standardize = bool(standardize)
        default_temps, default_w = ((2.0, 3.0, 5.0, 2.0, 6.0), 9.0) if self.standardize else ((4.0, 3.0, 5.0, 2.0, 6.0), 0.9)
        temps = tuple(float(t) for t in (default_temps if temperatures is None else temperatures))
        if not temps:
            raise ValueError("temperatures must hold at least one temperature")
        self.temperatures = tuple(check_temperature(t) for t in temps)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", default_w if kd_weight is None else kd_weight)
        self.variant = check_choice("variant", variant, VARIANTS)
        if self.variant == "official" and len(self.temperatures) != 5:
            raise ValueError(
                "variant='official' reproduces the public code's five temperatures (cfg, 3, 5, 2, 6); "
                f"got {len(self.temperatures)}"
            )
        self.validate = validate

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        student_logits_strong: Tensor | None = None,
        teacher_logits_strong: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        if student_logits_strong is None or teacher_logits_strong is None:
            raise ValueError(
                "MLKD needs logits of a strong augmented view too (student_logits_strong=, "
                "teacher_logits_strong=); the trainer supplies them when the data pipeline "
                "yields (weak, strong) image pairs"
            )
        if self.validate:
            check_logits(student_logits, teacher_logits, targets)
            check_logits(student_logits_strong, teacher_logits_strong, targets)
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        s_weak, s_strong = student_logits.to(dtype), student_logits_strong.to(dtype)
        t_weak, t_strong = teacher_logits.detach().to(dtype), teacher_logits_strong.detach().to(dtype)
        sample_mask, class_mask = confidence_masks(t_weak)
        compute = self._official if self.variant == "official" else self._paper
        instance, batch, klass = compute(s_weak, t_weak, s_strong, t_strong, sample_mask, class_mask)
        ce = F.cross_entropy(as_float(student_logits), targets) + F.cross_entropy(as_float(student_logits_strong), targets)
        return {
            "ce": self.ce_weight * ce,
            "instance": self.kd_weight * instance,
            "batch": self.kd_weight * batch,
            "class": self.kd_weight * klass,
        }

    def _instance_inputs(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        if self.standardize:
            return standardize_logits(student), standardize_logits(teacher)
        return student, teacher

    def _paper(self, s_weak, t_weak, s_strong, t_strong, sample_mask, class_mask):
        """Masks select samples / classes inside each reduction; both views, every level."""
        instance = batch = klass = s_weak.new_zeros(())
        for student, teacher in ((s_weak, t_weak), (s_strong, t_strong)):
            inst_s, inst_t = self._instance_inputs(student, teacher)
            for tau in self.temperatures:
                instance = instance + (instance_kl(inst_s, inst_t, tau) * sample_mask).mean()
                batch = batch + (batch_gram_gap(student, teacher, tau) * sample_mask).sum()
                klass = klass + (class_gram_gap(student, teacher, tau) * class_mask).sum()
        return instance, batch, klass

    def _official(self, s_weak, t_weak, s_strong, t_strong, sample_mask, class_mask):
        """The public code's arithmetic: masks rescale reduced terms; the strong view's
        last two instance temperatures use weak logits; strong batch/class terms unused."""
        sample_rate, class_rate = sample_mask.mean(), class_mask.mean()
        weak_s, weak_t = self._instance_inputs(s_weak, t_weak)
        strong_s, strong_t = self._instance_inputs(s_strong, t_strong)
        instance = batch = klass = s_weak.new_zeros(())
        for index, tau in enumerate(self.temperatures):
            instance = instance + instance_kl(weak_s, weak_t, tau).mean() * sample_rate
            slip = index >= 3  # the copy-paste slip: taus 2 and 6 reuse the weak logits
            view_s, view_t = (weak_s, weak_t) if slip else (strong_s, strong_t)
            instance = instance + instance_kl(view_s, view_t, tau).mean()
            batch = batch + batch_gram_gap(s_weak, t_weak, tau).sum() * sample_rate
            klass = klass + class_gram_gap(s_weak, t_weak, tau).sum() * class_rate
        return instance, batch, klass

    def extra_repr(self) -> str:
        return (
            f"temperatures={self.temperatures}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"variant={self.variant!r}, standardize={self.standardize}"
        )
