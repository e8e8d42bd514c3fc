"""Seeded, stratified validation splits carved from a training set.

The paper reports last-epoch test accuracy; figkd additionally selects "best"
checkpoints on a held-out part of the *training* data, never on the test set.
The carve depends only on the labels, the fraction and the seed, so the same
arguments give the same split on every machine and for every reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset


def stratified_split(
    targets: Sequence[int], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split indices into ``(train, val)`` with ``fraction`` of every class in ``val``.

    Each class contributes ``round(fraction * n_c)`` samples, at least 1 and at most
    ``n_c - 1`` (classes with a single sample stay in train), so class proportions are
    preserved to within one sample per class. Classes are visited in label order with one
    ``numpy.random.default_rng(seed)`` stream, which makes the split a pure function
    of ``(targets, fraction, seed)``. Both index lists are returned sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) to carve a split, got {fraction}")
    labels = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        count = round(fraction * len(members))
        count = min(max(count, 1), len(members) - 1)
        val.append(rng.permutation(members)[:count])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).tolist(), val_idx.tolist()


class DatasetSubset(Dataset[Any]):
    """A view of some indices of a dataset that keeps ``classes``/``targets``/``samples``.

    ``torch.utils.data.Subset`` drops those attributes, and the trainer, the cache and
    the analysis code all read them, hence this small wrapper.
    """

    def __init__(self, dataset: Any, indices: Sequence[int], split: str) -> None:
        self.dataset = dataset
        self.indices: list[int] = [int(i) for i in indices]
        self.split = split
        self.classes: list[str] = list(dataset.classes)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.targets: list[int] = [int(dataset.targets[i]) for i in self.indices]
        if hasattr(dataset, "samples"):
            self.samples: list[tuple[str, int]] = [dataset.samples[i] for i in self.indices]

    @property
    def transform(self) -> Any:
        return getattr(self.dataset, "transform", None)

    @transform.setter
    def transform(self, value: Any) -> None:
        self.dataset.transform = value

    @property
    def root(self) -> Any:
        return getattr(self.dataset, "root", None)

    def raw_image(self, index: int) -> Any:
        return self.dataset.raw_image(self.indices[index])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __repr__(self) -> str:
        return (
            f"DatasetSubset(split={self.split!r}, samples={len(self)} of {len(self.dataset)}, "
            f"dataset={type(self.dataset).__name__})"
        )
