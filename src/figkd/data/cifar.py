"""CIFAR-100 from the official "python version" pickles (``cifar-100-python/{train,test,meta}``).

Our own ~30-line reader instead of torchvision's: torchvision verifies the archive's
MD5 sums, which rules out the small fake pickles the tests write, and this one
also reports a truncated pickle by file name.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import Transform

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_LAYOUT = """
cifar-100-python/          (the extracted cifar-100-python.tar.gz)
  meta                     pickle: fine_label_names, coarse_label_names
  train                    pickle: data (50000x3072 uint8, RGB planes), fine_labels, coarse_labels
  test                     pickle: the same keys for the 10000 test images
"""


def _unpickle(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise dataset_error(name, f"missing file {path}.")
    try:
        with open(path, "rb") as handle:
            raw = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise dataset_error(name, f"cannot read {path}: {error} (truncated or not a pickle).")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


class CIFAR100(Dataset[Any]):
    """In-memory CIFAR-100; items are ``(transform(PIL image), label)`` as in torchvision."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        label_type: str = "fine",
    ) -> None:
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        batch = _unpickle(self.root / split, "cifar100")
        meta = _unpickle(self.root / "meta", "cifar100")
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = batch[f"{label_type}_labels"]
            names = meta[f"{label_type}_label_names"]
            self.data: np.ndarray = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        except (KeyError, ValueError) as error:
            raise dataset_error(
                "cifar100", f"{self.root / split} is not a CIFAR-100 batch ({error!r})."
            ) from error
        if len(labels) != len(self.data):
            raise dataset_error(
                "cifar100", f"{self.root / split}: labels and images differ in count."
            )
        self.targets: list[int] = [int(t) for t in labels]
        self.classes: list[str] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.data)

    def raw_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.data[index])

    def images_uint8(self) -> torch.Tensor:
        """All images as one ``(N, 3, 32, 32)`` uint8 tensor (no decoding needed)."""
        return torch.from_numpy(self.data).permute(0, 3, 1, 2).contiguous()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.raw_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __repr__(self) -> str:
        return f"CIFAR100(root={self.root}, split={self.split!r}, samples={len(self)})"


@register_dataset(
    "cifar100",
    aliases=("cifar-100", "CIFAR100", "CIFAR-100"),
    folder_names=("cifar-100-python",),
    marker="meta",
    url=CIFAR100_URL + " (https://www.cs.toronto.edu/~kriz/cifar.html)",
    layout=CIFAR100_LAYOUT,
    num_classes=100,
    presets=("cifar",),
    description="CIFAR-100: 50,000 train / 10,000 test images, 32x32, 100 classes",
)
def build_cifar100(
    root: Path, split: str, transform: Transform | None = None, label_type: str = "fine"
) -> CIFAR100:
    return CIFAR100(root, split, transform, label_type=label_type)
