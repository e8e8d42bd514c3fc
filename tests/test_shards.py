"""uint8 .npz shards (`uint8-shards`) and `figkd pack`: exact round trip, size cap, clear
errors for missing parts, the fast path, and a `figkd study` run read from shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from figkd import data
from figkd.cli import main
from figkd.config import config_from_dict
from figkd.data import cache as cache_module
from figkd.data import shards, synthetic
from figkd.engine.data import build_data
from figkd.engine.distributed import DistContext


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))  # subprocesses inherit it
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Half smooth gradients with noise (like photos), half pure noise (worst case)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(size), np.arange(size))[None, :, :, None] * 3
    smooth = (ramp + rng.integers(0, 256, (n, 1, 1, 3)) + rng.integers(0, 9, (n, size, size, 3)))
    images = (smooth % 256).astype(np.uint8)
    images[n // 2:] = rng.integers(0, 256, (n - n // 2, size, size, 3), dtype=np.uint8)
    images[0] = 0
    images[1] = 255  # the extremes wrap around the modular residuals
    return images


@pytest.mark.parametrize("codec", ["med-xz", "raw"])
def test_shards_round_trip_exactly_and_respect_the_size_cap(tmp_path: Path, codec: str) -> None:
    images = _images(600)
    labels = np.arange(600) % 7
    classes = [f"class{i}" for i in range(7)]
    paths = shards.write_shards(tmp_path / "p", "train", images, labels, classes,
                                max_mib=0.5, codec=codec, block=64)
    assert len(paths) > 1  # 1.8 MB of pixels cannot fit one 0.5 MiB shard
    assert all(p.stat().st_size <= 0.5 * 2**20 for p in paths)
    got, got_labels, got_classes, _ = shards.read_shards(tmp_path / "p", "train")
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(got_labels, labels) and got_classes == classes
    with pytest.raises(ValueError, match="max-mib"):
        shards.write_shards(tmp_path / "q", "train", images, labels, classes, max_mib=0.05,
                            codec=codec, block=64)


def test_missing_or_mixed_parts_are_named(tmp_path: Path) -> None:
    images, labels = _images(300), np.arange(300) % 3
    root = tmp_path / "pack"
    paths = shards.write_shards(root / "p1", "train", images, labels, ["a", "b", "c"],
                                max_mib=0.3, block=64)
    assert len(paths) >= 3
    (root / "p2").mkdir()
    paths[1].rename(root / "p2" / paths[1].name)  # parts may sit in sub-folders (one per call)
    assert len(data.load_dataset("uint8-shards", root, "train")) == 300
    paths[2].unlink()
    with pytest.raises(data.DatasetNotFoundError, match=paths[2].name) as error:
        data.load_dataset("uint8-shards", root, "train")
    assert "incomplete" in str(error.value)
    with pytest.raises(data.DatasetNotFoundError, match="no test shards"):
        data.load_dataset("uint8-shards", root, "test")
    with pytest.raises(data.DatasetNotFoundError, match="pass root"):
        data.load_dataset("uint8-shards")
    (root / "p2" / paths[1].name).write_bytes(b"not a zip")
    shards.write_shards(root / "p3", "test", images[:10], labels[:10], ["a", "b", "c"])
    broken = root / "p1" / paths[2].name
    broken.write_bytes(b"not a zip")
    with pytest.raises(data.DatasetNotFoundError, match="not a readable figkd shard"):
        data.load_dataset("uint8-shards", root, "train")


def test_pack_equals_the_uint8_cache_and_feeds_the_fast_path(tmp_path: Path) -> None:
    source = synthetic.write_fake_tiny_imagenet(tmp_path / "data", num_classes=4,
                                                train_per_class=5, val_per_class=2, size=64)
    out = tmp_path / "tiny32"
    assert main(["pack", "tiny-imagenet", "--data-root", str(source), "--size", "32",
                 "--out", str(out), "--max-mib", "1"]) == 0
    assert json.loads((out / "pack.json").read_text())["size"] == 32
    for split in ("train", "test", "val"):
        jpeg = data.build_uint8_cache("tiny-imagenet", source, split, 32, val_fraction=0.2)
        packed = data.build_uint8_cache("uint8-shards", out, split, 32, val_fraction=0.2)
        assert torch.equal(jpeg.images, packed.images)  # same pixels as the per-image resize
        assert torch.equal(jpeg.targets, packed.targets) and jpeg.classes == packed.classes
        assert packed.path is None  # taken from the shards as they are: no decode, no file
    dataset = data.load_dataset("uint8-shards", out, "test",
                                transform=data.build_transforms("tiny-imagenet-32", train=False))
    assert dataset.class_names[0].startswith("thing") and dataset[0][0].shape == (3, 32, 32)
    first = data.load_dataset("uint8-shards", out, "train", train_per_class=2)
    assert first.targets == [0, 0, 1, 1, 2, 2, 3, 3]

    cfg = config_from_dict({"model": {"name": "tiny_cnn", "args": {"width": 4}},
                            "data": {"dataset": "uint8-shards", "root": str(out),
                                     "preset": "tiny-imagenet-32", "val_fraction": 0.2,
                                     "batch_size": 4, "loader": "fast"}})
    bundle = build_data(cfg, DistContext(), torch.device("cpu"))
    assert type(bundle.train).__name__ == "FastSource"
    images, targets, _ = next(iter(bundle.train.epoch(0)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.long


def test_study_reads_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = synthetic.write_fake_tiny_imagenet(tmp_path / "data", num_classes=6,
                                                train_per_class=8, val_per_class=3, size=32)
    packed = tmp_path / "packed"
    assert main(["pack", "tiny-imagenet", "--data-root", str(source), "--size", "32",
                 "--out", str(packed)]) == 0
    out = tmp_path / "study"
    common = ["study", "--tier", "smoke", "--dataset", "shards", "--data-root", str(packed),
              "--out", str(out), "--epochs", "1", "--teacher-epochs", "1",
              "--train-per-class", "4", "--test-per-class", "2", "--seeds", "0",
              "--methods", "ce", "figkd", "--device", "cpu", "data.batch_size=8"]
    assert main(common) == 0
    text = (out / "smoke" / "study.md").read_text()
    assert "uint8-shards" in text and "--dataset uint8-shards" in text
    assert "| CE | 1 | " in text and "| FiGKD | 1 | " in text
    summary = json.loads(next((out / "smoke").rglob("figkd/seed0/summary.json")).read_text())
    assert summary["status"] == "finished"
    config = next((out / "smoke" / "configs").rglob("figkd.yaml")).read_text()
    assert "train_per_class: 4" in config and "uint8-shards" in config
    (next(packed.glob("train-*.npz"))).unlink()
    capsys.readouterr()
    assert main(common) != 0  # the CLI reports the reader's error and fails
    assert "no train shards" in capsys.readouterr().err


def test_labels_and_long_class_names_count_toward_the_cap(tmp_path: Path) -> None:
    """The shard's labels (8 bytes each) and class-name arrays (4 bytes per character) are
    part of its size: with 1000 long names they take ~0.2 MiB of a 0.5 MiB cap."""
    images = _images(600)
    labels = np.arange(600) % 1000
    classes = [f"n{i:08d}" for i in range(1000)]
    names = [f"a rather long human-readable name of class {i:04d}" for i in range(1000)]
    paths = shards.write_shards(tmp_path / "p", "train", images, labels, classes,
                                class_names=names, max_mib=0.5, codec="raw", block=32)
    assert len(paths) > 1 and all(p.stat().st_size <= 0.5 * 2**20 for p in paths)
    got, got_labels, _, _ = shards.read_shards(tmp_path / "p", "train")
    assert np.array_equal(got, images) and np.array_equal(got_labels, labels)
    with pytest.raises(ValueError, match=r"labels and class names take .* MiB > --max-mib 0.2"):
        shards.write_shards(tmp_path / "q", "train", images, labels, classes,
                            class_names=names, max_mib=0.2, codec="raw", block=32)
