"""Pre-sampled ("planned") RandomResizedCrop + flip parameters, one set per (epoch, sample).

``RandomResizedCrop`` has a continuous parameter space, so the teacher's logits of its
views cannot be enumerated the way the CIFAR crop/flip views can.  They can be fixed
in advance instead: :class:`CropPlan` draws every (epoch, sample) crop box and flip from
a generator seeded by ``(plan seed, epoch)``, with the semantics of torchvision's
``RandomResizedCrop.get_params`` (area fraction uniform in ``scale``, log aspect ratio
uniform in ``log(ratio)``, up to 10 tries, then the centre-crop fallback) and
``RandomHorizontalFlip(p)``.  A plan row is ``(top, left, height, width, flip)``.

:class:`PlannedDataset` applies the planned row of ``(current epoch, index)`` through
:class:`PlannedResizedCrop` (``torchvision.transforms.functional.resized_crop`` + hflip)
instead of drawing, so the same seed gives the same views in every run - which is what
lets a teacher's logits of those views be computed once and reused by any method or
student trained with that seed (see :mod:`figkd.engine.planned_cache`).  A different
seed is a different plan.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

#: bump when the sampling arithmetic changes (part of every planned cache key)
PLAN_VERSION = 1
_PLAN_STREAM = 0x706C616E  # "plan": keeps the plan's stream apart from the sampler's


def plan_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of epoch ``epoch``'s plan under plan seed ``seed``."""
    state = np.random.SeedSequence([int(seed), int(epoch), _PLAN_STREAM]).generate_state(
        2, dtype=np.uint32
    )
    # only state[1] reaches torch's CPU mt19937 (it keeps a seed's low 32 bits); kept as
    # it is so that existing plans stay valid
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_resized_crops(
    sizes: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    tries: int = 10,
) -> Tensor:
    """``(N, 5)`` long rows ``(top, left, height, width, flip)`` for images of ``sizes``.

    ``sizes`` is ``(N, 2)``: (height, width) of each image.  Per image, as
    ``RandomResizedCrop.get_params``: try ``tries`` times an area fraction uniform in
    ``scale`` and an aspect ratio log-uniform in ``ratio``, rounding width and height;
    the first box that fits is placed uniformly; if none fits, the centre crop of the
    largest box with aspect clamped to ``ratio``.  The draws are vectorised over
    images (a fixed count per epoch), so the rows depend only on (generator, sizes).
    """
    sizes = sizes.long()
    n = sizes.shape[0]
    height, width = sizes[:, 0].double(), sizes[:, 1].double()
    u_area = torch.rand(n, tries, generator=generator, dtype=torch.float64)
    u_ratio = torch.rand(n, tries, generator=generator, dtype=torch.float64)
    u_top = torch.rand(n, generator=generator, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, dtype=torch.float64)
    u_flip = torch.rand(n, generator=generator, dtype=torch.float64)

    target = (height * width)[:, None] * (scale[0] + (scale[1] - scale[0]) * u_area)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    h_try = h.gather(1, first).squeeze(1)
    w_try = w.gather(1, first).squeeze(1)
    top_try = torch.floor(u_top * (height - h_try + 1)).clamp(max=height - h_try)
    left_try = torch.floor(u_left * (width - w_try + 1)).clamp(max=width - w_try)

    # centre-crop fallback (torchvision's arithmetic)
    in_ratio = width / height
    w_fb = torch.where(in_ratio > max(ratio), torch.round(height * max(ratio)), width)
    h_fb = torch.where(in_ratio < min(ratio), torch.round(width / min(ratio)), height)
    top_fb = torch.div(height - h_fb, 2, rounding_mode="floor")
    left_fb = torch.div(width - w_fb, 2, rounding_mode="floor")

    out = torch.stack([
        torch.where(found, top_try, top_fb),
        torch.where(found, left_try, left_fb),
        torch.where(found, h_try, h_fb),
        torch.where(found, w_try, w_fb),
        (u_flip < flip_p).double(),
    ], dim=1)
    return out.long()


@dataclass(frozen=True)
class CropPlan:
    """A preset's ``RandomResizedCrop(size, scale, ratio) [+ HFlip(p)]`` as plannable data."""

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_p: float
    interpolation: str
    antialias: bool | None

    @classmethod
    def from_transform(cls, transform: Any) -> tuple[CropPlan, Any] | None:
        """``(plan, tail)`` of a Compose that starts with RandomResizedCrop, else None.

        ``tail`` is the rest of the pipeline after the crop (and flip): ToTensor,
        Normalize, ... .  Anything random in the tail makes it unplannable (None).
        """
        steps = list(getattr(transform, "transforms", []))
        if not steps or type(steps[0]) is not T.RandomResizedCrop:
            return None
        crop, rest = steps[0], steps[1:]
        flip_p = 0.0
        if rest and type(rest[0]) is T.RandomHorizontalFlip:
            flip_p, rest = float(rest[0].p), rest[1:]
        if any(type(s) not in (T.ToTensor, T.Normalize, T.PILToTensor, T.ConvertImageDtype)
               for s in rest):
            return None
        plan = cls(
            size=(int(crop.size[0]), int(crop.size[1])),
            scale=(float(crop.scale[0]), float(crop.scale[1])),
            ratio=(float(crop.ratio[0]), float(crop.ratio[1])),
            flip_p=flip_p,
            interpolation=str(crop.interpolation.value),
            antialias=crop.antialias,
        )
        return plan, T.Compose(rest)

    @classmethod
    def from_preset(cls, preset: Any) -> CropPlan | None:
        """The plan of a preset whose training transform is RandomResizedCrop (+flip)."""
        from figkd.data.transforms import get_preset

        spec = get_preset(preset)
        if getattr(spec, "fast_path", True):
            return None
        found = cls.from_transform(spec.train())
        return None if found is None else found[0]

    def epoch(self, sizes: Tensor, seed: int, epoch: int) -> Tensor:
        """``(N, 5)`` plan rows of ``epoch`` (1-based, as the trainer counts) for ``sizes``."""
        return sample_resized_crops(
            sizes, plan_generator(seed, epoch), self.scale, self.ratio, self.flip_p
        )

    def table(self, sizes: Tensor, seed: int, epochs: int) -> Tensor:
        """``(epochs, N, 5)``: the plans of epochs 1..``epochs``."""
        return torch.stack([self.epoch(sizes, seed, e) for e in range(1, epochs + 1)])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "planned_resized_crop",
            "version": PLAN_VERSION,
            "size": list(self.size),
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip_p": self.flip_p,
            "interpolation": self.interpolation,
            "antialias": self.antialias,
        }


class PlannedResizedCrop:
    """``resized_crop`` with given ``(top, left, height, width, flip)`` instead of drawn ones."""

    def __init__(self, plan: CropPlan) -> None:
        self.size = list(plan.size)
        self.interpolation = T.InterpolationMode(plan.interpolation)
        self.antialias = plan.antialias

    def __call__(self, image: Any, params: Tensor | tuple[int, ...]) -> Any:
        top, left, height, width, flip = (int(v) for v in params)
        out = TF.resized_crop(image, top, left, height, width, self.size,
                              interpolation=self.interpolation, antialias=self.antialias)
        return TF.hflip(out) if flip else out

    def __repr__(self) -> str:
        return f"PlannedResizedCrop(size={self.size}, interpolation={self.interpolation.value})"


class PlannedDataset(Dataset[Any]):
    """``dataset`` with its training crop replaced by the plan row of (epoch, index).

    ``dataset`` must offer ``raw_image(i)`` (the decoded image before any transform) and
    ``targets``; :meth:`set_epoch` selects the epoch's plan (computed on demand from
    the image sizes, so only one epoch's rows are held and sent to workers).
    """

    def __init__(self, dataset: Any, plan: CropPlan, tail: Any, seed: int,
                 sizes: Tensor | None = None) -> None:
        self.dataset, self.plan, self.tail, self.seed = dataset, plan, tail, int(seed)
        self.crop = PlannedResizedCrop(plan)
        self.targets = dataset.targets
        self.classes = getattr(dataset, "classes", None)
        self.sizes = image_sizes(dataset) if sizes is None else sizes
        self.current_epoch: int | None = None
        self.params: Tensor | None = None

    @classmethod
    def from_dataset(cls, dataset: Any, seed: int) -> PlannedDataset | None:
        """Wrap ``dataset`` (built with its preset's training transform), or None if unplannable."""
        found = CropPlan.from_transform(getattr(dataset, "transform", None))
        if found is None or not hasattr(dataset, "raw_image"):
            return None
        return cls(dataset, found[0], found[1], seed)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.current_epoch:
            self.params = self.plan.epoch(self.sizes, self.seed, epoch)
            self.current_epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if self.params is None:
            raise RuntimeError("PlannedDataset: call set_epoch(epoch) before reading items")
        image = self.crop(self.dataset.raw_image(index), self.params[index])
        return self.tail(image), int(self.targets[index])


# --------------------------------------------------------------------------- identity


def _samples(dataset: Any) -> list[tuple[str, int]] | None:
    samples = getattr(dataset, "samples", None)
    return None if samples is None else [(str(p), int(t)) for p, t in samples]


def image_sizes(dataset: Any) -> Tensor:
    """``(N, 2)`` (height, width) of every image: file headers when paths are known."""
    samples = _samples(dataset)
    out = torch.empty(len(dataset), 2, dtype=torch.long)
    for i in range(len(dataset)):
        if samples is not None:
            with Image.open(samples[i][0]) as image:  # header only, no decode
                width, height = image.size
        else:
            width, height = dataset.raw_image(i).size
        out[i, 0], out[i, 1] = height, width
    return out


def dataset_sha256(dataset: Any) -> str:
    """SHA-256 over the sample paths (relative to the dataset root) and labels, in order."""
    digest = hashlib.sha256()
    samples = _samples(dataset)
    root = getattr(dataset, "root", None)
    if samples is None:
        samples = [(str(i), int(t)) for i, t in enumerate(dataset.targets)]
    for path, label in samples:
        if root is not None:
            try:
                path = os.path.relpath(path, root)
            except ValueError:  # another drive (Windows)
                pass
        digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()
