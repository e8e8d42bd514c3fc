"""The dataset registry: ``load_dataset(name, ...)`` and where each dataset lives on disk.

A reader registers a *builder* ``builder(root, split, transform, **options)`` that
knows the official train/test split files of one dataset. Everything shared - root
resolution (``root=`` -> ``$FIGKD_DATA`` -> ``./data``), the "val" split carved from
train, option checking and the not-found message with layout and download address -
is done here once, so readers stay short and all datasets fail the same helpful way.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figkd.data.base import DatasetNotFoundError, Transform
from figkd.data.splits import DatasetSubset, stratified_split
from figkd.registry import Registry

SPLITS: tuple[str, ...] = ("train", "val", "test")
DATA_ENV = "FIGKD_DATA"
DEFAULT_DATA_DIR = "data"

Builder = Callable[..., Any]


@dataclass(frozen=True)
class DatasetEntry:
    """What figkd knows about one dataset besides how to read it."""

    name: str
    builder: Builder
    folder_names: tuple[str, ...] = ()
    marker: str | None = None
    url: str = ""
    layout: str = ""
    num_classes: int | None = None
    presets: tuple[str, ...] = ()
    needs_root: bool = True
    description: str = ""

    @property
    def default_preset(self) -> str | None:
        return self.presets[0] if self.presets else None

    def options(self) -> list[str]:
        """Keyword options the builder accepts beyond ``root``, ``split`` and ``transform``."""
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p not in ("root", "split", "transform")]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    aliases: tuple[str, ...] | list[str] = (),
    folder_names: tuple[str, ...] | list[str] = (),
    marker: str | None = None,
    url: str = "",
    layout: str = "",
    num_classes: int | None = None,
    presets: tuple[str, ...] | list[str] = (),
    needs_root: bool = True,
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Register ``builder(root, split, transform, **options)`` under ``name``.

    ``folder_names`` are the conventional sub-folder names searched under ``$FIGKD_DATA``
    and ``./data``; ``marker`` is a file (relative to the dataset folder) whose presence
    identifies a dataset folder; ``url`` and ``layout`` go into not-found errors.
    """

    def decorator(builder: Builder) -> Builder:
        entry = DatasetEntry(
            name=name,
            builder=builder,
            folder_names=tuple(folder_names),
            marker=marker,
            url=url,
            layout=layout.strip("\n"),
            num_classes=num_classes,
            presets=tuple(presets),
            needs_root=needs_root,
            description=description,
        )
        DATASETS.add(name, entry, aliases=aliases)
        return builder

    return decorator


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, optionally filtered by a shell pattern such as ``"stanford*"``."""
    return DATASETS.names(pattern)


def get_dataset_info(name: str) -> DatasetEntry:
    """The registry entry of ``name`` (layout, address, class count, presets)."""
    return DATASETS.get(name)


#: how each entry point takes the dataset folder, for the hints of the errors below
ROOT_OPTIONS = "figkd study/pack: --data-root <folder>; from Python, pass root=<folder>"


def dataset_error(name: str, problem: str, tried: list[str] | None = None) -> DatasetNotFoundError:
    """A :class:`DatasetNotFoundError` that explains the expected layout and the source."""
    entry = DATASETS.get(name)
    parts = [f"dataset {entry.name!r}: {problem}"]
    if tried:
        parts.append("Tried:\n" + "\n".join(f"  {t}" for t in tried))
    if entry.layout:
        parts.append("Expected layout:\n" + "\n".join(f"  {l}" for l in entry.layout.splitlines()))
    if entry.url:
        parts.append(f"The dataset is published at {entry.url} (figkd never downloads it).")
    if entry.folder_names:
        parts.append(
            f"Set data.root=<folder> ({ROOT_OPTIONS}), or set {DATA_ENV} to a folder holding "
            "one of: "
            + ", ".join(entry.folder_names)
            + f" (./{DEFAULT_DATA_DIR}/ is searched last)."
        )
    return DatasetNotFoundError("\n".join(parts))


def _looks_valid(entry: DatasetEntry, path: Path) -> tuple[bool, str]:
    if not path.is_dir():
        return False, "missing" if not path.exists() else "not a folder"
    if entry.marker is not None and not (path / entry.marker).exists():
        return False, f"exists but has no {entry.marker}"
    return True, "ok"


def resolve_root(name: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding dataset ``name``; ``None`` for datasets that need no files.

    With ``root`` given, that folder or its conventional sub-folder is used. Otherwise
    ``$FIGKD_DATA/<folder>`` and then ``./data/<folder>`` are tried for each conventional
    folder name. Failure raises with every path tried, the layout and the source address.
    """
    entry = DATASETS.get(name)
    if not entry.needs_root:
        return None
    if root is not None:
        base = Path(root).expanduser()
        candidates = [base] + [base / folder for folder in entry.folder_names]
    else:
        if not entry.folder_names:
            raise dataset_error(
                name,
                f"this dataset has no default location; set data.root=<folder> ({ROOT_OPTIONS}).",
            )
        bases = []
        if os.environ.get(DATA_ENV):
            bases.append(Path(os.environ[DATA_ENV]).expanduser())
        bases.append(Path(DEFAULT_DATA_DIR))
        candidates = [b / folder for b in bases for folder in entry.folder_names]
    tried = []
    for candidate in candidates:
        ok, why = _looks_valid(entry, candidate)
        if ok:
            return candidate
        tried.append(f"{candidate.resolve()} ({why})")
    raise dataset_error(name, "no dataset folder found.", tried)


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    transform: Transform | None = None,
    *,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    **options: Any,
) -> Any:
    """Build split ``split`` of dataset ``name`` as a torch Dataset.

    Splits: ``"train"``, ``"test"`` (the official evaluation split) and ``"val"``, carved
    from train by :func:`~figkd.data.splits.stratified_split` when ``val_fraction > 0``;
    ``"train"`` then excludes the val samples. The result always has ``classes`` and
    ``targets``; file-backed datasets also have ``samples`` (list of ``(path, label)``).
    ``options`` go to the reader (see ``get_dataset_info(name).options()``).
    """
    entry = DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if split == "val" and val_fraction == 0.0:
        raise ValueError(
            "split='val' needs a validation split carved from train: pass val_fraction>0 "
            "(e.g. val_fraction=0.1). The official evaluation split is split='test'."
        )
    accepted = entry.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {entry.name!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    path = resolve_root(entry.name, root)
    if split == "test":
        return entry.builder(root=path, split="test", transform=transform, **options)
    full = entry.builder(root=path, split="train", transform=transform, **options)
    if val_fraction == 0.0:
        return full
    train_idx, val_idx = stratified_split(full.targets, val_fraction, val_seed)
    return DatasetSubset(full, train_idx if split == "train" else val_idx, split)
