"""Batches for the trainer: the in-memory fast path or a torch DataLoader.

Both paths yield ``(images, targets, sample_index)`` and draw each epoch's order
from :func:`figkd.data.epoch_generator` ``(seed, epoch)``, so a resumed run sees
exactly the batches an uninterrupted one would.  On the DataLoader path each training
sample's random transform is seeded by ``(seed, epoch, index)``, so the result does not
depend on the worker count either.  Under DDP every rank takes a
strided shard of the same permutation (rank r gets positions r, r+W, ...), so
W processes with batch B/W see the same global batches as one with batch B.
Evaluation shards are strided without padding, so summed metrics are exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from figkd.config import Config
from figkd.data import (
    GPUBatchLoader,
    build_paired_transforms,
    build_transforms,
    build_uint8_cache,
    epoch_generator,
    get_dataset_info,
    get_preset,
    load_dataset,
)
from figkd.data.transforms import Preset
from figkd.engine.distributed import DistContext
from figkd.engine.seeding import worker_init_fn

Batch = tuple[Any, torch.Tensor, torch.Tensor]  # images (or (weak, strong)), targets, indices


class BatchSource(Protocol):
    """Batches of one split; ``epoch(e)`` is a pure function of ``e`` for training sources."""

    def epoch(self, epoch: int) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


@dataclass
class DataBundle:
    train: BatchSource
    val: BatchSource | None
    test: BatchSource
    num_classes: int
    in_channels: int
    train_size: int
    per_rank_batch: int
    fixed_train_inputs: bool  # no random augmentation: teacher logits may be cached
    path: str  # "fast" or "torch"
    train_eval: BatchSource | None = None  # unshuffled pass over train (teacher cache)


def _to_device(images: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(images, (tuple, list)):
        return tuple(_to_device(x, device, channels_last) for x in images)
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _channels_last(images: Any) -> Any:
    """A batch, or each view of a ``(weak, strong)`` pair, in channels-last layout."""
    if isinstance(images, tuple):
        return tuple(_channels_last(x) for x in images)
    return images.contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- fast path


class FastSource:
    """A :class:`GPUBatchLoader` over a uint8 cache whose "targets" are sample indices."""

    def __init__(
        self,
        cache: Any,
        batch_size: int,
        preset: str | Preset,
        *,
        train: bool,
        device: torch.device,
        seed: int,
        ctx: DistContext,
        channels_last: bool,
        max_steps: int | None,
        views: int = 1,
    ) -> None:
        self.targets = cache.targets.to(device)
        indexed = dataclasses.replace(cache, targets=torch.arange(len(cache.targets)))
        if not train and ctx.enabled:  # strided eval shard, no padding
            indexed = indexed.subset(range(ctx.rank, len(indexed), ctx.world_size))
        self.loader = GPUBatchLoader(
            indexed,
            batch_size,
            preset,
            train=train,
            device=device,
            seed=seed,
            num_replicas=ctx.world_size if train else 1,
            rank=ctx.rank if train else 0,
            views=views,
        )
        self.channels_last = channels_last
        self.max_steps = max_steps

    def __len__(self) -> int:
        n = len(self.loader)
        return min(n, self.max_steps) if self.max_steps else n

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for images, targets, index, _ in self.epoch_with_params(epoch):
            yield images, targets, index

    def plan(self, epoch: int) -> Iterator[tuple[torch.Tensor, Any]]:
        """``(sample indices, augmentation params)`` of the batches :meth:`epoch` will yield."""
        for step, item in enumerate(self.loader.plan(epoch)):
            if step >= len(self):
                break
            yield item

    def epoch_with_params(
        self, epoch: int
    ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor, Any]]:
        """Like :meth:`epoch`, plus each batch's augmentation parameters (crop offsets, flips)."""
        self.loader.set_epoch(epoch)
        self.loader.return_params = True
        try:
            for step, (images, index, params) in enumerate(self.loader):
                if step >= len(self):
                    break
                if self.channels_last:
                    images = _channels_last(images)
                yield images, self.targets[index], index, params
        finally:
            self.loader.return_params = False


# --------------------------------------------------------------------------- torch path


#: mixed into every per-sample augmentation seed, so it differs from the sampler's streams
_AUGMENT_STREAM = 0x6175676D


class _Indexed(Dataset[Any]):
    """``(image, target, index)`` items, so batches can be traced to samples.

    With ``seed`` set (training), an item's random transform draws from its own torch stream
    seeded by ``(seed, epoch, index)`` and leaves the process's RNG as it was.  The crops and
    flips then do not depend on ``data.num_workers`` or on which worker loads the item: with
    the global stream, 0 and 2 workers (or a resume that changed the count) trained
    different models.
    """

    def __init__(self, dataset: Any, seed: int | None = None) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        if self.seed is None:
            image, target = self.dataset[index]
            return image, target, index
        words = np.random.SeedSequence(
            [int(self.seed), int(self.epoch), int(index), _AUGMENT_STREAM]
        ).generate_state(2, dtype=np.uint32)
        with torch.random.fork_rng(devices=[]):
            # the CPU mt19937 uses the low word only (it keeps 32 bits of a seed)
            torch.manual_seed(int(words[0]) << 32 | int(words[1]))
            image, target = self.dataset[index]
        return image, target, index


class EpochSampler(Sampler[int]):
    """This rank's strided shard of the epoch's permutation (padded by wrap-around)."""

    def __init__(self, size: int, seed: int, ctx: DistContext, shuffle: bool) -> None:
        self.size, self.seed, self.ctx, self.shuffle = size, seed, ctx, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.size)
        if self.ctx.world_size > 1:
            padded = len(self) * self.ctx.world_size
            order = torch.cat([order, order[: padded - self.size]])[
                self.ctx.rank :: self.ctx.world_size
            ]
        return iter(order.tolist())


class TorchSource:
    """A DataLoader rebuilt per epoch with a generator seeded by (seed, epoch, rank)."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        train: bool,
        device: torch.device,
        seed: int,
        ctx: DistContext,
        num_workers: int,
        channels_last: bool,
        max_steps: int | None,
    ) -> None:
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.long)
        #: (rank, world size) of an evaluation shard: its positions map back to dataset
        #: indices as ``position * world + rank``, the indices FastSource yields
        self.stride: tuple[int, int] | None = None
        if not train and ctx.enabled:
            dataset = torch.utils.data.Subset(
                dataset, range(ctx.rank, len(dataset), ctx.world_size)
            )
            self.targets = self.targets[ctx.rank :: ctx.world_size]
            self.stride = (ctx.rank, ctx.world_size)
        self.dataset = _Indexed(dataset, seed if train else None)
        self.sampler = EpochSampler(
            len(self.dataset), seed, ctx if train else DistContext(), shuffle=train
        )
        self.batch_size, self.train, self.device = batch_size, train, device
        self.seed, self.rank, self.num_workers = seed, ctx.rank, num_workers
        self.channels_last, self.max_steps = channels_last, max_steps

    def __len__(self) -> int:
        n = len(self.sampler)
        n = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
        return min(n, self.max_steps) if self.max_steps else n

    def use_plan(self, planned: Any) -> None:
        """Train on a :class:`~figkd.data.planned_crop.PlannedDataset` (pre-sampled crops)."""
        self.dataset = _Indexed(planned, self.dataset.seed)

    def positions(self, epoch: int, rank: int, world_size: int) -> list[int]:
        """Sample indices rank ``rank`` of ``world_size`` trains on in ``epoch`` (no images)."""
        sampler = EpochSampler(self.sampler.size, self.seed,
                               DistContext(rank=rank, world_size=world_size), self.train)
        sampler.set_epoch(epoch)
        return list(sampler)[: len(self) * self.batch_size]

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)  # per-sample augmentation streams
        if hasattr(self.dataset.dataset, "set_epoch"):  # planned crops: this epoch's rows
            self.dataset.dataset.set_epoch(epoch)
        generator = epoch_generator(self.seed * 1000 + self.rank, epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=self.train,
            num_workers=self.num_workers,
            worker_init_fn=worker_init_fn,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        for step, (images, targets, index) in enumerate(loader):
            if step >= len(self):
                break
            if self.stride is not None:
                index = index * self.stride[1] + self.stride[0]
            yield (
                _to_device(images, self.device, self.channels_last),
                targets.to(self.device),
                index,
            )


# --------------------------------------------------------------------------- assembly


def _fixed_inputs(spec: Any) -> bool:
    """True when the preset's training transform has no randomness."""
    if not getattr(spec, "fast_path", False):
        return False
    return not (spec.rotate or spec.padding or spec.flip)


def _check_labels(
    dataset: str, root: str | None, split: str, targets: torch.Tensor, num_classes: int
) -> None:
    """Labels outside [0, classes) would train on garbage on the CPU (losses stop them only
    with validation on) and end in a device-side assert on CUDA: refuse them here."""
    if targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"the {split} split of {dataset!r} (data.root={root}) has labels in [{low}, {high}] "
            f"but {num_classes} classes: the copy is damaged or mixes two datasets; point "
            "data.root at a complete copy"
        )


def train_preset(cfg: Any) -> Preset:
    """The transform preset ``cfg`` trains with (``data.preset`` or the dataset's default)."""
    name = cfg.data.preset or get_dataset_info(cfg.data.dataset).default_preset
    if name is None:  # load_config refuses this; a hand-built Config may not have been checked
        raise ValueError(f"dataset {cfg.data.dataset!r} has no default preset: set data.preset")
    return get_preset(name)


def legacy_data_path(saved_loader: str, views: int, fast_path: bool) -> str:
    """The input path a run took before runs recorded it: ``data.loader`` as set, or what
    ``auto`` chose then (the fast path for one view of a fixed-size preset only)."""
    if saved_loader != "auto":
        return saved_loader
    return "fast" if fast_path and views == 1 else "torch"


def build_data(cfg: Config, ctx: DistContext, device: torch.device, views: int = 1) -> DataBundle:
    """Train / val / test batch sources for ``cfg`` on this rank."""
    d = cfg.data
    entry = get_dataset_info(d.dataset)
    spec = train_preset(cfg)
    if d.batch_size % ctx.world_size:
        raise ValueError(
            f"data.batch_size={d.batch_size} is the global batch and must divide evenly over "
            f"{ctx.world_size} processes"
        )
    per_rank = d.batch_size // ctx.world_size
    # Two views (MLKD's weak + strong) ride the fast path too: RandAugment on the GPU
    # instead of per image in DataLoader workers (MLKD took 4.8x KD's epoch time on one H200:
    # docs/results/short_tier_progress.md, session 2).
    use_fast = d.loader == "fast" or (d.loader == "auto" and spec.fast_path)
    if use_fast and not spec.fast_path:
        raise ValueError(
            f"data.loader=fast: preset {spec.name!r} is not a fixed-size preset; use "
            "data.loader=torch"
        )
    seed = cfg.train.seed
    cl = cfg.train.channels_last
    steps = cfg.train.max_steps_per_epoch
    splits = ["train", "test"] + (["val"] if d.val_fraction > 0 else [])
    common: dict[str, Any] = {"val_fraction": d.val_fraction, "val_seed": d.val_seed}

    sources: dict[str, Any] = {}
    if use_fast:
        size = spec.size if getattr(spec, "resize", False) else None
        caches = {
            s: build_uint8_cache(
                entry.name, d.root, s, size, num_workers=d.num_workers, **common, **d.args
            )
            for s in splits
        }
        for s in splits:
            sources[s] = FastSource(
                caches[s],
                per_rank if s == "train" else d.eval_batch_size,
                spec.name,
                train=s == "train",
                device=device,
                seed=seed,
                ctx=ctx,
                channels_last=cl,
                max_steps=steps if s == "train" else None,
                views=views if s == "train" else 1,
            )
        sources["train_eval"] = FastSource(
            caches["train"],
            d.eval_batch_size,
            spec.name,
            train=False,
            device=device,
            seed=seed,
            ctx=DistContext(),
            channels_last=cl,
            max_steps=None,
        )
        classes = caches["train"].classes
        train_size = len(caches["train"])
    else:
        train_tf = (
            build_paired_transforms(spec) if views == 2 else build_transforms(spec, train=True)
        )
        test_tf = build_transforms(spec, train=False)
        datasets = {
            s: load_dataset(
                entry.name, d.root, s, train_tf if s == "train" else test_tf, **common, **d.args
            )
            for s in splits
        }
        for s in splits:
            sources[s] = TorchSource(
                datasets[s],
                per_rank if s == "train" else d.eval_batch_size,
                train=s == "train",
                device=device,
                seed=seed,
                ctx=ctx,
                num_workers=d.num_workers,
                channels_last=cl,
                max_steps=steps if s == "train" else None,
            )
        if views == 1 and _fixed_inputs(spec):
            plain = load_dataset(entry.name, d.root, "train", test_tf, **common, **d.args)
            sources["train_eval"] = TorchSource(
                plain,
                d.eval_batch_size,
                train=False,
                device=device,
                seed=seed,
                ctx=DistContext(),
                num_workers=d.num_workers,
                channels_last=cl,
                max_steps=None,
            )
        classes = datasets["train"].classes
        train_size = len(datasets["train"])
    for split in splits:
        _check_labels(entry.name, d.root, split, sources[split].targets, len(classes))
    if len(sources["train"]) == 0:  # drop_last: fewer training images than one batch
        raise ValueError(
            f"the training split of {entry.name!r} has {train_size} images (after holding out "
            f"data.val_fraction={d.val_fraction}), fewer than one batch of "
            f"data.batch_size={d.batch_size}, and incomplete batches are dropped: lower "
            "data.batch_size or use more training images"
        )
    return DataBundle(
        train=sources["train"],
        val=sources.get("val"),
        test=sources["test"],
        num_classes=len(classes),
        in_channels=len(spec.mean),
        train_size=train_size,
        per_rank_batch=per_rank,
        fixed_train_inputs=views == 1 and _fixed_inputs(spec),
        path="fast" if use_fast else "torch",
        train_eval=sources.get("train_eval"),
    )
