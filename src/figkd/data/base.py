"""Shared pieces of every reader: errors, image decoding and the file-backed dataset.

Readers only have to turn an official on-disk layout into ``(path, label)`` pairs
and class names; decoding, RGB conversion, error messages and the
``classes``/``targets``/``samples`` attributes the rest of figkd relies on live here
once, so every dataset behaves the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)

Transform = Callable[[Any], Any]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root is missing or incomplete; the message says what was expected and where."""


class CorruptImageError(OSError):
    """An image file cannot be decoded; the message names the file."""


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image.

    Decoding is forced with ``load()`` here (PIL is lazy) so that truncated or corrupt
    files fail at this call, with the path in the message, instead of deep inside a
    transform. Grayscale, palette and CMYK files are converted to RGB because every
    model in figkd expects three channels.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"image file is missing: {path}. The dataset folder is incomplete; re-extract it."
        ) from error
    except PermissionError:
        raise  # already names the file, and "corrupted" would be the wrong diagnosis
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise CorruptImageError(
            f"cannot decode image file {path}: {error}. The file is corrupted or truncated; "
            "replace it with a fresh copy from the dataset's archive."
        ) from error


class ImageFileDataset(Dataset[Any]):
    """Images listed as ``(path, label)`` pairs, decoded on access (torchvision's conventions).

    Attributes:
        samples: list of ``(path, label)`` in dataset order.
        targets: the labels alone, so splits and caches need no decoding.
        classes: class names in label order; ``class_to_idx`` is its inverse.
        root: the dataset folder the paths point into; ``split``: "train" or "test".
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        split: str,
        transform: Transform | None = None,
        target_transform: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        self.samples: list[tuple[str, int]] = [(str(p), int(t)) for p, t in samples]
        self.targets: list[int] = [t for _, t in self.samples]
        self.classes: list[str] = list(classes)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.split = split
        self.transform = transform
        self.target_transform = target_transform

    @property
    def imgs(self) -> list[tuple[str, int]]:
        """Alias of ``samples`` (torchvision's ImageFolder offers both)."""
        return self.samples

    def __len__(self) -> int:
        return len(self.samples)

    def raw_image(self, index: int) -> Image.Image:
        """The decoded RGB image before any transform (used by the uint8 cache)."""
        return load_rgb(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        image: Any = load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def extra_repr(self) -> str:
        return f"root={self.root}, split={self.split!r}"

    def __repr__(self) -> str:
        lines = [
            f"{type(self).__name__}(",
            f"  {self.extra_repr()},",
            f"  samples={len(self)}, classes={len(self.classes)},",
            f"  transform={self.transform!r}",
            ")",
        ]
        return "\n".join(lines)


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file (split and label files)."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def require_files(paths: Sequence[Path], what: str, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(problem)`` when any of ``paths`` is missing, naming a few of them.

    Readers call this on every file their split files list, so an incomplete
    extraction is reported when the dataset is built, not at a random training step.
    """
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        shown = "\n".join(f"    {p}" for p in missing[:5])
        more = f"\n    ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise fail(f"{len(missing)} of the {len(paths)} {what} are missing, e.g.:\n{shown}{more}")
