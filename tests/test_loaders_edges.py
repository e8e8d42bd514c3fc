"""Which image, label and augmentation reach each step: loader paths the other tests miss.

A mutation audit of ``data/batch_loader.py``, ``engine/data.py``, ``data/cache.py`` and
``engine/planned_cache.py`` showed gaps in what the tests pin: the exact order of an epoch,
its DDP shards, ``drop_last``, the per-sample augmentation streams, the label check and the
splits.  A wrong index or seed there silently changes every accuracy the study reports.

Most images here carry their own sample index in every pixel, so a test reads back which
sample arrived in which batch and compares it with an order worked out in plain Python from
the documented rule: an epoch's permutation is ``torch.randperm`` on a generator seeded by
NumPy's ``SeedSequence([seed, epoch])``; rank r of W takes positions r, r + W, ... of it,
padded by wrap-around.  Pixels that move are checked against torchvision's per-image ops.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import digits_config
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from figkd.config import config_from_dict
from figkd.data import (
    GPUBatchLoader,
    TensorImageCache,
    build_uint8_cache,
    decode_to_uint8,
    load_dataset,
)
from figkd.data import cache as cache_module
from figkd.data.batch_loader import BatchAugment, intra_op_threads
from figkd.data.cache import default_cache_dir
from figkd.data.planned_crop import PlannedDataset
from figkd.data.synthetic import write_fake_image_folder, write_fake_tiny_imagenet
from figkd.data.transforms import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    LargeImagePreset,
    SmallImagePreset,
    build_transforms,
    get_preset,
    register_preset,
)
from figkd.engine.data import (
    EpochSampler,
    FastSource,
    TorchSource,
    _check_labels,
    build_data,
)
from figkd.engine.distributed import DistContext
from figkd.engine.planned_cache import (
    PlannedLogitCache,
    load_or_build_planned,
    resolve_planned_cache,
)
from figkd.engine.teacher_cache import CacheKeyMismatchError, cache_key
from figkd.models import create_model

# 4x4 grey images, mean 0 and std 1 with scale 1: the loader's output is the stored byte
PLAIN = SmallImagePreset("test-plain-4", 4, (0.0,), (1.0,), flip=False)
# 6x6 grey images with RandomCrop(6, padding=2) + HFlip
CROP_FLIP = SmallImagePreset("test-crop-flip-6", 6, (0.0,), (1.0,), padding=2)


def label_of(index: int) -> int:
    """One of 5 labels, different for neighbouring samples, so a shifted index is caught."""
    return (3 * index + 1) % 5


def index_cache(count: int, size: int = 4) -> TensorImageCache:
    """Sample i is an image whose every pixel is i (i < 256), labelled ``label_of(i)``."""
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1)
    images = images.expand(count, 1, size, size).contiguous()
    targets = torch.tensor([label_of(i) for i in range(count)])
    return TensorImageCache(images, targets, [str(c) for c in range(5)], scale=1.0)


def reference_generator(seed: int, epoch: int) -> torch.Generator:
    """The documented per-epoch stream: two words of NumPy's SeedSequence([seed, epoch])."""
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 32) | int(words[1]))


def reference_shard(count: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s positions of the epoch's permutation, padded by wrap-around."""
    order = torch.randperm(count, generator=reference_generator(seed, epoch)).tolist()
    per_rank = -(-count // world)
    order = order + order[: per_rank * world - count]
    return order[rank::world]


def reference_batches(order: list[int], batch: int, drop_last: bool) -> list[list[int]]:
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
    return [c for c in chunks if len(c) == batch] if drop_last else chunks


def read_indices(images: torch.Tensor) -> list[int]:
    """The sample index each image of a PLAIN batch carries (all its pixels agree)."""
    flat = images.flatten(1)
    assert torch.equal(flat, flat[:, :1].expand_as(flat))
    return [int(v) for v in flat[:, 0].tolist()]


def loader_batches(loader: GPUBatchLoader) -> list[list[int]]:
    batches = []
    for images, labels in loader:
        index = read_indices(images)
        assert labels.tolist() == [label_of(i) for i in index]  # each label with its image
        batches.append(index)
    return batches


# --------------------------------------------------------------------------- batch loader


def test_training_epochs_follow_the_seeded_permutation_and_drop_the_ragged_batch() -> None:
    """Epoch e trains on randperm(N) of the (seed, epoch) stream, in full batches only; the
    epoch counter advances after each pass and ``set_epoch`` pins it (as a resume does)."""
    loader = GPUBatchLoader(index_cache(30), 7, PLAIN, seed=11)
    for epoch in (0, 1):
        want = reference_batches(reference_shard(30, 11, epoch, 0, 1), 7, drop_last=True)
        assert len(want) == 4 and len(loader) == 4
        assert loader_batches(loader) == want
    assert loader.epoch == 2
    loader.set_epoch(1)
    assert loader_batches(loader) == reference_batches(reference_shard(30, 11, 1, 0, 1), 7, True)
    # the default seed is 0
    default = GPUBatchLoader(index_cache(30), 7, PLAIN)
    assert loader_batches(default) == reference_batches(reference_shard(30, 0, 0, 0, 1), 7, True)


def test_evaluation_is_in_order_with_the_ragged_last_batch_kept() -> None:
    loader = GPUBatchLoader(index_cache(30), 7, PLAIN, train=False, seed=11)
    assert len(loader) == 5
    assert loader_batches(loader) == [list(range(i, min(i + 7, 30))) for i in range(0, 30, 7)]


def test_shuffle_and_drop_last_can_be_set_apart_from_train() -> None:
    unshuffled = GPUBatchLoader(index_cache(10), 4, PLAIN, train=True, shuffle=False,
                                drop_last=False)
    assert len(unshuffled) == 3
    assert loader_batches(unshuffled) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = GPUBatchLoader(index_cache(10), 4, PLAIN, train=False, shuffle=True,
                              drop_last=True, seed=2)
    assert loader_batches(shuffled) == reference_batches(reference_shard(10, 2, 0, 0, 1), 4, True)


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_takes_its_strided_shard_padded_by_wrap_around(world: int) -> None:
    """31 samples over 2 or 3 ranks: every rank sees ceil(31 / W) samples of the same
    permutation, the shortfall taken again from its start."""
    count, batch = 31, 4
    for drop_last in (True, False):
        for rank in range(world):
            loader = GPUBatchLoader(index_cache(count), batch, PLAIN, seed=5, drop_last=drop_last,
                                    num_replicas=world, rank=rank)
            order = reference_shard(count, 5, 0, rank, world)
            assert loader.num_samples == len(order) == math.ceil(count / world)
            want = reference_batches(order, batch, drop_last)
            assert len(loader) == len(want)
            assert loader_batches(loader) == want


def test_plan_of_another_epoch_leaves_the_current_one_alone() -> None:
    loader = GPUBatchLoader(index_cache(12), 5, PLAIN, seed=3)
    planned = [index.tolist() for index, _ in loader.plan(2)]
    assert planned == reference_batches(reference_shard(12, 3, 2, 0, 1), 5, True)
    assert loader.epoch == 0
    assert [index.tolist() for index, _ in loader.plan()] == reference_batches(
        reference_shard(12, 3, 0, 0, 1), 5, True)


def _asymmetric_cache(count: int, size: int) -> tuple[TensorImageCache, list[Image.Image]]:
    rng = np.random.default_rng(7)
    arrays = rng.integers(1, 256, (count, size, size), dtype=np.uint8)
    images = torch.from_numpy(arrays).unsqueeze(1)
    targets = torch.tensor([label_of(i) for i in range(count)])
    cache = TensorImageCache(images, targets, [str(c) for c in range(5)], scale=1.0)
    return cache, [Image.fromarray(a) for a in arrays]


def test_crop_and_flip_parameters_come_from_the_epoch_stream_after_the_order() -> None:
    """The loader draws the permutation, then per batch ``top``, ``left`` (0..2p) and the
    flips (p = 0.5) from the same (seed, epoch) stream; ``return_params`` hands them out
    and the pixels equal torchvision's pad + crop + hflip with those parameters."""
    count, batch, padding = 9, 4, 2
    cache, pil = _asymmetric_cache(count, 6)
    loader = GPUBatchLoader(cache, batch, CROP_FLIP, seed=4)
    loader.return_params = True
    stream = reference_generator(4, 0)
    order = torch.randperm(count, generator=stream).tolist()
    batches = list(loader)
    assert len(batches) == 2
    for step, (images, labels, params) in enumerate(batches):
        index = order[step * batch : (step + 1) * batch]
        top = torch.randint(0, 2 * padding + 1, (batch,), generator=stream)
        left = torch.randint(0, 2 * padding + 1, (batch,), generator=stream)
        flip = torch.rand(batch, generator=stream) < 0.5
        assert torch.equal(params["top"], top) and torch.equal(params["left"], left)
        assert torch.equal(params["flip"], flip)
        assert labels.tolist() == [label_of(i) for i in index]
        for k, i in enumerate(index):
            ref = TF.crop(TF.pad(pil[i], padding), int(top[k]), int(left[k]), 6, 6)
            ref = TF.hflip(ref) if flip[k] else ref
            want = torch.from_numpy(np.asarray(ref, dtype=np.float32).copy())
            assert torch.equal(images[k, 0], want), (step, k)


def test_batch_augment_call_draws_one_crop_and_flip_per_image() -> None:
    """Three one-channel images: the call must draw three sets of parameters (one per
    image, not per channel) and apply them like torchvision's pad + crop + hflip."""
    cache, pil = _asymmetric_cache(3, 6)
    out = BatchAugment(CROP_FLIP, train=True, scale=1.0)(cache.images,
                                                         torch.Generator().manual_seed(9))
    stream = torch.Generator().manual_seed(9)
    top, left = (torch.randint(0, 5, (3,), generator=stream) for _ in range(2))
    flip = torch.rand(3, generator=stream) < 0.5
    for k in range(3):
        ref = TF.crop(TF.pad(pil[k], 2), int(top[k]), int(left[k]), 6, 6)
        ref = TF.hflip(ref) if flip[k] else ref
        assert torch.equal(out[k, 0], torch.from_numpy(np.asarray(ref, dtype=np.float32).copy()))


def test_evaluation_batches_are_neither_cropped_nor_flipped() -> None:
    """A preset with crop and flip must still give the plain images in evaluation."""
    cache, _ = _asymmetric_cache(6, 6)
    images, labels = next(iter(GPUBatchLoader(cache, 6, CROP_FLIP, train=False)))
    assert torch.equal(images, cache.images.float())
    assert labels.tolist() == [label_of(i) for i in range(6)]


def test_batch_augment_defaults_to_to_tensor_scale() -> None:
    """``BatchAugment`` used on its own divides by 255 like ``ToTensor``."""
    rng = np.random.default_rng(3)
    arrays = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    batch = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    out = BatchAugment("cifar", train=False).apply(batch, {})
    for k, array in enumerate(arrays):
        want = TF.normalize(TF.to_tensor(Image.fromarray(array)), CIFAR100_MEAN, CIFAR100_STD)
        torch.testing.assert_close(out[k], want, rtol=0, atol=1e-6)


def test_loader_arguments_are_checked_at_their_bounds() -> None:
    cache = index_cache(6)
    assert len(GPUBatchLoader(cache, 1, PLAIN, train=False)) == 6  # batch size 1 is valid
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        GPUBatchLoader(cache, 0, PLAIN)
    assert GPUBatchLoader(cache, 2, PLAIN, num_replicas=2, rank=1).rank == 1
    for rank in (-1, 2):
        with pytest.raises(ValueError, match=r"rank .* is not in \[0, 2\)"):
            GPUBatchLoader(cache, 2, PLAIN, num_replicas=2, rank=rank)
    rgb = TensorImageCache(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2).long(),
                           ["a"])
    with pytest.raises(ValueError, match="cache has 3 channels"):
        GPUBatchLoader(rgb, 2, PLAIN)
    wide = TensorImageCache(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), torch.zeros(2).long(),
                            ["a"])
    with pytest.raises(ValueError, match=r"cache images are \(4, 5\)"):
        GPUBatchLoader(wide, 2, PLAIN)


def test_intra_op_threads_sets_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    try:
        with intra_op_threads(other):
            assert torch.get_num_threads() == other
        assert torch.get_num_threads() == before
        with intra_op_threads(None):
            assert torch.get_num_threads() == before
        with intra_op_threads(before):
            assert torch.get_num_threads() == before
        with pytest.raises(RuntimeError, match="inside"), intra_op_threads(other):
            raise RuntimeError("inside")
        assert torch.get_num_threads() == before  # restored on the way out of an error
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- engine sources


class CountedSamples(Dataset):
    """Sample i is ``[i, u]``, ``u`` one draw of the global torch RNG (a random transform's
    stand-in), labelled ``label_of(i)``."""

    def __init__(self, count: int) -> None:
        self.targets = [label_of(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index), float(torch.rand(()))]), self.targets[index]


def reference_sample_draw(seed: int, epoch: int, index: int) -> float:
    """The documented per-sample stream: SeedSequence([seed, epoch, index, 0x6175676D])."""
    words = np.random.SeedSequence([seed, epoch, index, 0x6175676D]).generate_state(
        2, dtype=np.uint32)
    generator = torch.Generator().manual_seed((int(words[0]) << 32) | int(words[1]))
    return float(torch.rand((), generator=generator))


def torch_source(count: int, batch: int, *, train: bool, rank: int = 0, world: int = 1,
                 seed: int = 6, max_steps: int | None = None) -> TorchSource:
    return TorchSource(CountedSamples(count), batch, train=train, device=torch.device("cpu"),
                       seed=seed, ctx=DistContext(rank=rank, world_size=world), num_workers=0,
                       channels_last=False, max_steps=max_steps)


def fast_source(count: int, batch: int, *, train: bool, rank: int = 0, world: int = 1,
                seed: int = 6, max_steps: int | None = None) -> FastSource:
    # FastSource hands the preset to GPUBatchLoader, which takes a Preset object as well as a
    # registered name; FastSource's own annotation names only str
    return FastSource(index_cache(count), batch, PLAIN,
                      train=train, device=torch.device("cpu"),
                      seed=seed, ctx=DistContext(rank=rank, world_size=world),
                      channels_last=False, max_steps=max_steps)


@pytest.mark.parametrize("rank", [0, 1])
def test_torch_source_trains_on_the_rank_shard_with_per_sample_streams(rank: int) -> None:
    """31 samples, 2 ranks, per-rank batch 4: ceil(31 / 2) = 16 positions a rank, 4 full
    batches; each sample's random draw comes from its own (seed, epoch, index) stream."""
    source = torch_source(31, 4, train=True, rank=rank, world=2)
    assert len(source) == 4
    rng = torch.get_rng_state()
    for epoch in (1, 2):
        want = reference_batches(reference_shard(31, 6, epoch, rank, 2), 4, drop_last=True)
        got = list(source.epoch(epoch))
        assert [index.tolist() for _, _, index in got] == want
        for (images, targets, index), batch in zip(got, want):
            assert images[:, 0].tolist() == batch
            assert targets.tolist() == [label_of(i) for i in batch]
            draws = [reference_sample_draw(6, epoch, i) for i in batch]
            assert images[:, 1].tolist() == draws
        assert source.positions(epoch, rank, 2) == [i for batch in want for i in batch]
    assert torch.equal(torch.get_rng_state(), rng)  # the process's stream is left alone
    capped = torch_source(31, 4, train=True, rank=rank, world=2, max_steps=3)
    assert len(capped) == 3 and len(list(capped.epoch(1))) == 3


def test_torch_source_evaluates_a_strided_shard_without_padding() -> None:
    """Rank 1 of 2 evaluates samples 1, 3, ..., 9 of 11 in order, the last batch ragged,
    and names them by dataset index as FastSource does (not by position in the shard)."""
    source = torch_source(11, 4, train=False, rank=1, world=2)
    assert source.targets.tolist() == [label_of(i) for i in (1, 3, 5, 7, 9)]
    assert len(source) == 2
    batches = list(source.epoch(3))
    assert [images[:, 0].tolist() for images, _, _ in batches] == [[1, 3, 5, 7], [9]]
    assert [index.tolist() for _, _, index in batches] == [[1, 3, 5, 7], [9]]
    third = torch_source(11, 4, train=False, rank=2, world=3)
    assert [index.tolist() for _, _, index in third.epoch(0)] == [[2, 5, 8]]
    assert [images[:, 0].tolist() for images, _, _ in third.epoch(0)] == [[2, 5, 8]]
    assert [targets.tolist() for _, targets, _ in batches] == [
        [label_of(i) for i in (1, 3, 5, 7)], [label_of(9)]]
    single = torch_source(10, 4, train=False)
    assert len(single) == 3
    assert [index.tolist() for _, _, index in single.epoch(0)] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                  [8, 9]]


def test_epoch_sampler_pads_an_unshuffled_order_by_wrap_around() -> None:
    sampler = EpochSampler(7, 0, DistContext(rank=2, world_size=3), shuffle=False)
    assert len(sampler) == 3 and list(sampler) == [2, 5, 1]  # 0..6 then 0, 1 again
    fresh = EpochSampler(7, 4, DistContext(), shuffle=True)  # epoch 0 until set_epoch
    assert list(fresh) == reference_shard(7, 4, 0, 0, 1)


@pytest.mark.parametrize("rank", [0, 1])
def test_fast_source_trains_on_the_rank_shard_and_caps_its_steps(rank: int) -> None:
    source = fast_source(31, 4, train=True, rank=rank, world=2)
    assert len(source) == 4
    for epoch in (0, 3):
        want = reference_batches(reference_shard(31, 6, epoch, rank, 2), 4, drop_last=True)
        got = list(source.epoch(epoch))
        assert [index.tolist() for _, _, index in got] == want
        assert [read_indices(images) for images, _, _ in got] == want
        assert [t.tolist() for _, t, _ in got] == [[label_of(i) for i in b] for b in want]
        assert [index.tolist() for index, _ in source.plan(epoch)] == want
    capped = fast_source(31, 4, train=True, rank=rank, world=2, max_steps=3)
    assert len(capped) == 3
    assert len(list(capped.epoch(0))) == 3 and len(list(capped.plan(0))) == 3
    # epoch_with_params hands the loader back in its plain (images, labels) mode
    assert not capped.loader.return_params


def test_fast_source_evaluates_a_strided_shard_by_original_index() -> None:
    source = fast_source(11, 4, train=False, rank=1, world=2)
    assert len(source) == 2
    batches = list(source.epoch(0))
    assert [index.tolist() for _, _, index in batches] == [[1, 3, 5, 7], [9]]
    assert [read_indices(images) for images, _, _ in batches] == [[1, 3, 5, 7], [9]]
    assert [t.tolist() for _, t, _ in batches] == [[label_of(i) for i in (1, 3, 5, 7)],
                                                   [label_of(9)]]
    single = fast_source(10, 4, train=False)
    assert [index.tolist() for _, _, index in single.epoch(0)] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                  [8, 9]]


def test_label_check_accepts_exactly_zero_to_classes_minus_one() -> None:
    _check_labels("d", None, "train", torch.tensor([0, 4, 2]), 5)
    _check_labels("d", None, "train", torch.tensor([], dtype=torch.long), 5)
    for bad, low, high in (([0, 5], 0, 5), ([-1, 3], -1, 3)):
        with pytest.raises(ValueError, match=rf"labels in \[{low}, {high}\] but 5 classes"):
            _check_labels("d", None, "train", torch.tensor(bad), 5)


# --------------------------------------------------------------------------- uint8 cache


class PilImages:
    """A minimal dataset: ``raw_image`` gives PIL images made from the given arrays."""

    samples: list[tuple[str, int]]  # only set by a test that makes it look file-backed

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.classes = ["a"]
        self.targets = [0] * len(arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def raw_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.arrays[index])


def test_decode_keeps_rows_columns_and_channels_of_grey_and_colour_images() -> None:
    """Non-square images so a swapped axis shows; grey images get one channel."""
    rng = np.random.default_rng(5)
    grey = [rng.integers(0, 256, (5, 7), dtype=np.uint8) for _ in range(3)]
    out = decode_to_uint8(PilImages(grey))
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(np.stack(grey))[:, None])
    colour = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    out = decode_to_uint8(PilImages(colour))
    assert torch.equal(out, torch.from_numpy(np.stack(colour)).permute(0, 3, 1, 2))


def test_decode_refuses_an_empty_dataset_and_names_the_odd_image() -> None:
    with pytest.raises(ValueError, match="empty"):
        decode_to_uint8(PilImages([]))
    sizes = [(4, 4), (4, 4), (4, 6)]
    odd = PilImages([np.zeros(s, dtype=np.uint8) for s in sizes])
    with pytest.raises(ValueError, match=r"index 2 is \(4, 6\) but earlier images are \(4, 4\)"):
        decode_to_uint8(odd)
    odd.samples = [(f"/data/img{k}.png", 0) for k in range(3)]  # a file-backed dataset
    with pytest.raises(ValueError, match=r"^/data/img2.png is \(4, 6\)"):
        decode_to_uint8(odd)


def test_decode_takes_datasets_held_as_uint8_as_they_are() -> None:
    """digits keeps 0..16 values in memory: decoding returns them for its own size and
    refuses to resize tensors."""
    digits = load_dataset("digits")
    want = torch.stack([(digits.raw_image(i) * 16).round().to(torch.uint8) for i in range(1438)])
    assert torch.equal(decode_to_uint8(digits), want)
    assert torch.equal(decode_to_uint8(digits, 8), want)
    with pytest.raises(ValueError, match="holds tensors; it cannot be resized"):
        decode_to_uint8(digits, 4)


def test_cache_checks_its_tensors_and_reports_a_non_square_size() -> None:
    targets = torch.zeros(2, dtype=torch.long)
    for images in (torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"images must be uint8 \(N, C, H, W\)"):
            TensorImageCache(images, targets, ["a"])
    with pytest.raises(ValueError, match="differ in length"):
        TensorImageCache(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), targets, ["a"])
    cache = TensorImageCache(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), targets, ["a"],
                             split="train")
    assert cache.image_size == (4, 5) and cache.scale == 255.0
    assert cache.subset([1], "val").split == "val" and cache.subset([1]).split == "train"


def test_a_format_1_file_loads_and_another_format_is_refused(tmp_path: Path) -> None:
    """Files written by earlier runs (format 1) must keep loading; others are refused."""
    images = torch.arange(8, dtype=torch.uint8).view(2, 1, 2, 2)
    state = {"format": 1, "images": images, "targets": torch.tensor([1, 0]),
             "classes": ["a", "b"], "scale": 16.0, "name": "digits", "split": "test"}
    torch.save(state, tmp_path / "one.pt")
    cache = TensorImageCache.load(tmp_path / "one.pt")
    assert torch.equal(cache.images, images) and cache.targets.tolist() == [1, 0]
    assert (cache.classes, cache.scale, cache.split) == (["a", "b"], 16.0, "test")
    torch.save({**state, "format": 2}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="cache format 2 != 1"):
        TensorImageCache.load(tmp_path / "two.pt")
    # saving makes missing folders and may replace an earlier file
    target = tmp_path / "a" / "b" / "c.pt"
    cache.save(target)
    cache.save(target)
    assert torch.equal(TensorImageCache.load(target).images, images)


def test_default_cache_dir_prefers_figkd_cache_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FIGKD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "figkd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "figkd"


def test_in_memory_datasets_split_like_load_dataset() -> None:
    """digits is held as uint8 already: no file; its val carve equals ``load_dataset``'s, the
    train part is the rest, and the test split ignores ``val_fraction``."""
    whole = build_uint8_cache("digits", size=8)
    assert whole.path is None and len(whole) == 1438 and whole.scale == 16.0
    val = build_uint8_cache("digits", split="val", val_fraction=0.2, val_seed=1)
    train = build_uint8_cache("digits", split="train", val_fraction=0.2, val_seed=1)
    reference = load_dataset("digits", split="val", val_fraction=0.2, val_seed=1)
    assert val.targets.tolist() == list(reference.targets) and val.split == "val"
    assert len(train) + len(val) == 1438 and train.split == "train"
    pixels = {x.numpy().tobytes() for x in whole.images}
    assert len(pixels) == 1438  # every digit image is distinct, so images identify samples
    seen = {x.numpy().tobytes() for x in torch.cat([train.images, val.images])}
    assert seen == pixels  # together the two parts are the whole training set, once each
    default_seed = build_uint8_cache("digits", split="val", val_fraction=0.2)
    per_image = load_dataset("digits", split="val", val_fraction=0.2)  # both default to seed 0
    assert default_seed.targets.tolist() == list(per_image.targets)
    test = build_uint8_cache("digits", split="test", val_fraction=0.2)
    assert len(test) == 359 and test.split == "test"
    with pytest.raises(ValueError, match="unknown split"):
        build_uint8_cache("digits", split="dev")
    with pytest.raises(ValueError, match="needs val_fraction > 0"):
        build_uint8_cache("digits", split="val")


# --------------------------------------------------------------------------- build_data


def test_build_data_shards_the_global_batch_and_caps_only_training(tmp_path: Path) -> None:
    """Rank 1 of 2 with data.batch_size=64 trains on batches of 32 of its shard, capped at
    max_steps_per_epoch; it evaluates its strided test shard, uncapped, in batches of
    eval_batch_size; the teacher-cache pass over train is whole and in order."""
    cfg = digits_config(tmp_path, "ddp", data={"batch_size": 64, "eval_batch_size": 100,
                                               "val_fraction": 0.0},
                        train={"max_steps_per_epoch": 2, "seed": 3})
    bundle = build_data(cfg, DistContext(rank=1, world_size=2), torch.device("cpu"))
    assert bundle.path == "fast" and bundle.per_rank_batch == 32 and bundle.val is None
    assert (bundle.num_classes, bundle.in_channels, bundle.train_size) == (10, 1, 1438)
    assert bundle.fixed_train_inputs  # digits trains without augmentation
    assert len(bundle.train) == 2
    train = [index.tolist() for _, _, index in bundle.train.epoch(0)]
    assert train == reference_batches(reference_shard(1438, 3, 0, 1, 2), 32, True)[:2]
    test_labels = list(load_dataset("digits", split="test").targets)
    batches = list(bundle.test.epoch(0))
    assert [len(index) for _, _, index in batches] == [100, 79]  # 179 of 359, uncapped
    assert torch.cat([index for _, _, index in batches]).tolist() == list(range(1, 359, 2))
    assert torch.cat([t for _, t, _ in batches]).tolist() == test_labels[1::2]
    assert bundle.train_eval is not None and len(bundle.train_eval) == 15
    whole = torch.cat([index for _, _, index in bundle.train_eval.epoch(0)])
    assert whole.tolist() == list(range(1438))


def test_build_data_refuses_a_global_batch_the_ranks_cannot_share(tmp_path: Path) -> None:
    cfg = digits_config(tmp_path, "odd", data={"batch_size": 10, "val_fraction": 0.0})
    with pytest.raises(ValueError, match="must divide evenly over 3 processes"):
        build_data(cfg, DistContext(rank=0, world_size=3), torch.device("cpu"))
    pair = build_data(cfg, DistContext(rank=0, world_size=2), torch.device("cpu"))
    assert pair.per_rank_batch == 5


def test_build_data_torch_path_with_a_validation_split(tmp_path: Path) -> None:
    """The DataLoader path: max_steps_per_epoch=1 caps training only; the val split is the
    one ``load_dataset`` carves, evaluated whole in batches of eval_batch_size."""
    cfg = digits_config(tmp_path, "torch", data={"loader": "torch", "batch_size": 64,
                                                 "eval_batch_size": 100, "val_fraction": 0.1,
                                                 "val_seed": 2},
                        train={"max_steps_per_epoch": 1})
    bundle = build_data(cfg, DistContext(), torch.device("cpu"))
    reference = load_dataset("digits", split="val", val_fraction=0.1, val_seed=2)
    assert bundle.path == "torch" and bundle.val is not None and bundle.fixed_train_inputs
    assert isinstance(bundle.val, TorchSource)
    assert bundle.val.targets.tolist() == list(reference.targets)
    assert [len(index) for _, _, index in bundle.val.epoch(0)] == [100, len(reference) - 100]
    train_size = 1438 - len(reference)
    assert bundle.train_size == train_size and len(bundle.train) == 1
    assert [len(index) for _, _, index in bundle.train.epoch(0)] == [64]
    assert bundle.train_eval is not None
    whole = torch.cat([index for _, _, index in bundle.train_eval.epoch(0)])
    assert whole.tolist() == list(range(train_size))


def test_build_data_torch_path_transforms_each_split_with_its_own_pipeline(
    tmp_path: Path, fake_cifar100: Path
) -> None:
    """CIFAR on the DataLoader path: test images are ToTensor + Normalize of the file's
    pixels; a training image is the per-image RandomCrop + HFlip run on the stream seeded by
    (seed, epoch, index), so it does not depend on the worker that loads it."""
    cfg = digits_config(tmp_path, "cifar", data={"dataset": "cifar100",
                                                 "root": str(fake_cifar100), "loader": "torch",
                                                 "batch_size": 8, "eval_batch_size": 16,
                                                 "val_fraction": 0.0},
                        train={"seed": 2, "max_steps_per_epoch": None})
    bundle = build_data(cfg, DistContext(), torch.device("cpu"))
    assert bundle.path == "torch" and not bundle.fixed_train_inputs
    assert bundle.train_eval is None  # augmented inputs: no fixed teacher logits
    test_set = load_dataset("cifar100", fake_cifar100, "test")
    images, targets, index = next(iter(bundle.test.epoch(0)))
    assert index.tolist() == list(range(16))
    for k in range(16):
        want = TF.normalize(TF.to_tensor(test_set.raw_image(k)), CIFAR100_MEAN, CIFAR100_STD)
        torch.testing.assert_close(images[k], want, rtol=0, atol=1e-6)
    assert targets.tolist() == list(test_set.targets[:16])
    train_set = load_dataset("cifar100", fake_cifar100, "train")
    transform = build_transforms("cifar", train=True)
    images, targets, index = next(iter(bundle.train.epoch(3)))
    assert index.tolist() == reference_shard(len(train_set), 2, 3, 0, 1)[:8]
    for k, i in enumerate(index.tolist()):
        words = np.random.SeedSequence([2, 3, i, 0x6175676D]).generate_state(2, dtype=np.uint32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((int(words[0]) << 32) | int(words[1]))
            want = transform(train_set.raw_image(i))
        torch.testing.assert_close(images[k], want, rtol=0, atol=0)
        assert int(targets[k]) == train_set.targets[i]


def test_build_data_names_what_the_fast_path_cannot_do(tmp_path: Path) -> None:
    large = digits_config(tmp_path, "large", data={"loader": "fast", "preset": "fine-grained-224"})
    with pytest.raises(ValueError, match="is not a fixed-size preset; use data.loader=torch"):
        build_data(large, DistContext(), torch.device("cpu"))


@pytest.mark.parametrize(("loader", "path"), [("auto", "fast"), ("fast", "fast"),
                                              ("torch", "torch")])
def test_both_paths_make_paired_views(tmp_path: Path, loader: str, path: str) -> None:
    """Two views ride the fast path unless data.loader=torch asks for the DataLoader."""
    cfg = digits_config(tmp_path, loader, data={"loader": loader, "val_fraction": 0.0})
    paired = build_data(cfg, DistContext(), torch.device("cpu"), views=2)
    assert paired.path == path and not paired.fixed_train_inputs
    (weak, strong), _, index = next(iter(paired.train.epoch(0)))
    # digits trains without geometry: the weak view is the normalised image itself
    pixels = build_uint8_cache("digits").images[index].numpy().astype(np.float32) / 16
    want = (pixels - np.float32(DIGITS_MEAN[0])) / np.float32(DIGITS_STD[0])
    np.testing.assert_allclose(weak.numpy(), want, rtol=0, atol=1e-6)
    assert strong.shape == weak.shape and not torch.equal(strong, weak)  # RandAugment + Cutout


# --------------------------------------------------------------------------- planned cache

RRC = "test-rrc-16"
if RRC not in PRESETS:
    register_preset(LargeImagePreset(RRC, 16, 18, IMAGENET_MEAN, IMAGENET_STD,
                                     description="test only: RandomResizedCrop(16) + HFlip"))


class EpochIndexImages:
    """A planned-dataset stand-in: item i of epoch e is the 1-pixel image ``100 e + i``."""

    def __init__(self, count: int) -> None:
        self.count, self.epoch = count, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([100.0 * self.epoch + index]), 0


class EchoTeacher(nn.Module):
    """Logits that repeat the image's value, counting the images it sees."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes, self.images = classes, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return x.repeat(1, self.classes)


def test_fill_computes_only_needed_views_into_their_epoch_and_sample() -> None:
    """Batches of 2 over scattered samples: each result lands at ``[epoch - 1, sample]``."""
    cache = PlannedLogitCache.empty(3, 5, 2, dtype=torch.float32)
    assert cache.fields == {} and cache.key == "" and cache.nbytes == 3 * 5 * 2 * 4
    needed = torch.zeros(3, 5, dtype=torch.bool)
    needed[0, [1, 3, 4]] = True
    needed[2, [0, 2, 3]] = True
    teacher = EchoTeacher(2).train()
    # EpochIndexImages stands in for the PlannedDataset fill reads (len, set_epoch, items)
    stand_in = EpochIndexImages(5)
    assert cache.fill(teacher, stand_in, needed, batch_size=2) == 6  # type: ignore[arg-type]
    assert teacher.training and teacher.images == 6
    assert torch.equal(cache.filled, needed)
    for epoch in (1, 2, 3):
        for sample in range(5):
            row = cache.logits[epoch - 1, sample]
            if needed[epoch - 1, sample]:
                assert row.tolist() == [100.0 * epoch + sample] * 2
            else:
                assert torch.isnan(row).all()
    got = cache.lookup(3, torch.tensor([3, 0]))
    assert got.dtype == torch.float32 and got.tolist() == [[303.0, 303.0], [300.0, 300.0]]
    meta = torch.device("meta")  # the training device, wherever the table lives
    assert cache.lookup(3, torch.tensor([3, 0]), meta).device == meta
    more = needed.clone()
    more[1, 4] = True
    assert cache.fill(teacher, EpochIndexImages(5), more,  # type: ignore[arg-type]
                      batch_size=2) == 1  # only the new one
    assert teacher.images == 7 and cache.logits[1, 4].tolist() == [204.0, 204.0]


def test_a_planned_cache_without_fields_counts_as_filled() -> None:
    cache = PlannedLogitCache(torch.zeros(2, 3, 4, dtype=torch.float16))
    assert cache.fields == {} and cache.key == ""
    assert cache.filled.shape == (2, 3) and bool(cache.filled.all())
    assert cache.nbytes == 2 * 3 * 4 * 2
    with pytest.raises(ValueError, match=r"\(epochs, samples, classes\)"):
        PlannedLogitCache(torch.zeros(2, 3))


def test_planned_files_of_format_1_load_and_others_are_refused(tmp_path: Path) -> None:
    fields = {"plan": {"epochs": 2}, "num_samples": 3, "num_classes": 1}
    logits = torch.arange(6, dtype=torch.float32).view(2, 3, 1)
    state = {"format": 1, "kind": "planned", "key": cache_key(fields), "fields": fields,
             "logits": logits, "filled": torch.ones(2, 3, dtype=torch.bool)}
    torch.save(state, tmp_path / "good.pt")
    loaded = PlannedLogitCache.load(tmp_path / "good.pt")
    assert torch.equal(loaded.logits, logits) and loaded.fields == fields
    broken = {
        "format": {**state, "format": 2},
        "kind": {**state, "kind": "crop_flip"},
        "logits": {**state, "logits": logits[:1]},
        "filled": {**state, "filled": torch.ones(2, 2, dtype=torch.bool)},
    }
    for name, bad in broken.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(CacheKeyMismatchError, match="delete it"):
            PlannedLogitCache.load(tmp_path / f"{name}.pt")
    target = tmp_path / "new" / "deeper" / "c.pt"
    loaded.save(target)
    loaded.save(target)  # replacing a file in an existing folder
    assert torch.equal(PlannedLogitCache.load(target).logits, logits)


def _planned_run(tmp_path: Path, **teacher: Any) -> tuple[Any, Any]:
    """21 training images of three sizes, RandomResizedCrop(16): 3 epochs of 5 batches of 4."""
    root = write_fake_image_folder(tmp_path, train_per_class=7, test_per_class=1)
    cfg = config_from_dict({
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "teacher": {"name": "tiny_cnn", "args": {"width": 4}, "cache": "on",
                    "cache_dir": str(tmp_path / "cache"), "cache_dtype": "float32", **teacher},
        "data": {"dataset": "image-folder", "root": str(root), "preset": RRC,
                 "num_workers": 0, "batch_size": 4, "eval_batch_size": 8, "val_fraction": 0.0},
        "train": {"epochs": 3, "device": "cpu", "seed": 5},
    })
    return cfg, build_data(cfg, DistContext(), torch.device("cpu"))


def _needed_views(epochs: range) -> torch.Tensor:
    """The views 3 epochs of seed 5 train on: the first 5 x 4 of each epoch's permutation."""
    mask = torch.zeros(3, 21, dtype=torch.bool)
    for epoch in epochs:
        mask[epoch - 1, reference_shard(21, 5, epoch, 0, 1)[:20]] = True
    return mask


def test_planned_cache_computes_the_views_this_run_still_trains_on(tmp_path: Path) -> None:
    """A run resumed at epoch 2 needs epochs 2 and 3 only: the first 20 samples of each
    epoch's permutation (drop_last).  The size check uses 4 bytes a float32 logit:
    3 x 21 x 3 x 4 = 756 bytes, exactly the 7.56e-7 GB limit, which still fits."""
    cfg, data = _planned_run(tmp_path, cache_max_gb=7.56e-7)
    teacher = create_model("tiny_cnn", num_classes=3, width=4)
    say: list[str] = []
    cache, info = resolve_planned_cache(cfg, data, teacher, {"sha256": "given"},
                                        get_preset(RRC), torch.device("cpu"), DistContext(),
                                        {"mode": "on"}, say.append, first_epoch=2)
    assert cache is not None and info["status"] == "built" and info["mode"] == "on"
    assert torch.equal(cache.filled, _needed_views(range(2, 4)))
    assert info["computed"] == 40 and cache.fields["teacher_sha256"] == "given"
    # the val carve decides which images are "sample i": it is part of the file's key
    assert (cache.fields["val_fraction"], cache.fields["val_seed"]) == (0.0, 0)
    assert info["size_mb"] == 0.0  # 756 bytes, in MiB to one decimal
    assert not data.fixed_train_inputs and data.train_eval is None  # RandomResizedCrop
    planned = data.train.dataset.dataset
    assert isinstance(planned, PlannedDataset)  # training now reads the planned crops
    images, _, index = next(iter(data.train.epoch(2)))
    assert index.tolist() == reference_shard(21, 5, 2, 0, 1)[:4]
    boxes = planned.plan.epoch(planned.sizes, 5, 2)  # epoch 2's planned rows
    for k, i in enumerate(index.tolist()):
        top, left, height, width, flip = boxes[i].tolist()
        view = TF.resized_crop(planned.dataset.raw_image(i), top, left, height, width,
                               [16, 16], antialias=True)
        view = TF.hflip(view) if flip else view
        want = TF.normalize(TF.to_tensor(view), IMAGENET_MEAN, IMAGENET_STD)
        torch.testing.assert_close(images[k], want, rtol=0, atol=1e-6)


def test_planned_cache_of_float16_and_every_epoch_by_default(tmp_path: Path) -> None:
    """float16 takes 2 bytes a logit: 378 bytes fit under 3.8e-7 GB; with no first epoch
    given every epoch's trained views are computed."""
    cfg, data = _planned_run(tmp_path, cache_dtype="float16", cache_max_gb=3.8e-7)
    teacher = create_model("tiny_cnn", num_classes=3, width=4)
    cache, _ = resolve_planned_cache(cfg, data, teacher, None, get_preset(RRC),
                                     torch.device("cpu"), DistContext(), {}, list[str]().append)
    assert cache is not None and cache.logits.dtype == torch.float16
    assert torch.equal(cache.filled, _needed_views(range(1, 4)))


@pytest.mark.parametrize("dtype,limit", [("float32", 7.5e-7), ("float16", 3.7e-7)])
def test_a_planned_cache_over_the_size_limit_is_refused_or_skipped(
    tmp_path: Path, dtype: str, limit: float
) -> None:
    cfg, data = _planned_run(tmp_path, cache_dtype=dtype, cache_max_gb=limit)
    teacher = create_model("tiny_cnn", num_classes=3, width=4)
    args = (teacher, None, get_preset(RRC), torch.device("cpu"), DistContext(), {"mode": "x"})
    with pytest.raises(ValueError, match=r"teacher.cache=on: 3 epochs x 21 samples x 3 classes"):
        resolve_planned_cache(cfg, data, *args, list[str]().append)
    cfg.teacher.cache = "auto"
    say: list[str] = []
    cache, info = resolve_planned_cache(cfg, data, *args, say.append)
    assert cache is None and info["status"] == "live" and "cache_max_gb" in info["reason"]
    assert say and "live teacher" in say[0]
    assert not isinstance(data.train.dataset.dataset, PlannedDataset)  # plain crops kept
    cfg.teacher.cache_max_gb = 1.0
    cfg.teacher.cache_views = "all"
    cache, _ = resolve_planned_cache(cfg, data, *args, say.append)
    assert cache is not None and bool(cache.filled.all())


def test_build_data_resizes_once_for_a_resizing_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny-imagenet-32 on 64 px files: the fast path caches 32 px images that equal the
    per-image Resize + ToTensor + Normalize."""
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    root = write_fake_tiny_imagenet(tmp_path, num_classes=2, train_per_class=2, val_per_class=2)
    cfg = digits_config(tmp_path, "resize", data={"dataset": "tiny-imagenet", "root": str(root),
                                                  "preset": "tiny-imagenet-32",
                                                  "batch_size": 2, "val_fraction": 0.0})
    bundle = build_data(cfg, DistContext(), torch.device("cpu"))
    assert bundle.path == "fast"
    images, _, index = next(iter(bundle.test.epoch(0)))
    reference = load_dataset("tiny-imagenet", root, "test",
                             transform=build_transforms("tiny-imagenet-32", train=False))
    assert index.tolist() == [0, 1, 2, 3]
    for k in range(4):
        torch.testing.assert_close(images[k], reference[k][0], rtol=0, atol=1e-6)


def test_rebuild_decodes_again_and_a_moved_copy_finds_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is keyed by paths relative to the dataset root: the same files at another
    root reuse it.  ``rebuild`` decodes again although memory and file both have it."""
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    decoded: list[int] = []
    real_decode = cache_module.decode_to_uint8

    def counting_decode(dataset: Any, *args: Any) -> torch.Tensor:
        decoded.append(len(dataset))
        return real_decode(dataset, *args)

    monkeypatch.setattr(cache_module, "decode_to_uint8", counting_decode)
    root = write_fake_tiny_imagenet(tmp_path / "a", num_classes=2, train_per_class=2)
    store = tmp_path / "cache"
    first = build_uint8_cache("tiny-imagenet", root, cache_dir=store)
    assert decoded == [4]
    again = build_uint8_cache("tiny-imagenet", root, cache_dir=store, rebuild=True)
    assert decoded == [4, 4] and again is not first and torch.equal(again.images, first.images)
    moved = tmp_path / "b" / "copy"
    moved.parent.mkdir()
    root.rename(moved)
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    elsewhere = build_uint8_cache("tiny-imagenet", moved, cache_dir=store)
    assert decoded == [4, 4] and elsewhere.path == first.path
    # an image replaced by one of another file size (same name, same label): a new file
    replaced = next((moved / "train").rglob("*.JPEG"))
    size_before = replaced.stat().st_size
    Image.new("RGB", (64, 64), (9, 200, 30)).save(replaced, format="JPEG", quality=5)
    assert replaced.stat().st_size != size_before
    changed = build_uint8_cache("tiny-imagenet", moved, cache_dir=store)
    assert decoded == [4, 4, 4] and changed.path != first.path


class UnplannableImages(CountedSamples):
    """A RandomResizedCrop dataset without ``raw_image``: its crops cannot be replayed."""

    transform = build_transforms(RRC, train=True)


def test_a_dataset_without_raw_images_keeps_the_live_teacher(tmp_path: Path) -> None:
    cfg, _ = _planned_run(tmp_path)
    train = TorchSource(UnplannableImages(8), 4, train=True, device=torch.device("cpu"), seed=5,
                        ctx=DistContext(), num_workers=0, channels_last=False, max_steps=None)
    data = SimpleNamespace(train=train, num_classes=3)
    teacher = create_model("tiny_cnn", num_classes=3, width=4)
    record: dict[str, Any] = {}
    args = (cfg, data, teacher, None, get_preset(RRC), torch.device("cpu"), DistContext(), record)
    with pytest.raises(ValueError, match="cannot take planned crops"):
        resolve_planned_cache(*args, list[str]().append)
    cfg.teacher.cache = "auto"
    cache, info = resolve_planned_cache(*args, list[str]().append)
    assert cache is None and info["status"] == "live"
    assert isinstance(train.dataset.dataset, UnplannableImages)


def test_the_planned_cache_record_gives_its_size_in_mib(tmp_path: Path) -> None:
    """1 epoch x 1000 samples x 100 classes of float32 = 400,000 bytes = 0.38 MiB -> 0.4."""
    fields = {"dataset": "d", "split": "train", "plan": {"seed": 0, "epochs": 1},
              "num_samples": 1000, "num_classes": 100, "dtype": "float32"}
    nothing = torch.zeros(1, 1000, dtype=torch.bool)
    _, record = load_or_build_planned(EchoTeacher(100), fields,
                                      EpochIndexImages(1000),  # type: ignore[arg-type]
                                      tmp_path, nothing)
    assert record["size_mb"] == 0.4 and record["status"] == "hit" and record["computed"] == 0
