"""The interface every distillation method implements, and its registry.

A method is one ``nn.Module`` that maps (student logits, teacher logits,
targets, optional context such as ``epoch=``) to a dict of *already weighted*
loss terms.  The trainer logs each term by name and sums them, so adding a
method never touches the trainer (mdistiller's distiller interface, made
uniform and typed).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor, nn

from figkd.registry import Registry

LOSSES: Registry[type["DistillationLoss"]] = Registry("loss")


def register_loss(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator adding a :class:`DistillationLoss` subclass to :data:`LOSSES`."""
    return LOSSES.register(name, aliases=aliases)


def list_losses(pattern: str | None = None) -> list[str]:
    """Registered loss names, optionally filtered by a shell-style pattern."""
    return LOSSES.names(pattern)


def build_loss(name: str, **kwargs: Any) -> "DistillationLoss":
    """Instantiate the loss registered as ``name``; unknown options are a ValueError."""
    cls = LOSSES.get(name)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown and not accepts_any:
        raise ValueError(
            f"loss {LOSSES.canonical(name)!r} got unknown option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(allowed)}"
        )
    return cls(**kwargs)


class DistillationLoss(nn.Module):
    """Base class: ``forward(student_logits, teacher_logits, targets, **context) -> terms``.

    Subclasses set ``term_names`` (the keys their forward returns) and
    ``needs_teacher`` (False for losses that ignore the teacher, so the trainer
    can skip the teacher forward entirely).
    """

    term_names: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = True
    #: 2 for methods that score a weak and a strong view of each image (MLKD)
    num_views: ClassVar[int] = 1
    #: True: the distiller runs ``forward_features`` on both networks and passes
    #: ``student_features=`` and ``teacher_features=`` (``figkd.models.Features``)
    needs_features: ClassVar[bool] = False
    #: True: the distiller passes ``index=`` (dataset indices of the batch; CRD's memory bank)
    needs_sample_index: ClassVar[bool] = False
    #: True: the distiller passes ``images=`` (the student's input batch; DML's peer)
    needs_images: ClassVar[bool] = False

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        """Create modules whose shapes depend on the networks (connectors, memory banks).

        Called once by the engine after both networks are on their device and
        before the optimizer is built, so parameters created here are trained
        with the student and saved in checkpoints.  Logit-only methods need
        nothing, hence the no-op default.
        """

    def forward(  # noqa: D102 - documented on the class
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        **context: Any,
    ) -> dict[str, Tensor]:
        raise NotImplementedError
