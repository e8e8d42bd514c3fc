"""Plain cross-entropy: the no-distillation baseline (and how teachers are trained)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.precision import as_float
from figkd.losses.validation import check_logits, check_weight


@register_loss("ce", aliases=("cross_entropy", "vanilla"))
class CELoss(DistillationLoss):
    """``{"ce": weight * CE(student, y)}``; ignores the teacher."""

    term_names: ClassVar[tuple[str, ...]] = ("ce",)
    needs_teacher = False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0, validate: bool = True):
        super().__init__()
        self.weight = check_weight("weight", weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.validate = validate

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        if targets is None:
            raise ValueError("CELoss needs targets (class indices)")
        if self.validate:
            check_logits(student_logits, None, targets)
        ce = F.cross_entropy(as_float(student_logits), targets, label_smoothing=self.label_smoothing)
        return {"ce": self.weight * ce}

    def extra_repr(self) -> str:
        return f"weight={self.weight}, label_smoothing={self.label_smoothing}"
