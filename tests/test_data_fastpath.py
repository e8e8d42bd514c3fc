"""The uint8 cache and the batch-wise loader: same pixels and same augmentation law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from figkd import data
from figkd.data import cache as cache_module
from figkd.data import synthetic
from figkd.data.batch_loader import (
    BatchAugment,
    crop_flip,
    gather_pixels,
    rotate_nearest,
    source_index,
)


@pytest.fixture(autouse=True)
def _fresh_memory(monkeypatch):
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def _to_uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def test_cache_is_decoded_once_reused_and_invalidated(tmp_path, monkeypatch):
    folder = synthetic.write_fake_tiny_imagenet(tmp_path, num_classes=3, train_per_class=4)
    store = tmp_path / "cache"
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    cache = data.build_uint8_cache("tiny-imagenet", root=folder, cache_dir=store)
    # building draws nothing from the global RNG: a run that builds the cache initialises its
    # model exactly like a run that finds it built
    assert torch.equal(torch.get_rng_state(), rng)
    dataset = data.load_dataset("tiny-imagenet", root=folder)
    assert cache.images.shape == (12, 3, 64, 64) and cache.images.dtype == torch.uint8
    assert cache.targets.tolist() == dataset.targets and cache.classes == dataset.classes
    for i, (path, _) in enumerate(dataset.samples):
        assert torch.equal(cache.images[i], _to_uint8(data.load_rgb(path)))
    assert cache.path is not None and cache.path.parent == store and cache.path.exists()
    assert "tiny-imagenet-train-native-" in cache.path.name
    # Same process: the in-memory copy; new process: the file, without decoding again.
    assert data.build_uint8_cache("tiny-imagenet", root=folder, cache_dir=store) is cache
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    monkeypatch.setattr(cache_module, "decode_to_uint8",
                        lambda *a, **k: pytest.fail("decoded again"))
    again = data.build_uint8_cache("tiny-imagenet", root=folder, cache_dir=store)
    assert torch.equal(again.images, cache.images) and again.path == cache.path
    monkeypatch.undo()
    # Keyed by split and size, and by the file list: a changed dataset gets a new file.
    small = data.build_uint8_cache("tiny-imagenet", root=folder, split="test", size=32,
                                   cache_dir=store)
    assert small.path is not None  # built with a cache_dir: the cache has a file
    assert small.images.shape == (6, 3, 32, 32) and "test-32px" in small.path.name
    Image.new("RGB", (64, 64)).save(folder / "train" / dataset.classes[0] / "images" / "extra.JPEG")
    grown = data.build_uint8_cache("tiny-imagenet", root=folder, cache_dir=store)
    assert len(grown) == 13 and grown.path != cache.path


def test_cache_val_split_is_the_load_dataset_val_split(tmp_path):
    folder = synthetic.write_fake_mit67(tmp_path, num_classes=3, train_per_class=10,
                                        test_per_class=1)
    kwargs = dict(root=folder, size=32, cache_dir=tmp_path / "cache", val_fraction=0.3, val_seed=4)
    val_cache = data.build_uint8_cache("mit67", split="val", **kwargs)
    train_cache = data.build_uint8_cache("mit67", split="train", **kwargs)
    val = data.load_dataset("mit67", root=folder, split="val", val_fraction=0.3, val_seed=4)
    assert val_cache.targets.tolist() == val.targets and len(train_cache) == 21
    for i, (path, _) in enumerate(val.samples):
        assert torch.equal(val_cache.images[i], _to_uint8(TF.resize(data.load_rgb(path), [32, 32])))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cache_names_a_corrupted_file(tmp_path, num_workers):
    folder = synthetic.write_fake_stanford40(tmp_path)
    good = data.build_uint8_cache("stanford40", root=folder, size=32, cache_dir=tmp_path / "cache",
                                  num_workers=num_workers)
    dataset = data.load_dataset("stanford40", root=folder)
    assert torch.equal(good.images, data.decode_to_uint8(dataset, 32))
    broken = folder / "JPEGImages" / "action_b_002.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(data.CorruptImageError, match=str(broken)):
        data.build_uint8_cache("stanford40", root=folder, size=32, cache_dir=tmp_path / "cache",
                               num_workers=num_workers)


def test_variable_size_images_need_a_size(tmp_path):
    folder = synthetic.write_fake_cub200(tmp_path)
    with pytest.raises(ValueError, match="pass size="):
        data.build_uint8_cache("cub200", root=folder, cache_dir=tmp_path / "cache")


EVAL_CASES = [
    ("cifar100", "cifar", None, synthetic.write_fake_cifar100),
    ("tiny-imagenet", "tiny-imagenet-64", None, synthetic.write_fake_tiny_imagenet),
    ("tiny-imagenet", "tiny-imagenet-32", 32, synthetic.write_fake_tiny_imagenet),
    ("cub200", "fine-grained-32", 32, synthetic.write_fake_cub200),
    ("digits", "digits", None, None),
]


@pytest.mark.parametrize("name,preset,size,writer", EVAL_CASES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_without_augmentation_both_paths_give_identical_tensors(
    tmp_path, name, preset, size, writer, split
):
    root = writer(tmp_path) if writer else None
    per_image = data.load_dataset(name, root=root, split=split,
                                  transform=data.build_transforms(preset, train=False))
    expected = torch.stack([per_image[i][0] for i in range(len(per_image))])
    cache = data.build_uint8_cache(name, root=root, split=split, size=size,
                                   cache_dir=tmp_path / "c")
    loader = data.GPUBatchLoader(cache, batch_size=7, preset=preset, train=False)
    images, labels = map(torch.cat, zip(*loader))
    assert images.dtype == torch.float32 and images.is_contiguous()
    assert torch.equal(images, expected)
    assert labels.tolist() == per_image.targets


def test_batch_geometry_equals_torchvision_for_given_parameters():
    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
           for _ in range(81 * 2)]
    batch = torch.stack([_to_uint8(p) for p in pil])
    grid = torch.tensor([(t, l) for t in range(9) for l in range(9)] * 2)
    flip = torch.arange(len(pil)) >= 81
    out = crop_flip(batch, grid[:, 0], grid[:, 1], flip, padding=4)
    for i, image in enumerate(pil):
        ref = TF.crop(TF.pad(image, 4), int(grid[i, 0]), int(grid[i, 1]), 32, 32)
        assert torch.equal(out[i], _to_uint8(TF.hflip(ref) if flip[i] else ref))
    # Rotation follows PIL's nearest-neighbour rule; fixed-point rounding inside PIL may
    # move a pixel on an exact boundary, so demand near-total (not total) agreement.
    pil64 = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    batch64 = torch.stack([_to_uint8(p) for p in pil64])
    for angle in (-20.0, -13.7, -0.4, 0.0, 5.25, 19.99):
        out = rotate_nearest(batch64, torch.full((4,), angle, dtype=torch.float64))
        ref = torch.stack([_to_uint8(TF.rotate(p, angle)) for p in pil64])
        assert (out == ref).all(1).float().mean() > 0.995, angle


def test_rotation_then_padded_crop_then_flip_equals_torchvision_composed():
    """No preset rotates *and* pads, but a user preset may: the crop's zero padding must stay
    black after the rotation is undone, and the three steps compose in torchvision's order."""
    rng = np.random.default_rng(1)
    count = 24
    pil = [Image.fromarray(rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    batch = torch.stack([_to_uint8(p) for p in pil])
    angle = torch.tensor(rng.uniform(-20, 20, count))
    top, left = (torch.tensor(rng.integers(0, 9, count)) for _ in range(2))
    flip = torch.tensor(rng.random(count) < 0.5)
    index = source_index(32, 32, angle=angle, top=top, left=left, flip=flip, padding=4)
    out = gather_pixels(batch, index)
    refs = []
    for i, image in enumerate(pil):
        ref = TF.crop(TF.pad(TF.rotate(image, float(angle[i])), 4), int(top[i]), int(left[i]), 32, 32)
        refs.append(_to_uint8(TF.hflip(ref) if flip[i] else ref))
    ref = torch.stack(refs)
    black = (ref == 0).all(1)  # image pixels are >= 1: zero is padding or the rotation's fill
    assert black.float().mean() > 0.1  # the composition really reaches the padding
    assert (out == ref).all(1).float().mean() > 0.995
    assert ((out == 0).all(1) == black).float().mean() > 0.995


def _coordinate_image(size: int, step: int) -> Image.Image:
    """R = column * step, G = row * step, B = 255: every pixel says where it came from."""
    cols, rows = np.meshgrid(np.arange(size), np.arange(size))
    array = np.stack([cols * step, rows * step, np.full_like(cols, 255)], -1).astype(np.uint8)
    return Image.fromarray(array)


def _per_image_and_fast(
    preset: str, image: Image.Image, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` augmented copies of ``image`` from each path, back in uint8 (N, H, W, 3)."""
    spec = data.get_preset(preset)
    mean, std = np.array(spec.mean), np.array(spec.std)
    transform = data.build_transforms(preset, train=True)
    torch.manual_seed(0)
    slow = torch.stack([transform(image) for _ in range(count)])
    uint8 = _to_uint8(image).unsqueeze(0).repeat(count, 1, 1, 1)
    cache = data.TensorImageCache(uint8, torch.zeros(count, dtype=torch.long), ["x"])
    fast, _ = next(iter(data.GPUBatchLoader(cache, count, preset, train=True, seed=0)))

    def back(x: torch.Tensor) -> np.ndarray:
        return np.rint((x.permute(0, 2, 3, 1).numpy() * std + mean) * 255).astype(np.int64)

    return back(slow), back(fast)


def test_crop_and_flip_distribution_matches_per_image_path():
    slow, fast = _per_image_and_fast("cifar", _coordinate_image(32, 8), 3000)

    def params(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row, col = batch[:, 16, 16, 1] // 8, batch[:, 16, 16, 0] // 8
        col_next = batch[:, 16, 17, 0] // 8
        assert (batch[:, 16, 16, 2] == 255).all()
        flip = col_next < col
        return row - 12, np.where(flip, col - 11, col - 12), flip

    for a, b, name in zip(params(slow), params(fast), ("top", "left", "flip")):
        categories = 2 if name == "flip" else 9
        counts = np.stack([np.bincount(a.astype(int), minlength=categories),
                           np.bincount(b.astype(int), minlength=categories)])
        assert counts.shape == (2, categories), name  # offsets stay in 0..8
        assert stats.chi2_contingency(counts).pvalue > 1e-3, (name, counts)
        # and each path is uniform on its own
        assert stats.chisquare(counts[1]).pvalue > 1e-3, (name, counts)


def test_rotation_and_flip_distribution_matches_per_image_path():
    slow, fast = _per_image_and_fast("tiny-imagenet-64", _coordinate_image(64, 4), 2000)

    def params(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left, right = batch[:, 32, 4], batch[:, 32, 59]  # symmetric about the centre
        flip = right[:, 0] < left[:, 0]
        left, right = np.where(flip[:, None], right, left), np.where(flip[:, None], left, right)
        assert (left[:, 2] == 255).all() and (right[:, 2] == 255).all()
        dx, dy = (right[:, 0] - left[:, 0]) / 4, (right[:, 1] - left[:, 1]) / 4
        angle = np.degrees(np.arctan2(dy, dx))
        return angle, flip

    (angle_slow, flip_slow), (angle_fast, flip_fast) = params(slow), params(fast)
    assert stats.ks_2samp(angle_slow, angle_fast).pvalue > 1e-3
    assert -21.5 < angle_fast.min() < -18 and 18 < angle_fast.max() < 21.5
    counts = np.array([[flip_slow.sum(), (~flip_slow).sum()],
                       [flip_fast.sum(), (~flip_fast).sum()]])
    assert stats.chi2_contingency(counts).pvalue > 1e-3
    generator = torch.Generator().manual_seed(1)
    sampled = BatchAugment("tiny-imagenet-64").sample(5000, generator)["angle"]
    assert stats.kstest(sampled.numpy(), stats.uniform(-20, 40).cdf).pvalue > 1e-3


def _digits_cache() -> data.TensorImageCache:
    return data.build_uint8_cache("digits")


def test_loader_order_is_seeded_by_seed_and_epoch():
    cache = _digits_cache()
    make = lambda seed=0: data.GPUBatchLoader(cache, 100, "digits", seed=seed)
    a, b = make(), make()
    first = [(x.clone(), y.clone()) for x, y in a]
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(first, b))
    assert len(a) == len(first) == 1438 // 100  # train drops the last partial batch
    assert a.epoch == 1
    second = [y for _, y in a]
    assert not torch.equal(first[0][1], second[0])
    a.set_epoch(0)
    assert torch.equal(next(iter(a))[1], first[0][1])
    assert not torch.equal(next(iter(make(seed=1)))[1], first[0][1])
    ordered = data.GPUBatchLoader(cache, 100, "digits", train=False)
    threads = torch.get_num_threads()
    labels = torch.cat([y for _, y in ordered])
    assert torch.get_num_threads() == threads  # the loader's 1-thread section is undone
    assert len(ordered) == 15 and labels.tolist() == cache.targets.tolist()


def test_distributed_shards_partition_each_epoch():
    cache = _digits_cache()
    shards = [data.GPUBatchLoader(cache, 50, "digits", train=False, shuffle=True, seed=3,
                                  num_replicas=3, rank=r) for r in range(3)]
    seen = [torch.cat([y for _, y in s]) for s in shards]
    assert [len(s) for s in seen] == [480, 480, 480]  # 1438 padded to 1440
    images = torch.cat([torch.cat([x for x, _ in s]) for s in shards])
    distinct = lambda x: len(torch.unique(x.flatten(1), dim=0))
    assert distinct(images) == distinct(cache.images)


def test_loader_rejects_presets_that_do_not_fit(tmp_path):
    cache = _digits_cache()
    with pytest.raises(ValueError, match="size=32"):
        data.GPUBatchLoader(cache, 8, "cifar")
    with pytest.raises(ValueError, match="no batch fast path"):
        data.GPUBatchLoader(cache, 8, "fine-grained-224")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset,size", [("cifar", 32), ("tiny-imagenet-64", 64)])
def test_cuda_loader_matches_cpu_loader(preset, size):
    images = torch.randint(0, 256, (300, 3, size, size), dtype=torch.uint8)
    cache = data.TensorImageCache(images, torch.arange(300) % 10, [str(i) for i in range(10)])
    cpu = list(data.GPUBatchLoader(cache, 64, preset, seed=5))
    gpu = list(data.GPUBatchLoader(cache, 64, preset, seed=5, device="cuda"))
    assert gpu[0][0].is_cuda and len(cpu) == len(gpu) == 4
    for (x, y), (xg, yg) in zip(cpu, gpu):
        torch.testing.assert_close(xg.cpu(), x, rtol=0, atol=1e-6)
        assert torch.equal(yg.cpu(), y)
