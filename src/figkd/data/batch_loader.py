"""Batch-wise augmentation on a uint8 cache: the input fast path for small images.

Per-image PIL pipelines spend tens of Python calls per image; here a whole batch is
gathered from the in-memory uint8 tensor, rotated (PIL's nearest rule), cropped
with zero padding and flipped in one indexing op, then normalised - on whatever device
the cache lives on. The random parameters follow the per-image transforms'
distributions (uniform crop offsets in [0, 2*padding], flip with p = 0.5, angle
uniform in [-rotate, rotate]); with augmentation off the output equals the per-image
path's tensors exactly. Random numbers come from a CPU generator seeded by
``(seed, epoch)``, so order and augmentation are the same on every device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from figkd.data.batch_randaugment import BatchRandAugment
from figkd.data.cache import TensorImageCache
from figkd.data.transforms import Preset, SmallImagePreset, get_preset


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends on both ``seed`` and ``epoch`` (well mixed)."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    # torch's CPU mt19937 keeps only the seed's low 32 bits (state[1]); the fold is kept
    # as it is so that every recorded run's order stays reproducible
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def source_index(
    height: int,
    width: int,
    *,
    angle: torch.Tensor | None = None,
    top: torch.Tensor | None = None,
    left: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    padding: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """For each output pixel, the flat index of its source pixel in the image framed by a
    one-pixel black border, i.e. on the ``(H + 2) x (W + 2)`` grid (the border gives black).

    Composes, per image and in torchvision's order, ``RandomRotation`` (PIL's nearest
    rule: source = floor of the inverse-rotated pixel centre, black outside),
    ``RandomCrop(size, padding)`` with zero padding (``top``/``left`` in 0..2*padding) and
    a horizontal flip. Pure index arithmetic; the pixels then move in one gather.
    """
    batch = next(len(t) for t in (angle, top, left, flip) if t is not None)
    # Rows depend on (image, row) and columns on (image, column) until the rotation mixes
    # them, so flip and crop work on small (B, H, 1) / (B, 1, W) tensors.
    rows = torch.arange(height, device=device).view(1, height, 1).expand(batch, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width).expand(batch, 1, width)
    if flip is not None:
        cols = torch.where(flip.to(device).view(batch, 1, 1), width - 1 - cols, cols)
    if top is not None and left is not None:
        rows = rows + (top.to(device) - padding).view(batch, 1, 1)
        cols = cols + (left.to(device) - padding).view(batch, 1, 1)
    if angle is None:
        rows, cols = rows.clamp(-1, height), cols.clamp(-1, width)
        return (rows + 1) * (width + 2) + (cols + 1)
    # A pixel of the crop's zero padding is moved far outside, where rotating keeps it.
    far = 4 * (height + width)
    rows = torch.where((rows < 0) | (rows >= height), far, rows)
    cols = torch.where((cols < 0) | (cols >= width), far, cols)
    radians = angle.to(device, torch.float64).view(batch, 1, 1) * (math.pi / 180.0)
    cos, sin = torch.cos(radians).float(), torch.sin(radians).float()
    x = cols.float() + (0.5 - width / 2)
    y = rows.float() + (0.5 - height / 2)
    src_x = (cos * x + width / 2) - sin * y
    src_y = sin * x + (cos * y + height / 2)
    src_x = src_x.floor_().clamp_(-1, width).add_(1)
    src_y = src_y.floor_().clamp_(-1, height).add_(1)
    return src_y.mul_(width + 2).add_(src_x).long()  # exact: integers far below 2**24


def gather_pixels(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = framed[b, c].flat[index[b, i, j]]``, ``framed`` = images with a
    one-pixel zero border (see :func:`source_index`)."""
    batch, channels, height, width = images.shape
    framed = F.pad(images, (1, 1, 1, 1)).reshape(batch, channels, (height + 2) * (width + 2))
    index = index.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    return framed.gather(2, index).view(batch, channels, height, width)


def crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Batched ``RandomCrop(size, padding)`` + ``HorizontalFlip`` with given parameters."""
    _, _, height, width = images.shape
    index = source_index(height, width, top=top, left=left, flip=flip, padding=padding,
                         device=images.device)
    return gather_pixels(images, index)


def rotate_nearest(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle about the centre, as PIL's
    ``rotate(angle, NEAREST, fillcolor=0)`` does inside ``T.RandomRotation``."""
    _, _, height, width = images.shape
    return gather_pixels(images, source_index(height, width, angle=degrees, device=images.device))


class BatchAugment:
    """The batch version of a :class:`SmallImagePreset`'s train (or test) transform."""

    def __init__(self, preset: str | Preset, train: bool = True, scale: float = 255.0):
        spec = get_preset(preset)
        if not getattr(spec, "fast_path", False):
            raise ValueError(
                f"preset {spec.name!r} has no batch fast path (it is not a fixed-size preset); "
                "use a torch DataLoader with build_transforms() instead"
            )
        assert isinstance(spec, SmallImagePreset)
        self.spec = spec
        self.train = train
        self.scale = scale

    def sample(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw the random parameters of one batch, always on the CPU generator."""
        spec, params = self.spec, {}
        if self.train and spec.rotate:
            u = torch.rand(batch, generator=generator, dtype=torch.float64)
            params["angle"] = (u * 2.0 - 1.0) * spec.rotate
        if self.train and spec.padding:
            params["top"] = torch.randint(0, 2 * spec.padding + 1, (batch,), generator=generator)
            params["left"] = torch.randint(0, 2 * spec.padding + 1, (batch,), generator=generator)
        if self.train and spec.flip:
            params["flip"] = torch.rand(batch, generator=generator) < 0.5
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32, with the per-image path's arithmetic.

        Geometry is one uint8 gather; then ``float().div(scale)`` (``ToTensor``) and
        ``sub(mean).div(std)`` (``Normalize``), the same float ops in the same order.
        """
        return self.normalize(self.geometry(images, params), self.scale)

    def geometry(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rotation, crop and flip of a uint8 batch (unchanged when ``params`` is empty)."""
        if not params:
            return images
        _, _, height, width = images.shape
        index = source_index(height, width, padding=self.spec.padding, device=images.device,
                             **params)
        return gather_pixels(images, index)

    def normalize(self, images: torch.Tensor, scale: float) -> torch.Tensor:
        """uint8 -> ``float().div(scale)`` then the preset's ``Normalize``."""
        x = images.float().div_(scale)
        mean = torch.as_tensor(self.spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], generator))


class StrongBatchAugment:
    """The batch version of a :class:`SmallImagePreset`'s ``strong()`` transform (MLKD).

    Per image, as the per-image path composes it: the train geometry (its own draw, not
    the weak view's), RandAugment, Cutout, then ``ToTensor`` and ``Normalize``.  The
    RandAugment ops work on 0..255 pixels, so a cache of another ``scale`` (digits: 16)
    goes through uint8 first exactly as the per-image path's float tensors do.
    """

    def __init__(self, preset: str | SmallImagePreset, scale: float = 255.0) -> None:
        self.weak = BatchAugment(preset, train=True, scale=scale)
        self.spec = self.weak.spec
        self.scale = scale
        self.randaugment = BatchRandAugment(num_ops=2, max_magnitude=10, cutout=self.spec.cutout)

    def sample(self, batch: int, generator: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
        """Geometry, then RandAugment + Cutout parameters, from the CPU generator."""
        size = self.spec.size
        return {
            "geometry": self.weak.sample(batch, generator),
            "randaugment": self.randaugment.sample(batch, size, size, generator),
        }

    def apply(
        self, images: torch.Tensor, params: dict[str, dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        """uint8 (B, C, H, W) -> the normalised float32 strong view."""
        x = self.weak.geometry(images, params["geometry"])
        if self.scale != 255.0:  # the per-image RandAugment's float -> uint8 step
            x = x.float().div_(self.scale).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        x = self.randaugment.apply(x, params["randaugment"])
        return self.weak.normalize(x, 255.0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], generator))


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Temporarily use ``count`` torch intra-op threads (``None``: leave them alone)."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class GPUBatchLoader:
    """Iterate ``(images, labels)`` batches from a :class:`TensorImageCache` on ``device``.

    ``images`` are normalised float32 (B, C, H, W), ``labels`` int64; with ``views=2``
    ``images`` is a ``(weak, strong)`` pair (:class:`StrongBatchAugment`, for MLKD), the
    strong view's parameters drawn after the weak view's in each batch, so ``views=1``
    streams stay as they were. The cache is moved to
    ``device`` once; each epoch's order and augmentation come from
    ``epoch_generator(seed, epoch)``. ``epoch`` starts at 0 and advances after each full
    pass; ``set_epoch`` pins it (as with ``DistributedSampler``). With ``num_replicas > 1``
    each rank sees its own shard of a shared permutation (padded by wrap-around).

    On a CPU device the batch ops run on ``cpu_threads`` intra-op threads (default 1,
    restored after each batch): they are too small to gain from more, and on shared
    cores a parallel region waits for every descheduled thread, which measured 50x
    slower batches in the worst 10 % on our 2-core machine.
    """

    def __init__(
        self,
        cache: TensorImageCache,
        batch_size: int,
        preset: str | Preset,
        *,
        train: bool = True,
        device: torch.device | str = "cpu",
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        cpu_threads: int | None = 1,
        views: int = 1,
    ) -> None:
        self.augment = BatchAugment(preset, train=train, scale=cache.scale)
        spec = self.augment.spec
        if views not in (1, 2) or (views == 2 and not train):
            raise ValueError(
                f"views={views}: the loader makes 1 view, or 2 (weak, strong) when train=True"
            )
        self.views = views
        self.strong = StrongBatchAugment(spec, scale=cache.scale) if views == 2 else None
        if cache.image_size != (spec.size, spec.size):
            raise ValueError(
                f"cache images are {cache.image_size} but preset {spec.name!r} expects "
                f"{spec.size}x{spec.size}: build the cache with size={spec.size}"
            )
        if cache.images.shape[1] != len(spec.mean):
            raise ValueError(
                f"cache has {cache.images.shape[1]} channels, preset {spec.name!r} {len(spec.mean)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.device = torch.device(device)
        self.images = cache.images.to(self.device)
        self.targets = cache.targets.to(self.device)
        self.classes = cache.classes
        self.batch_size = batch_size
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.threads = cpu_threads if self.device.type == "cpu" else None
        #: True: yield ``(images, labels, params)``, ``params`` the batch's augmentation
        #: parameters (:meth:`BatchAugment.sample`; the teacher-logit cache indexes by them)
        self.return_params = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        return math.ceil(len(self.targets) / self.num_replicas)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        total = len(self.targets)
        order = torch.randperm(total, generator=generator) if self.shuffle else torch.arange(total)
        if self.num_replicas > 1:
            padded = self.num_samples * self.num_replicas
            order = torch.cat([order, order[: padded - total]])[self.rank :: self.num_replicas]
        return order

    def plan(self, epoch: int | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
        """``(sample indices, augmentation params)`` of each batch of ``epoch`` (default: the
        current one), on the CPU, without touching images: what ``__iter__`` will yield.
        With ``views=2`` the params are a ``(weak, strong)`` pair."""
        generator = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        order = self._order(generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            params = self.augment.sample(len(index), generator)
            if self.strong is not None:
                yield index, (params, self.strong.sample(len(index), generator))
            else:
                yield index, params

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """``(images, labels)``, or ``(images, labels, params)`` while ``return_params`` is set."""
        for index, params in self.plan():
            with intra_op_threads(self.threads):
                index = index.to(self.device)
                pixels = self.images.index_select(0, index)
                if self.strong is not None:
                    images: Any = (self.augment.apply(pixels, params[0]),
                                   self.strong.apply(pixels, params[1]))
                else:
                    images = self.augment.apply(pixels, params)
                labels = self.targets.index_select(0, index)
            yield (images, labels, params) if self.return_params else (images, labels)
        self.epoch += 1
