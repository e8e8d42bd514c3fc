"""Checkpoints: atomic writes, weights-only reads, and the teacher-loading checks.

``last.pt`` and ``best.pt`` hold ``{"model": state_dict, "arch", "num_classes",
...}``: the ``"model"`` key is what :func:`figkd.models.load_checkpoint`
extracts, so every checkpoint ``figkd train`` writes is a valid teacher file
for ``figkd distill``.  ``last.pt`` also carries the optimizer, AMP scaler,
epoch, best-so-far record and RNG states needed to resume exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from figkd.models import (
    MODELS,
    CheckpointMismatchError,
    ZooModel,
    create_model,
    load_checkpoint,
)
from figkd.models.checkpoint import file_sha256, read_checkpoint_file

FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous file intact, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_weights_only(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs); a damaged or
    foreign file is a ``ValueError`` that names it."""
    return read_checkpoint_file(path, map_location)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_payload(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """Weights plus what a loader needs to check them (architecture, classes)."""
    plain = unwrap(model)
    return {
        "format": FORMAT_VERSION,
        "model": {k: v.detach().clone() for k, v in plain.state_dict().items()},
        "arch": getattr(plain, "arch", "") or type(plain).__name__,
        "num_classes": int(getattr(plain, "num_classes", 0)),
        **extra,
    }


def load_teacher(
    name: str,
    checkpoint: str | os.PathLike[str],
    num_classes: int,
    *,
    in_channels: int = 3,
    args: Mapping[str, Any] | None = None,
    sha256: str | None = None,
    config_key: str = "teacher",
) -> tuple[ZooModel, dict[str, Any]]:
    """Build teacher ``name`` and load ``checkpoint`` into it, refusing mismatches.

    A checkpoint whose recorded architecture or class count differs from the
    config is refused with both values shown and the fix; so is a plain state dict
    (mdistiller's ``ckpt_epoch_240.pth``) whose tensors do not fit, named by its file.
    ``sha256``, if given, must match the file's digest (checked before anything is
    loaded).  ``config_key`` is the config section the messages tell the user to set
    (``teacher`` -> ``teacher.name=...``; ``model`` for ``figkd eval``).  Returns the
    model (eval mode, no gradients) and a record for summary.json: path, SHA-256,
    classes, arch.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint not found: {path}. Train the teacher first (figkd train "
            "<teacher config>) or set teacher.checkpoint=<file>"
        )
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256.lower():
        raise ValueError(
            f"teacher checkpoint {path} has SHA-256 {digest}, but the config expects {sha256}"
        )
    raw = load_weights_only(path)
    canonical = MODELS.canonical(name)
    recorded = raw.get("arch")
    if (
        isinstance(recorded, str)
        and recorded
        and recorded in MODELS
        and MODELS.canonical(recorded) != canonical
    ):
        raise CheckpointMismatchError(
            f"teacher checkpoint {path} holds architecture {recorded!r} but the config's "
            f"{config_key}.name is {name!r} ({canonical}); set {config_key}.name={recorded} or "
            "pick the matching checkpoint"
        )
    recorded_classes = raw.get("num_classes")
    if isinstance(recorded_classes, int) and recorded_classes and recorded_classes != num_classes:
        raise CheckpointMismatchError(
            f"teacher checkpoint {path} has {recorded_classes} classes but the dataset in the "
            f"config has {num_classes}; use a teacher trained on this dataset "
            f"({num_classes} classes)"
        )
    model = create_model(
        canonical, num_classes=num_classes, in_channels=in_channels, **dict(args or {})
    )
    try:  # shape / key checks, both sides in the message, the file named
        info = load_checkpoint(model, raw, source=path)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(
            f"{error.problem}; {_teacher_fix(error, canonical, num_classes, config_key)}",
            problem=error.problem,
            kind=error.kind,
            fits=error.fits,
            same_layers=error.same_layers,
        ) from None
    model.eval()
    model.requires_grad_(False)
    record = {
        "checkpoint": str(path),
        "sha256": digest,
        "arch": canonical,
        "num_classes": info.num_classes if info.num_classes is not None else num_classes,
    }
    return model, record


def _teacher_fix(
    error: CheckpointMismatchError, canonical: str, num_classes: int, config_key: str
) -> str:
    """The advice that ends a teacher mismatch message, in config keys."""
    if error.kind == "classes":
        return f"use a teacher trained on this dataset ({num_classes} classes)"
    if len(error.fits) == 1:
        return f"set {config_key}.name={error.fits[0]}"
    if error.fits:
        return f"set {config_key}.name to one of {', '.join(error.fits)}"
    if error.same_layers:
        return (
            f"the file has {canonical}'s layers at other sizes: check {config_key}.args "
            "(e.g. width)"
        )
    return f"check {config_key}.name (the file fits no zoo model with default options)"
