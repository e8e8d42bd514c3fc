"""scikit-learn's bundled 8x8 digits: the demo dataset that needs no files.

1,797 images with values 0..16, returned as float tensors ``(1, 8, 8)`` in [0, 1].
The train/test split is fixed - stratified, 20 % test, seed 0 (the same
:func:`~figkd.data.splits.stratified_split` as the validation carve) - so every run and
every machine evaluates on the same 359 images (1,438 train).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from figkd.data.api import register_dataset
from figkd.data.base import Transform
from figkd.data.splits import stratified_split

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_VALUE = 16

_CACHE: dict[str, Any] = {}


def _digits_arrays() -> tuple[torch.Tensor, list[int], dict[str, list[int]]]:
    """Load once per process: the demo builds the dataset several times."""
    if not _CACHE:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images.astype("uint8")).unsqueeze(1).contiguous()
        targets = [int(t) for t in bunch.target]
        train, test = stratified_split(targets, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
        _CACHE.update(images=images, targets=targets, splits={"train": train, "test": test})
    return _CACHE["images"], _CACHE["targets"], _CACHE["splits"]


class Digits(Dataset[Any]):
    """8x8 handwritten digits; items are ``(transform(x), label)`` with ``x`` of shape (1, 8, 8)."""

    scale: float = float(DIGITS_MAX_VALUE)

    def __init__(self, split: str = "train", transform: Transform | None = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"Digits split must be 'train' or 'test', got {split!r}")
        images, targets, splits = _digits_arrays()
        self.indices: list[int] = splits[split]
        self.data = images[self.indices]  # uint8 (N, 1, 8, 8), values 0..16
        self.targets: list[int] = [targets[i] for i in self.indices]
        self.classes: list[str] = [str(d) for d in range(10)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.split = split
        self.transform = transform
        self.root: Path | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def raw_image(self, index: int) -> torch.Tensor:
        # float().div() exactly as the batch loader does, so both paths agree bit for bit.
        return self.data[index].float().div(self.scale)

    def images_uint8(self) -> torch.Tensor:
        """Images as uint8 ``(N, 1, 8, 8)`` with values 0..16; divide by ``scale`` for [0, 1]."""
        return self.data

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.raw_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, samples={len(self)})"


@register_dataset(
    "digits",
    aliases=("sklearn-digits",),
    url="bundled with scikit-learn (sklearn.datasets.load_digits); nothing to download",
    num_classes=10,
    presets=("digits",),
    needs_root=False,
    description="scikit-learn 8x8 digits: 1,438 train / 359 test, fixed stratified split",
)
def build_digits(root: Path | None, split: str, transform: Transform | None = None) -> Digits:
    return Digits(split, transform)
