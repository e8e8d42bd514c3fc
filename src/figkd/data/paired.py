"""Paired weak/strong views of each image, for methods such as MLKD.

Used as a dataset's ``transform``: each item becomes ``((weak, strong), label)`` and the
default collate gives ``[weak_batch, strong_batch]``. The two views are drawn
independently from the same decoded image, as in MLKD's data pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from figkd.data.transforms import Preset, get_preset


class PairedViews:
    """Apply ``weak`` and ``strong`` to the same input and return ``(weak(x), strong(x))``."""

    def __init__(self, weak: Callable[[Any], Any], strong: Callable[[Any], Any]) -> None:
        self.weak = weak
        self.strong = strong

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.weak(image), self.strong(image)

    def __repr__(self) -> str:
        return f"PairedViews(\n  weak={self.weak!r},\n  strong={self.strong!r}\n)"


def build_paired_transforms(preset: str | Preset) -> PairedViews:
    """Weak view = the preset's train transform; strong = the same + RandAugment + Cutout."""
    spec = get_preset(preset)
    return PairedViews(spec.train(), spec.strong())
