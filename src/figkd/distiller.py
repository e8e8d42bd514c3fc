"""Student + frozen teacher + method -> (student logits, named loss terms).

The one place where a training step meets a method, kept as short as
mdistiller's distillers: the teacher always runs in eval mode without
gradients (or is skipped, for losses with ``needs_teacher = False``, or
replaced by cached logits), and the loss gets the epoch in its context.

Multi-view methods declare ``num_views = 2`` on their loss class; the data
pipeline then yields ``(weak, strong)`` image batches and both networks score
both views::

    loss(student_weak, teacher_weak, targets,
         student_logits_strong=..., teacher_logits_strong=..., epoch=epoch)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def num_views(loss: nn.Module) -> int:
    """How many augmented views of each image the loss needs (1 unless it says 2)."""
    return int(getattr(loss, "num_views", 1))


class Distiller(nn.Module):
    """Wraps a student, an optional frozen teacher and a loss module.

    ``forward(images, targets, epoch=..., teacher_logits=None)`` returns the
    student's logits (of the weak view for multi-view losses) and the loss's
    dict of already-weighted terms; the trainer sums and logs them.
    """

    def __init__(
        self, student: nn.Module, loss: nn.Module, teacher: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self.needs_teacher = bool(getattr(loss, "needs_teacher", True))
        self.views = num_views(loss)
        if self.views not in (1, 2):
            raise ValueError(f"{type(loss).__name__}.num_views must be 1 or 2, got {self.views}")
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> Distiller:
        """Switch the student (and loss) only: the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates: the student's and any of the loss's own."""
        yield from (p for p in self.student.parameters() if p.requires_grad)
        yield from (p for p in self.loss.parameters() if p.requires_grad)

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        if self.teacher is None:
            raise ValueError(
                f"loss {type(self.loss).__name__} needs a teacher but none was given: set "
                "teacher.name and teacher.checkpoint (or pass teacher_logits)"
            )
        return self.teacher(images)

    def forward(
        self,
        images: Tensor | Sequence[Tensor],
        targets: Tensor,
        *,
        teacher_logits: Tensor | Sequence[Tensor] | None = None,
        **context: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.views == 1:
            if not isinstance(images, Tensor):
                raise TypeError(f"{type(self.loss).__name__} takes one view: pass an image tensor")
            student = self.student(images)
            teacher = teacher_logits
            if teacher is None and self.needs_teacher:
                teacher = self.teacher_logits(images)
            return student, self.loss(student, teacher, targets, **context)

        if isinstance(images, Tensor) or len(images) != 2:
            raise TypeError(
                f"{type(self.loss).__name__} needs (weak, strong) image batches; the data "
                "pipeline provides them when the loss declares num_views = 2"
            )
        weak, strong = images
        student_weak, student_strong = self.student(weak), self.student(strong)
        if teacher_logits is not None:
            teacher_weak, teacher_strong = teacher_logits
        elif self.needs_teacher:
            teacher_weak, teacher_strong = self.teacher_logits(weak), self.teacher_logits(strong)
        else:
            teacher_weak = teacher_strong = None
        terms = self.loss(
            student_weak,
            teacher_weak,
            targets,
            student_logits_strong=student_strong,
            teacher_logits_strong=teacher_strong,
            **context,
        )
        return student_weak, terms


class TeacherLogitCache:
    """Teacher logits computed once per training image, looked up by sample index.

    Exact only when the training images are not randomly augmented (the same
    image always gives the same logits); the trainer refuses it otherwise.
    """

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits

    @classmethod
    @torch.no_grad()
    def compute(
        cls, teacher: nn.Module, batches: Any, size: int, device: torch.device
    ) -> TeacherLogitCache:
        """Run ``teacher`` over ``batches`` of ``(images, sample_indices)``."""
        teacher.eval()
        logits: Tensor | None = None
        for images, index in batches:
            out = teacher(images.to(device)).float()
            if logits is None:
                logits = torch.empty(size, out.shape[1], device=device)
            logits[index.to(device)] = out
        if logits is None:
            raise ValueError("cannot cache teacher logits of an empty dataset")
        return cls(logits)

    def __call__(self, index: Tensor) -> Tensor:
        return self.logits[index.to(self.logits.device)]
