"""Accuracy and running averages, kept as sums so DDP ranks can add them up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


def topk_correct(logits: Tensor, targets: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, Tensor]:
    """Number of samples whose target is among the top-k logits, per k (k capped at C)."""
    ks = list(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return {k: hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks}


class SumMeter:
    """Weighted sums of named values; ``means()`` divides by the sample count.

    Values accumulate as device tensors (no host sync per step) and are read
    once per epoch.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, values: Mapping[str, Tensor | float], n: int) -> None:
        for key, value in values.items():
            value = torch.as_tensor(value).detach().to(torch.float64) * n
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += n

    def add_sums(self, sums: Mapping[str, Tensor | float], n: int) -> None:
        """Add already-summed values (e.g. counts of correct samples)."""
        for key, value in sums.items():
            value = torch.as_tensor(value).detach().to(torch.float64)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += n

    def state(self) -> tuple[list[str], Tensor]:
        """Keys and one float64 vector ``[sums..., count]`` (for an all-reduce)."""
        keys = sorted(self.sums)
        device = next(iter(self.sums.values())).device if self.sums else "cpu"
        values = [self.sums[k].to(device) for k in keys] + [
            torch.tensor(float(self.count), dtype=torch.float64, device=device)
        ]
        return keys, torch.stack(values)

    @staticmethod
    def means_from(keys: list[str], vector: Tensor) -> dict[str, float]:
        values = vector.tolist()
        count = values[-1]
        if count == 0:
            return {k: float("nan") for k in keys}
        return {k: v / count for k, v in zip(keys, values[:-1], strict=True)}

    def means(self) -> dict[str, float]:
        keys, vector = self.state()
        return self.means_from(keys, vector)
