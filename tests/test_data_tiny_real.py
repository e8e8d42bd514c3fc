"""The Tiny-ImageNet reader on the real 100-class subset in ../shared/data.

The tar is unpacked once into <repo>/.cache/ (about 2 s, 220 MB, git-ignored) and
reused by later runs; the tests skip when the shared data folder is absent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from figkd import data

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TAR = SHARED / "tiny-imagenet-100a.tar"


@pytest.fixture(scope="module")
def tiny_root() -> Path:
    if (SHARED / "tiny-imagenet-100a" / "wnids.txt").is_file():
        return SHARED / "tiny-imagenet-100a"
    if not TAR.is_file():
        pytest.skip(f"real Tiny-ImageNet subset not found: {TAR} is absent")
    return data.extract_tiny_imagenet_tar(TAR, REPO / ".cache")


def test_train_split_has_100_classes_of_500(tiny_root):
    train = data.load_dataset("tiny-imagenet", root=tiny_root, split="train")
    wnids = (tiny_root / "wnids.txt").read_text().split()
    assert len(train.classes) == 100 and train.classes == sorted(wnids)
    assert len(train) == 50_000 and set(Counter(train.targets).values()) == {500}
    for path, label in train.samples:
        wnid = train.classes[label]
        assert Path(path).parent == tiny_root / "train" / wnid / "images"
        assert Path(path).name.startswith(f"{wnid}_")
    assert train.class_names[0] == "goldfish"


def test_test_split_is_the_labelled_val_folder(tiny_root):
    test = data.load_dataset("tiny-imagenet", root=tiny_root, split="test")
    assert len(test) == 5_000 and set(Counter(test.targets).values()) == {50}
    annotations = {}
    for line in (tiny_root / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        annotations[name] = wnid
    assert len(annotations) == 5_000
    assert {Path(p).name: test.classes[t] for p, t in test.samples} == annotations
    # README: 70 of the 5,000 val JPEGs are single-channel; they load as RGB.
    gray = [i for i, (p, _) in enumerate(test.samples) if Image.open(p).mode == "L"]
    assert len(gray) == 70
    image, _ = test[gray[0]]
    assert image.mode == "RGB" and image.size == (64, 64)


def test_cache_and_fast_path_on_real_images(tiny_root, tmp_path):
    cache = data.build_uint8_cache("tiny-imagenet", root=tiny_root, split="test",
                                   cache_dir=tmp_path)
    assert cache.images.shape == (5_000, 3, 64, 64)
    per_image = data.load_dataset("tiny-imagenet", root=tiny_root, split="test",
                                  transform=data.build_transforms("tiny-imagenet-64", train=False))
    loader = data.GPUBatchLoader(cache, 256, "tiny-imagenet-64", train=False)
    images, labels = next(iter(loader))
    assert labels.tolist() == per_image.targets[:256]
    assert torch.equal(images[:64], torch.stack([per_image[i][0] for i in range(64)]))
    augmented, _ = next(iter(data.GPUBatchLoader(cache, 256, "tiny-imagenet-64", seed=1)))
    assert augmented.shape == (256, 3, 64, 64) and torch.isfinite(augmented).all()


@pytest.mark.slow
def test_full_train_cache_at_32_px(tiny_root, tmp_path):
    cache = data.build_uint8_cache("tiny-imagenet", root=tiny_root, size=32, cache_dir=tmp_path)
    assert cache.images.shape == (50_000, 3, 32, 32)
    assert set(Counter(cache.targets.tolist()).values()) == {500}
    loader = data.GPUBatchLoader(cache, 512, "tiny-imagenet-32")
    assert sum(len(y) for _, y in loader) == 50_000 // 512 * 512
