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
# The public code scores the strong view at its first three temperatures only; the last
# two of its five reuse the weak view (variant="official" keeps the slip).
OFFICIAL_WEAK_REUSE = 3


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
        self._grids: dict[tuple[torch.device, torch.dtype], Tensor] = {}

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

    def _temperature_grid(self, like: Tensor) -> Tensor:
        """The temperatures as a (K, 1, 1, 1) tensor that broadcasts over (view, batch, class).

        Made once per device and dtype: a fresh host-to-GPU copy every step would be a
        synchronous transfer in the middle of the step.
        """
        key = (like.device, like.dtype)
        if key not in self._grids:
            grid = torch.tensor(self.temperatures, dtype=like.dtype).view(-1, 1, 1, 1)
            self._grids[key] = grid.to(like.device)
        return self._grids[key]

    def _stacked_instance(self, students: Tensor, teachers: Tensor) -> Tensor:
        """(K, V, B): tau^2 * KL(p_t || p_s) per sample, for every temperature and view."""
        students, teachers = self._instance_inputs(students, teachers)
        taus = self._temperature_grid(students)
        log_p_s = F.log_softmax(students / taus, dim=-1)
        log_p_t = F.log_softmax(teachers / taus, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * taus.squeeze(-1).square()

    def _stacked_grams(self, students: Tensor, teachers: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample rows of ||G_t - G_s||^2 / B and per-class rows of ||M_t - M_s||^2 / C,
        ((K, V, B), (K, V, C)), with G = P P^T and M = P^T P at every temperature and view.

        Callers run this with autocast off: in bf16 the gap, a difference of two nearly
        equal matrices once the student fits the teacher, put 21 % error on the batch term
        and 23 % on its gradient.  The public code trains in float32.
        """
        taus = self._temperature_grid(students)
        p_s, p_t = F.softmax(students / taus, dim=-1), F.softmax(teachers / taus, dim=-1)
        batch_gap = p_t @ p_t.mT - p_s @ p_s.mT
        class_gap = p_t.mT @ p_t - p_s.mT @ p_s
        return batch_gap.square().sum(-1) / students.shape[-2], class_gap.square().sum(-1) / students.shape[-1]

    def _paper(
        self, s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor,
        sample_mask: Tensor, class_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masks select samples / classes inside each reduction; both views, every level.

        Every temperature and both views go through one batched computation of shape
        (K, V, B, C) instead of a loop over 2K small ones: the same sums in about a fifth
        of the ATen calls (benchmarks/results/mlkd_step.md).
        """
        students, teachers = torch.stack((s_weak, s_strong)), torch.stack((t_weak, t_strong))
        with full_precision(students):  # batched matmuls: autocast would take them to bf16
            instance = (self._stacked_instance(students, teachers) * sample_mask).mean(-1).sum()
            batch_rows, class_rows = self._stacked_grams(students, teachers)
        return instance, (batch_rows * sample_mask).sum(), (class_rows * class_mask).sum()

    def _official(
        self, s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor,
        sample_mask: Tensor, class_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The public code's arithmetic: masks rescale reduced terms; the strong view's
        last two instance temperatures use weak logits; strong batch/class terms unused."""
        sample_rate, class_rate = sample_mask.mean(), class_mask.mean()
        students, teachers = torch.stack((s_weak, s_strong)), torch.stack((t_weak, t_strong))
        with full_precision(students):
            kl = self._stacked_instance(students, teachers).mean(-1)  # (K, V)
            batch_rows, class_rows = self._stacked_grams(s_weak.unsqueeze(0), t_weak.unsqueeze(0))
        slip = OFFICIAL_WEAK_REUSE  # the copy-paste slip: taus 2 and 6 reuse the weak logits
        instance = kl[:, 0].sum() * sample_rate + kl[:slip, 1].sum() + kl[slip:, 0].sum()
        return instance, batch_rows.sum() * sample_rate, class_rows.sum() * class_rate

    def extra_repr(self) -> str:
        return (
            f"temperatures={self.temperatures}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"variant={self.variant!r}, standardize={self.standardize}"
        )
