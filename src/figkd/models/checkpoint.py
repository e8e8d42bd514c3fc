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
    """The checkpoint's classes or architecture differ from the model's.

    ``problem`` is the mismatch without the advice that ends the message, ``kind`` is
    ``"classes"`` or ``"architecture"`` and ``fits`` names the zoo architectures the file
    does fit (with their default options), so a caller can phrase the fix in its own terms
    (``teacher.name=...``).
    """

    def __init__(
        self,
        message: str,
        *,
        problem: str | None = None,
        kind: str = "",
        fits: tuple[str, ...] = (),
        same_layers: bool = False,
    ) -> None:
        super().__init__(message)
        self.problem = problem if problem is not None else message
        self.kind = kind
        self.fits = fits
        #: the file has the model's layer names, only some sizes differ (other options)
        self.same_layers = same_layers


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
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: the file is damaged, truncated or not a torch "
            f"checkpoint; copy it again or retrain it ({first})"
        ) from error
    if not isinstance(raw, Mapping):
        # the file's content is wrong, not the caller's argument: ValueError, as for damage
        raise ValueError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")  # noqa: TRY004
    return dict(raw)


def load_checkpoint(
    model: ZooModel,
    path_or_state: StateSource,
    *,
    strict: bool = True,
    exclude_classifier: bool = False,
    sha256: str | None = None,
    map_location: str | torch.device = "cpu",
    source: str | os.PathLike[str] | None = None,
) -> CheckpointInfo:
    """Load weights into ``model`` after checking they fit; return where they came from.

    Raises :class:`CheckpointMismatchError` when the class count differs (unless
    ``exclude_classifier``, which keeps the model's own classifier, e.g. to
    fine-tune ImageNet weights on 200 classes), when tensor shapes differ, or
    (``strict``) when keys are missing or unexpected.  ``sha256``, if given, must
    match the file's digest (so it needs a path, not an already-loaded dict).
    ``source`` names an already-loaded dict in messages (e.g. the file it came from).
    """
    if sha256 is not None and isinstance(path_or_state, Mapping):
        raise ValueError(
            "sha256= is checked against a file: pass the checkpoint's path, not an "
            "already-loaded state dict"
        )
    state, label, digest, raw = read_checkpoint(path_or_state, map_location)
    source = str(source) if source is not None else label
    if sha256 is not None and digest is not None and digest != sha256.lower():
        raise ValueError(f"checkpoint {source} has SHA-256 {digest}, expected {sha256}")

    clf = model.classifier_name()
    weight_key = f"{clf}.weight"
    num_classes = int(state[weight_key].shape[0]) if weight_key in state else None
    skipped: tuple[str, ...] = ()
    if exclude_classifier:
        skipped = tuple(k for k in state if k.startswith(f"{clf}."))
        state = {k: v for k, v in state.items() if k not in skipped}
    elif (
        num_classes is not None
        and num_classes != model.num_classes
        and not _compare(_without(model.state_dict(), clf), _without(state, clf), strict)
    ):  # only the classifier differs (else the architecture error below says more)
        problem = (
            f"checkpoint {source} has {num_classes} classes ({weight_key} "
            f"{tuple(state[weight_key].shape)}) but the model {_describe(model)} was built with "
            f"num_classes={model.num_classes}"
        )
        raise CheckpointMismatchError(
            f"{problem}; use a checkpoint trained on {model.num_classes} classes, or "
            "exclude_classifier=True to keep the model's own classifier",
            problem=problem,
            kind="classes",
        )

    expected = model.state_dict()
    if exclude_classifier:
        expected = _without(expected, clf)
    problems = _compare(expected, state, strict)
    if problems:
        hint = _recorded_arch(raw)
        problem = (
            f"checkpoint {source}{hint} does not fit the model {_describe(model)}: "
            + "; ".join(problems)
        )
        fits = fitting_architectures(state, in_channels=getattr(model, "in_channels", 3))
        own = model.arch in fits or _same_layers(expected, state)
        fits = tuple(name for name in fits if name != model.arch)
        if fits:
            fix = f"the file fits {_names(fits)}: build that model instead"
        elif own:
            fix = "the file has this model's layers at other sizes: check the model's options"
        else:
            fix = "check the architecture (the file fits no zoo model with default options)"
        raise CheckpointMismatchError(
            f"{problem}; {fix}",
            problem=problem,
            kind="architecture",
            fits=fits,
            same_layers=own,
        )
    model.load_state_dict(state, strict=strict and not exclude_classifier)
    return CheckpointInfo(source=source, sha256=digest, num_classes=num_classes, skipped=skipped)


def fitting_architectures(
    state: Mapping[str, Tensor], in_channels: int = 3
) -> tuple[str, ...]:
    """Zoo architectures (canonical names) whose tensors, built with default options and the
    file's class count, have exactly the names and shapes of ``state``.

    Each candidate is built on the ``meta`` device (no memory, no initialisation cost), so
    this takes about a second for the whole zoo; it runs only to phrase an error.
    """
    from figkd.models.registry import MODELS, create_model

    wanted = {k: tuple(v.shape) for k, v in state.items() if not _is_counter(k)}
    fits = []
    for name in MODELS.names():
        try:
            with torch.device("meta"):
                candidate = create_model(name, num_classes=1, in_channels=in_channels)
                weight = state.get(f"{candidate.classifier_name()}.weight")
                if weight is None or weight.ndim != 2:
                    continue
                candidate = create_model(
                    name, num_classes=int(weight.shape[0]), in_channels=in_channels
                )
        except Exception:  # noqa: BLE001, S112 - a model that cannot be built this way fits nothing
            continue
        shapes = {
            k: tuple(v.shape) for k, v in candidate.state_dict().items() if not _is_counter(k)
        }
        if shapes == wanted:
            fits.append(name)
    return tuple(fits)


def _without(state: Mapping[str, Tensor], module: str) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(f"{module}.")}


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _same_layers(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> bool:
    """Same tensor names (BN counters aside), whatever their shapes."""
    return {k for k in expected if not _is_counter(k)} == {k for k in state if not _is_counter(k)}


def _names(names: tuple[str, ...]) -> str:
    return " or ".join(repr(n) for n in names)


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
