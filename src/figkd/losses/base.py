"""The interface every distillation method implements, and its registry.

A method is one ``nn.Module`` that maps (student logits, teacher logits,
targets, optional context such as ``epoch=``) to a dict of *already weighted*
loss terms.  The trainer logs each term by name and sums them, so adding a
method never touches the trainer (mdistiller's distiller interface, made
uniform and typed).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from figkd.registry import Registry

LOSSES: Registry[type[DistillationLoss]] = Registry("loss")


def register_loss(
    name: str, *, aliases: tuple[str, ...] = ()
) -> Callable[[type[DistillationLoss]], type[DistillationLoss]]:
    """Class decorator adding a :class:`DistillationLoss` subclass to :data:`LOSSES`."""
    return LOSSES.register(name, aliases=aliases)


def list_losses(pattern: str | None = None) -> list[str]:
    """Registered loss names, optionally filtered by a shell-style pattern."""
    return LOSSES.names(pattern)


class LossOptionError(ValueError):
    """A loss option whose value has the wrong type; ``option`` names it, ``problem`` says
    what is wrong (``"expected a number, got 'abc'"``)."""

    def __init__(self, loss: str, option: str, problem: str) -> None:
        super().__init__(f"loss {loss!r} option {option}: {problem}")
        self.option = option
        self.problem = problem


def build_loss(name: str, **kwargs: Any) -> DistillationLoss:
    """Instantiate the loss registered as ``name``; unknown options are a ValueError.

    An option declared (or defaulting to) ``int`` / ``float`` given a string is converted,
    or refused with a :class:`LossOptionError` naming the option.
    """
    cls = LOSSES.get(name)
    params = _signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown and not accepts_any:
        close = [
            c for u in unknown for c in difflib.get_close_matches(u, allowed, n=1, cutoff=0.6)
        ]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(
            f"loss {LOSSES.canonical(name)!r} got unknown option(s) {', '.join(unknown)}{hint}; "
            f"its options are: {', '.join(allowed)}"
        )
    kwargs = {
        key: _number(LOSSES.canonical(name), key, value, params[key])
        if key in params
        else value
        for key, value in kwargs.items()
    }
    return cls(**kwargs)


def _signature(function: Any) -> inspect.Signature:
    try:  # resolve ``from __future__ import annotations`` strings to types
        return inspect.signature(function, eval_str=True)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: plain strings
        return inspect.signature(function)


def _number_type(param: inspect.Parameter) -> type | None:
    """``int`` or ``float`` when the option takes only a number (or None), else None."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        default = param.default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return None
        return float if isinstance(default, float) else int
    members = set(typing.get_args(annotation)) or {annotation}
    members.discard(type(None))
    if members and members <= {int, float}:
        return float if float in members else int
    return None


def _number(loss: str, key: str, value: Any, param: inspect.Parameter) -> Any:
    kind = _number_type(param)
    if kind is None or value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            pass
    raise LossOptionError(loss, key, f"expected {expected}, got {value!r}")


def _forward_unimplemented(
    self: nn.Module,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    **context: Any,
) -> dict[str, Tensor]:
    """The default ``forward`` of a :class:`DistillationLoss` subclass that defines none."""
    raise NotImplementedError(f"{type(self).__name__} does not define forward()")


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

    #: ``forward(student_logits, teacher_logits, targets, **context) -> {term: tensor}``.
    #: Declared as a callable attribute, as ``nn.Module.forward`` is, not as a method:
    #: subclasses legitimately narrow ``teacher_logits`` to ``Tensor`` (methods that need
    #: a teacher) and add required keyword-only context (``student_features=``,
    #: ``epoch=``, ``images=``, ...), which a method signature here would forbid (LSP).
    forward: Callable[..., dict[str, Tensor]] = _forward_unimplemented
