"""Loading weights into zoo models, with errors that say what does not fit and why.

A checkpoint may be a raw ``state_dict`` or a dict holding one under
``"model"`` or ``"state_dict"`` (RepDistiller/mdistiller teachers use
``"model"``); ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are
stripped.  Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from figkd.models.base import ZooModel

StateSource = str | os.PathLike[str] | Mapping[str, Any]

#: wrappers' key prefixes removed when every key carries them
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: how many key names an error message lists before "..."
SHOWN_KEYS = 8


class CheckpointMismatchError(ValueError):
    """The checkpoint's classes or architecture differ from the model's."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What was loaded: recorded alongside a run so a teacher can be traced to its file."""

    source: str
    sha256: str | None
    num_classes: int | None
    skipped: tuple[str, ...] = ()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of ``checkpoint`` (raw, or under "model" / "state_dict"), prefixes stripped."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            "checkpoint holds no state dict: expected tensors (directly or under 'model' / "
            f"'state_dict'), found non-tensor entries {_short(not_tensors)}"
        )
    state = dict(checkpoint)
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_checkpoint(
    path_or_state: StateSource, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], str, str | None, Mapping[str, Any]]:
    """(state dict, source label, SHA-256 or None, the raw object)."""
    if isinstance(path_or_state, Mapping):
        return extract_state_dict(path_or_state), "<state dict>", None, path_or_state
    path = Path(path_or_state)
    raw = read_checkpoint_file(path, map_location)
    return extract_state_dict(raw), str(path), file_sha256(path), raw


def read_checkpoint_file(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """A checkpoint's top-level dict, read with ``weights_only=True`` (no code runs).

    Every way a file can fail to load is a ``ValueError`` naming the file and the fix: a
    damaged or truncated copy, a file that is not a torch checkpoint, or one that pickles
    objects besides tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is mostly advice to load with weights_only=False; keep its reason
        reasons = [line.strip() for line in str(error).splitlines() if "Unsupported" in line]
        detail = f" ({reasons[0]})" if reasons else ""
        raise ValueError(
            f"cannot read checkpoint {path}: it is not a torch checkpoint, is damaged, or "
            "pickles objects besides tensors and plain containers (figkd loads with "
            f"weights_only=True; save a state_dict, or copy the file again){detail}"
        ) from error
    except Exception as error:  # noqa: BLE001 - torch's unpickler raises many types on junk
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: the file is damaged, truncated or not a torch "
            f"checkpoint; copy it again or retrain it ({first})"
        ) from error
    if not isinstance(raw, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")
    return dict(raw)


def load_checkpoint(
    model: ZooModel,
    path_or_state: StateSource,
    *,
    strict: bool = True,
    exclude_classifier: bool = False,
    sha256: str | None = None,
    map_location: str | torch.device = "cpu",
) -> CheckpointInfo:
    """Load weights into ``model`` after checking they fit; return where they came from.

    Raises :class:`CheckpointMismatchError` when the class count differs (unless
    ``exclude_classifier``, which keeps the model's own classifier, e.g. to
    fine-tune ImageNet weights on 200 classes), when tensor shapes differ, or
    (``strict``) when keys are missing or unexpected.  ``sha256``, if given, must
    match the file's digest.
    """
    state, source, digest, raw = read_checkpoint(path_or_state, map_location)
    if sha256 is not None and digest is not None and digest != sha256.lower():
        raise ValueError(f"checkpoint {source} has SHA-256 {digest}, expected {sha256}")

    clf = model.classifier_name()
    weight_key = f"{clf}.weight"
    num_classes = int(state[weight_key].shape[0]) if weight_key in state else None
    skipped: tuple[str, ...] = ()
    if exclude_classifier:
        skipped = tuple(k for k in state if k.startswith(f"{clf}."))
        state = {k: v for k, v in state.items() if k not in skipped}
    elif num_classes is not None and num_classes != model.num_classes:
        raise CheckpointMismatchError(
            f"checkpoint {source} has {num_classes} classes ({weight_key} "
            f"{tuple(state[weight_key].shape)}) but the model {_describe(model)} was built with "
            f"num_classes={model.num_classes}"
        )

    expected = model.state_dict()
    if exclude_classifier:
        expected = {k: v for k, v in expected.items() if not k.startswith(f"{clf}.")}
    problems = _compare(expected, state, strict)
    if problems:
        hint = _recorded_arch(raw)
        raise CheckpointMismatchError(
            f"checkpoint {source}{hint} does not fit the model {_describe(model)}: "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=strict and not exclude_classifier)
    return CheckpointInfo(source=source, sha256=digest, num_classes=num_classes, skipped=skipped)


def _compare(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], strict: bool
) -> list[str]:
    """Human-readable differences between the model's and the checkpoint's tensors."""
    # BN's loader fills a missing counter itself (checkpoints from before PyTorch 0.4.1)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys {_short(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches {_short(shapes)}")
    return problems


def _describe(model: ZooModel) -> str:
    name = f"{model.arch!r} " if model.arch else ""
    return f"{name}({type(model).__name__})"


def _recorded_arch(raw: Mapping[str, Any]) -> str:
    for key in ("arch", "model_name", "model"):
        if isinstance(raw.get(key), str):
            return f" (recorded {key}={raw[key]!r})"
    return ""


def _short(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    return f"[{shown}{', ...' if len(items) > SHOWN_KEYS else ''}]"
