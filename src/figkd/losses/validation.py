"""Input checks shared by the losses: bad input fails loudly, never silently."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_matrix(name: str, logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"{name} must be shaped (batch, num_classes), got shape {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {logits.dtype}")
    return logits


class NonFiniteLogitsError(ValueError):
    """Logits hold NaN or inf (the trainer adds the epoch, step and checkpoint state)."""


def _check_finite(name: str, logits: Tensor) -> None:
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteLogitsError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf) out of {logits.numel()}; "
            "check the model's outputs and the learning rate, or enable anomaly detection"
        )


def check_logits(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor | None,
    *,
    check_finite: bool = True,
) -> None:
    """Validate shapes, dtypes, label range and (optionally) finiteness.

    ``check_finite`` synchronises with the device; the trainer, which checks the
    loss itself every step, may switch it off on GPUs.
    """
    _check_matrix("student_logits", student_logits)
    batch, num_classes = student_logits.shape
    if teacher_logits is not None:
        _check_matrix("teacher_logits", teacher_logits)
        if teacher_logits.shape[1] != num_classes:
            raise ValueError(
                f"student_logits has {num_classes} classes but teacher_logits has "
                f"{teacher_logits.shape[1]}: teacher and student must be built for the same "
                "label set (check num_classes of both models)"
            )
        if teacher_logits.shape[0] != batch:
            raise ValueError(
                f"student_logits has batch size {batch} but teacher_logits has "
                f"{teacher_logits.shape[0]}: both must score the same images"
            )
    if targets is not None:
        if not isinstance(targets, Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.dim() != 1 or targets.shape[0] != batch:
            raise ValueError(
                f"targets must be class indices shaped ({batch},), got shape {tuple(targets.shape)}"
            )
        if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if batch and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(
                f"targets must lie in [0, {num_classes - 1}] for {num_classes} classes, got "
                f"values in [{int(targets.min())}, {int(targets.max())}]"
            )
    if check_finite:
        _check_finite("student_logits", student_logits)
        if teacher_logits is not None:
            _check_finite("teacher_logits", teacher_logits)


def check_weight(name: str, value: float) -> float:
    """A loss weight or temperature-like scalar must be a finite non-negative number."""
    value = float(value)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value
