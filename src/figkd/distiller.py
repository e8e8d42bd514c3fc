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

Single-view methods may also declare ``needs_features`` (both networks run
``forward_features``; the loss gets ``student_features=`` and
``teacher_features=``), ``needs_sample_index`` (``index=``, the batch's
dataset indices, which the trainer passes from every data path) and
``needs_images`` (``images=``).  A loss that declares none of these takes the
plain logit path unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from figkd.models.base import zoo_model


def num_views(loss: nn.Module) -> int:
    """How many augmented views of each image the loss needs (1 unless it says 2)."""
    return int(getattr(loss, "num_views", 1))


def _plain(model: nn.Module) -> nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


class FeatureOutput(nn.Module):
    """Makes ``forward`` return ``model.forward_features(x)``.

    DDP synchronises gradients only through ``forward``; the trainer wraps the
    student in this before DDP when the loss needs features.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return zoo_model(self.model).forward_features(x)


def features_view(student: nn.Module, loss: nn.Module) -> nn.Module:
    """``student`` itself, or wrapped in :class:`FeatureOutput` if ``loss`` needs features."""
    return FeatureOutput(student) if getattr(loss, "needs_features", False) else student


class Distiller(nn.Module):
    """Wraps a student, an optional frozen teacher and a loss module.

    ``forward(images, targets, epoch=..., teacher_logits=None)`` returns the
    student's logits (of the weak view for multi-view losses) and the loss's
    dict of already-weighted terms; the trainer sums and logs them.  For two
    views ``teacher_logits`` is a ``(weak, strong)`` pair, or one tensor: the weak
    view's (from the teacher-logit cache), the strong view then goes to the teacher.
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
        self.needs_features = bool(getattr(loss, "needs_features", False))
        self.needs_index = bool(getattr(loss, "needs_sample_index", False))
        self.needs_images = bool(getattr(loss, "needs_images", False))
        self.extra_context = self.needs_features or self.needs_index or self.needs_images
        if self.extra_context and self.views != 1:
            raise ValueError(
                f"{type(loss).__name__} asks for num_views=2 together with features, sample "
                "indices or images; only single-view methods may ask for those"
            )
        if self.needs_features and not (
            isinstance(_plain(student), FeatureOutput) or hasattr(student, "forward_features")
        ):
            raise TypeError(
                f"{type(loss).__name__} needs features but the student "
                f"{type(_plain(student)).__name__} has no forward_features; use a zoo model"
            )

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
        index: Tensor | None = None,
        **context: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.views == 1:
            if not isinstance(images, Tensor):
                raise TypeError(f"{type(self.loss).__name__} takes one view: pass an image tensor")
            if self.extra_context:
                return self._forward_with_context(images, targets, teacher_logits, index, context)
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
        teacher_weak: Tensor | None
        teacher_strong: Tensor | None
        if isinstance(teacher_logits, Tensor):  # cached weak view (engine/teacher_cache.py)
            teacher_weak, teacher_strong = teacher_logits, self.teacher_logits(strong)
        elif teacher_logits is not None:
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


    def _student_features(self, images: Tensor) -> Any:
        if isinstance(_plain(self.student), FeatureOutput):
            return self.student(images)  # DDP / compile wrap a FeatureOutput: go through forward
        return zoo_model(self.student).forward_features(images)

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> Any:
        """The frozen teacher's ``forward_features`` (no gradients, eval mode)."""
        if self.teacher is None:
            raise ValueError(
                f"loss {type(self.loss).__name__} needs a teacher but none was given: set "
                "teacher.name and teacher.checkpoint"
            )
        return zoo_model(self.teacher).forward_features(images)

    def _forward_with_context(
        self,
        images: Tensor,
        targets: Tensor,
        teacher_logits: Any,
        index: Tensor | None,
        context: dict[str, Any],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Single view, plus the features / sample indices / images the loss declared."""
        extra: dict[str, Any] = {}
        teacher = teacher_logits
        if self.needs_features:
            student_features = self._student_features(images)
            student = student_features["logits"]
            extra["student_features"] = student_features
            if self.needs_teacher:
                teacher_features = self.teacher_features(images)
                extra["teacher_features"] = teacher_features
                if teacher is None:
                    teacher = teacher_features["logits"]
        else:
            student = self.student(images)
            if teacher is None and self.needs_teacher:
                teacher = self.teacher_logits(images)
        if self.needs_index:
            if index is None:
                raise ValueError(
                    f"{type(self.loss).__name__} needs the batch's dataset indices: pass index="
                )
            extra["index"] = index
        if self.needs_images:
            extra["images"] = images
        return student, self.loss(student, teacher, targets, **extra, **context)


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
        """Run ``teacher`` over ``batches`` of ``(images, sample_indices)``; every index in
        ``range(size)`` must come up, or rows of uninitialised memory would pose as logits."""
        teacher.eval()
        logits: Tensor | None = None
        covered = torch.zeros(size, dtype=torch.bool, device=device)
        for images, index in batches:
            out = teacher(images.to(device)).float()
            if logits is None:
                logits = torch.empty(size, out.shape[1], device=device)
            logits[index.to(device)] = out
            covered[index.to(device)] = True
        if logits is None:
            raise ValueError("cannot cache teacher logits of an empty dataset")
        missing = (~covered).nonzero().flatten()
        if len(missing):
            raise ValueError(
                f"the teacher-logit cache saw {size - len(missing)} of {size} training images "
                f"(first missing index {int(missing[0])}): the batches must cover every index "
                "once (no drop_last, no sampler subset)"
            )
        return cls(logits)

    def __call__(self, index: Tensor) -> Tensor:
        return self.logits[index.to(self.logits.device)]
