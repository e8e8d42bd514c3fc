"""Edge cases of the uint8 shards (``figkd.data.shards``) that the round-trip tests miss.

The expected values come from outside the module: a plain-Python LOCO-I predictor and the
``lzma`` module for the codec, hand-built ``.npz`` files (``np.savez``) for the reader,
``hashlib`` for the decode cache's file name, and hand-worked arithmetic for the size cap.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from figkd import data
from figkd.data import shards


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test decodes into its own cache; the parents do not exist yet on purpose."""
    cache = tmp_path / "not-yet" / "cache"
    monkeypatch.setenv("FIGKD_CACHE", str(cache))
    return cache


def _pixels(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


# --------------------------------------------------------------------------- the codec


def _loco(a: int, b: int, c: int) -> int:
    """The LOCO-I median edge detector as written in the JPEG-LS standard."""
    if c >= max(a, b):
        return min(a, b)
    if c <= min(a, b):
        return max(a, b)
    return a + b - c


def _residual_body(images: np.ndarray) -> bytes:
    """The documented med-xz body, pixel by pixel in plain Python: per-channel residuals of
    the median predictor (zero outside the image) mod 256, then R - G and B - G, stored
    channel-major (C, N, H, W)."""
    n, h, w, ch = images.shape
    x = images.astype(int).tolist()
    res = [[[[0] * w for _ in range(h)] for _ in range(n)] for _ in range(ch)]
    for k in range(ch):
        for m in range(n):
            for i in range(h):
                for j in range(w):
                    a = x[m][i][j - 1][k] if j > 0 else 0
                    b = x[m][i - 1][j][k] if i > 0 else 0
                    c = x[m][i - 1][j - 1][k] if i > 0 and j > 0 else 0
                    res[k][m][i][j] = (x[m][i][j][k] - _loco(a, b, c)) % 256
    if ch == 3:
        for m in range(n):
            for i in range(h):
                for j in range(w):
                    g = res[1][m][i][j]
                    res[0][m][i][j] = (res[0][m][i][j] - g) % 256
                    res[2][m][i][j] = (res[2][m][i][j] - g) % 256
    return bytes(v for k in range(ch) for m in range(n) for i in range(h) for j in range(w)
                 for v in [res[k][m][i][j]])


def test_median_predictor_matches_hand_worked_cases() -> None:
    """Each branch of the edge detector, including the ties where two branches agree."""
    cases = {(10, 20, 25): 10, (20, 10, 25): 10, (10, 20, 5): 20, (20, 10, 5): 20,
             (10, 20, 15): 15, (20, 10, 12): 18, (10, 20, 20): 10, (10, 20, 10): 20,
             (7, 7, 7): 7, (0, 255, 1): 254, (255, 0, 0): 255}
    a, b, c = (np.array([k[i] for k in cases], dtype=np.int16) for i in range(3))
    got = shards._median_prediction(a, b, c)
    assert got.tolist() == list(cases.values())
    assert [_loco(*k) for k in cases] == list(cases.values())  # the reference agrees


@pytest.mark.parametrize("channels", [3, 1, 2])
def test_encode_block_writes_the_documented_residual_stream(channels: int) -> None:
    """The bytes inside the xz container are the residuals of the standard predictor, so a
    shard packed by one version of figkd decodes with another."""
    images = _pixels(2, 3, 4, channels, seed=channels)
    images[0, 0, 0] = 255  # the wrap-around of the modular residual
    images[1, 2, 3] = 0
    payload = shards.encode_block(images)
    assert payload[:6] == b"\xfd7zXZ\x00"  # an .xz container, not a raw LZMA stream
    assert lzma.decompress(payload, format=lzma.FORMAT_XZ) == _residual_body(images)


@pytest.mark.parametrize("channels", [3, 1])
def test_decode_inverts_a_hand_built_residual_stream(channels: int) -> None:
    """Decoding does not depend on the encoder: an xz stream built here decodes exactly."""
    first, second = _pixels(3, 5, 4, channels, seed=10), _pixels(2, 5, 4, channels, seed=11)
    blob1 = lzma.compress(_residual_body(first), format=lzma.FORMAT_XZ)
    blob2 = lzma.compress(_residual_body(second), format=lzma.FORMAT_XZ)
    assert np.array_equal(shards.decode_block(blob1, first.shape), first)
    both = shards.decode_blocks([(blob1, first.shape), (blob2, second.shape)])
    assert both.dtype == np.uint8 and np.array_equal(both, np.concatenate([first, second]))


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize(
    ("images", "labels", "split", "codec", "match"),
    [
        (np.zeros((4, 2, 2), np.uint8), np.zeros(4), "train", "raw", "need uint8 images"),
        (np.zeros((4, 2, 2, 3), np.uint8), np.zeros(3), "train", "raw", "need uint8 images"),
        (np.zeros((0, 2, 2, 3), np.uint8), np.zeros(0), "train", "raw", "need uint8 images"),
        (np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4), "val", "raw", "split must be"),
        (np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4), "train", "png", "unknown codec"),
    ],
)
def test_write_refuses_malformed_input(
    tmp_path: Path, images: np.ndarray, labels: np.ndarray, split: str, codec: str, match: str
) -> None:
    """Each check alone rejects its input (3-D pixels, fewer labels, no images, a bad split
    or codec) and nothing is written."""
    with pytest.raises(ValueError, match=match):
        shards.write_shards(tmp_path / "out", split, images, labels, ["a"], codec=codec)
    assert not list(tmp_path.rglob("*.npz"))


def _estimate(blocks: int, images_per_block: int, pixel_bytes: int, class_chars: int,
              classes: int) -> int:
    """The documented size bound of a shard, worked by hand: 64 KiB for zip headers and
    metadata, 4 bytes per character of the class-name array, per block its payload, a
    5-entry int64 shape row (40 bytes) and 128 bytes of zip entry, and 8 bytes per label."""
    fixed = 65536 + 4 * class_chars * classes
    per_block = images_per_block * pixel_bytes + 40 + 128 + 8 * images_per_block
    return fixed + blocks * per_block


def test_blocks_fill_a_shard_exactly_up_to_the_cap(tmp_path: Path) -> None:
    """A cap equal to two blocks' bound holds exactly two blocks per shard (the bound may
    equal the cap); one byte less cannot hold even one block, which is an error."""
    images = _pixels(10, 4, 4, 3)  # 5 blocks of 2 images, 96 bytes of pixels each
    labels = np.arange(10) % 2
    limit = _estimate(2, 2, 48, 1, 2)
    assert limit == 65536 + 8 + 2 * (96 + 168) + 8 * 4  # the hand-worked figure
    paths = shards.write_shards(tmp_path / "two", "train", images, labels, ["a", "b"],
                                max_mib=limit / 2**20, codec="raw", block=2)
    assert [p.name for p in paths] == [f"train-0000{k}-of-00003.npz" for k in range(3)]
    starts = []
    for path in paths:
        with np.load(path) as z:
            starts.append((int(z["start"]), int(z["shape"][0])))
    assert starts == [(0, 4), (4, 4), (8, 2)]

    one = _estimate(1, 2, 48, 1, 2)
    paths = shards.write_shards(tmp_path / "one", "train", images, labels, ["a", "b"],
                                max_mib=one / 2**20, codec="raw", block=2)
    assert len(paths) == 5
    with pytest.raises(ValueError, match="max-mib"):
        shards.write_shards(tmp_path / "none", "train", images, labels, ["a", "b"],
                            max_mib=(one - 1) / 2**20, codec="raw", block=2)


def test_shard_files_follow_the_documented_layout(tmp_path: Path) -> None:
    """Each shard's header, read with plain ``np.load``, holds the fields the module docstring
    lists (format 1, codec, split, (k, n), start, split size, shape, labels, classes)."""
    images, labels = _pixels(6, 2, 3, 3), np.array([3, 1, 2, 0, 1, 3])
    classes, names = ["w", "x", "y", "z"], ["dog", "cat", "owl", "ant"]
    paths = shards.write_shards(tmp_path, "test", images, labels, classes, class_names=names,
                                max_mib=(65600 + 400) / 2**20, codec="med-xz", block=2)
    total = len(paths)
    assert total >= 2
    start = 0
    for k, path in enumerate(paths):
        assert re.fullmatch(rf"test-{k:05d}-of-{total:05d}\.npz", path.name)
        with np.load(path, allow_pickle=False) as z:
            assert int(z["format"]) == 1 and str(z["codec"]) == "med-xz"
            assert str(z["split"]) == "test" and z["shard"].tolist() == [k, total]
            assert int(z["start"]) == start and int(z["split_size"]) == 6
            count = int(z["shape"][0])
            assert z["shape"].tolist() == [count, 2, 3, 3]
            assert z["labels"].tolist() == labels[start:start + count].tolist()
            assert z["classes"].tolist() == classes and z["class_names"].tolist() == names
            assert z["block_shapes"][:, 1:].tolist() == [[2, 3, 3]] * len(z["block_shapes"])
            assert int(z["block_shapes"][:, 0].sum()) == count
            got = np.concatenate([
                _decode_reference(z[f"block_{i:05d}"].tobytes(), tuple(s))
                for i, s in enumerate(z["block_shapes"].tolist())
            ])
            assert np.array_equal(got, images[start:start + count])
        start += count
    assert start == 6


def _decode_reference(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Plain-Python inverse of the documented body (undo R - G, B - G, then the predictor)."""
    n, h, w, ch = shape
    body = lzma.decompress(blob)
    r = [[[[body[((k * n + m) * h + i) * w + j] for j in range(w)] for i in range(h)]
          for m in range(n)] for k in range(ch)]
    out = np.zeros(shape, dtype=np.uint8)
    for m in range(n):
        for i in range(h):
            for j in range(w):
                g = r[1][m][i][j] if ch == 3 else None
                for k in range(ch):
                    v = r[k][m][i][j]
                    if g is not None and k != 1:
                        v = (v + g) % 256
                    a = int(out[m, i, j - 1, k]) if j > 0 else 0
                    b = int(out[m, i - 1, j, k]) if i > 0 else 0
                    c = int(out[m, i - 1, j - 1, k]) if i > 0 and j > 0 else 0
                    out[m, i, j, k] = (_loco(a, b, c) + v) % 256
    return out


# --------------------------------------------------------------------------- reading


def _hand_shard(path: Path, images: np.ndarray, labels: list[int], *, start: int, size: int,
                k: int = 0, n: int = 1, classes: tuple[str, ...] = ("a", "b"),
                fmt: int = 1, codec: str = "raw", **extra: np.ndarray) -> Path:
    """A raw shard written from the docstring's layout with ``np.savez`` (no figkd code)."""
    fields = {
        "format": np.int64(fmt), "codec": np.str_(codec), "split": np.str_("train"),
        "shard": np.array([k, n]), "start": np.int64(start), "split_size": np.int64(size),
        "shape": np.array(images.shape), "labels": np.array(labels, dtype=np.int64),
        "classes": np.array(classes), "images": images, **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)
    return path


def test_hand_built_shards_are_read_in_order_with_their_class_names(tmp_path: Path) -> None:
    a, b = _pixels(2, 3, 3, 3, seed=1), _pixels(3, 3, 3, 3, seed=2)
    names = np.array(["first class", "second class"])
    _hand_shard(tmp_path / "x" / "train-00001-of-00002.npz", b, [1, 0, 1], start=2, size=5,
                k=1, n=2, class_names=names)
    _hand_shard(tmp_path / "train-00000-of-00002.npz", a, [0, 1], start=0, size=5, n=2,
                class_names=names)
    images, labels, classes, class_names = shards.read_shards(tmp_path, "train")
    assert np.array_equal(images, np.concatenate([a, b])) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 1, 0, 1] and labels.dtype == np.int64
    assert classes == ["a", "b"] and class_names == ["first class", "second class"]


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        ({"fmt": 2}, "format 2 != 1"),
        ({"codec": "png"}, "unknown codec 'png'"),
        ({"start": 3}, "from 3, expected"),
        ({"classes": ("a", "c")}, "class list differs"),
    ],
)
def test_an_inconsistent_shard_is_refused_by_name(
    tmp_path: Path, second: dict, reason: str
) -> None:
    """Each check of a shard's header is live on its own, and the error names the file."""
    _hand_shard(tmp_path / "train-00000-of-00002.npz", _pixels(2, 2, 2, 3), [0, 1], start=0,
                size=4, n=2)
    bad = _hand_shard(tmp_path / "train-00001-of-00002.npz", _pixels(2, 2, 2, 3, seed=3),
                      [1, 1], **{"start": 2, "size": 4, "k": 1, "n": 2, **second})
    with pytest.raises(data.DatasetNotFoundError, match="not a readable figkd shard") as error:
        shards.read_shards(tmp_path, "train")
    assert reason in str(error.value) and bad.name in str(error.value)


def test_a_shape_header_that_disagrees_with_the_pixels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train-00000-of-00001.npz"
    np.savez(path, format=np.int64(1), codec=np.str_("raw"), start=np.int64(0),
             split_size=np.int64(3), shape=np.array([3, 2, 2, 1]),
             labels=np.zeros(2, np.int64), classes=np.array(["a"]),
             images=_pixels(2, 2, 2, 1))
    with pytest.raises(data.DatasetNotFoundError, match=r"holds \(2, 2, 2, 1\) from 0"):
        shards.read_shards(tmp_path, "train")


def test_a_split_size_that_disagrees_with_the_shards_is_refused(tmp_path: Path) -> None:
    """Shards from a pack with a part (of unknown name) never written are not taken as whole."""
    _hand_shard(tmp_path / "train-00000-of-00001.npz", _pixels(2, 2, 2, 3), [0, 1],
                start=0, size=5)
    with pytest.raises(data.DatasetNotFoundError, match="hold 2 images, their header says 5"):
        shards.read_shards(tmp_path, "train")


def test_stray_files_are_ignored_and_symlinked_folders_followed(tmp_path: Path) -> None:
    """Names that merely start like a shard (notes, temporaries, other splits) are skipped;
    parts reached through a symlinked folder (a fetched reply linked in) count."""
    elsewhere = tmp_path / "fetched"
    a, b = _pixels(1, 2, 2, 3, seed=4), _pixels(2, 2, 2, 3, seed=5)
    _hand_shard(tmp_path / "root" / "train-00000-of-00002.npz", a, [0], start=0, size=3, n=2)
    _hand_shard(elsewhere / "train-00001-of-00002.npz", b, [1, 0], start=1, size=3, k=1, n=2)
    os.symlink(elsewhere, tmp_path / "root" / "link")
    for stray in ("train-notes.txt", "train-00002-of-00002.npz.part", "train-1-of-2.npz",
                  "test-00000-of-00009.npz", ".train-00000-of-00002.npz.77.tmp.npz"):
        (tmp_path / "root" / stray).write_bytes(b"not a shard")
    found = shards.find_shards(tmp_path / "root", "train")
    assert [p.name for p in found] == ["train-00000-of-00002.npz", "train-00001-of-00002.npz"]
    assert found[1].parent.name == "link"
    images, labels, _, _ = shards.read_shards(tmp_path / "root", "train")
    assert np.array_equal(images, np.concatenate([a, b])) and labels.tolist() == [0, 1, 0]


def test_parts_of_two_packs_or_a_part_twice_are_refused(tmp_path: Path) -> None:
    one = tmp_path / "mixed"
    for name in ("train-00000-of-00002.npz", "train-00001-of-00003.npz"):
        _hand_shard(one / name, _pixels(1, 2, 2, 3), [0], start=0, size=1)
    with pytest.raises(data.DatasetNotFoundError, match="different packs .of-00002/00003"):
        shards.find_shards(one, "train")
    twice = tmp_path / "twice"
    for folder in ("call1", "call2"):
        _hand_shard(twice / folder / "train-00000-of-00001.npz", _pixels(1, 2, 2, 3), [0],
                    start=0, size=1)
    with pytest.raises(data.DatasetNotFoundError, match="shard 0 of train is there twice"):
        shards.find_shards(twice, "train")


# --------------------------------------------------------------------------- the decode cache


def _cache_file(cache: Path, path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return cache / "shards" / f"{path.stem}-{key.hexdigest()[:16]}.npy"


def test_decoded_shards_are_kept_and_reused(
    tmp_path: Path, _own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read leaves each shard's pixels as ``.npy`` (named by path, size and mtime;
    the cache folder's parents created); later reads load them instead of decoding."""
    images = _pixels(4, 3, 3, 3, seed=6)
    paths = shards.write_shards(tmp_path / "p", "train", images, np.arange(4) % 2, ["a", "b"],
                                max_mib=(65536 + 2 * 400) / 2**20, block=1)
    assert len(paths) == 2
    assert np.array_equal(shards.read_shards(tmp_path / "p", "train")[0], images)
    kept = [_cache_file(_own_cache, p) for p in paths]
    assert sorted(kept) == sorted((_own_cache / "shards").iterdir())  # no temporaries left
    assert np.array_equal(np.concatenate([np.load(k) for k in kept]), images)

    def no_decode(*_: object) -> np.ndarray:
        raise AssertionError("decoded again although the pixels are kept")

    monkeypatch.setattr(shards, "decode_blocks", no_decode)
    got = shards.read_shards(tmp_path / "p", "train")[0]
    assert np.array_equal(got, images)


def test_a_damaged_or_pickled_cache_file_is_decoded_again(
    tmp_path: Path, _own_cache: Path
) -> None:
    """A truncated ``.npy`` or one holding pickled objects is not trusted (no pickle runs)."""
    images = _pixels(2, 3, 3, 3, seed=7)
    (path,) = shards.write_shards(tmp_path / "p", "train", images, np.array([0, 1]), ["a", "b"],
                                  block=2)
    keep = _cache_file(_own_cache, path)
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"\x93NUMPY truncated")
    got = shards.read_shards(tmp_path / "p", "train")[0]
    assert np.array_equal(got, images) and np.array_equal(np.load(keep), images)
    objects = np.empty(images.shape, dtype=object)
    objects[...] = 0
    np.save(keep, objects, allow_pickle=True)
    got = shards.read_shards(tmp_path / "p", "train")[0]
    assert got.dtype == np.uint8 and np.array_equal(got, images)


# --------------------------------------------------------------------------- the dataset


def test_first_per_class_on_a_hand_worked_case() -> None:
    targets = np.array([2, 0, 2, 1, 0, 2, 1, 0])
    assert shards.first_per_class(targets, 2).tolist() == [0, 1, 2, 3, 4, 6]
    assert shards.first_per_class(targets, 1).tolist() == [0, 1, 3]
    assert shards.first_per_class(targets, 0).tolist() == []
    assert shards.first_per_class(targets, None).tolist() == list(range(8))


def test_dataset_items_grey_and_colour_and_the_test_subset(tmp_path: Path) -> None:
    """A one-channel pack gives greyscale images; ``images_uint8`` is (N, C, H, W), built once;
    the test split takes ``test_per_class`` (not the train count)."""
    grey = _pixels(5, 2, 3, 1, seed=8)
    shards.write_shards(tmp_path, "test", grey, np.array([1, 1, 0, 1, 0]), ["a", "b"], codec="raw")
    dataset = data.load_dataset("uint8-shards", tmp_path, "test", train_per_class=3,
                                test_per_class=1)
    assert dataset.targets == [1, 0] and np.array_equal(dataset.data, grey[[0, 2]])
    image = dataset.raw_image(1)
    assert image.mode == "L" and np.array_equal(np.asarray(image), grey[2, :, :, 0])
    chw = dataset.images_uint8()
    assert torch.equal(chw, torch.from_numpy(np.transpose(grey[[0, 2]], (0, 3, 1, 2)).copy()))
    assert dataset.images_uint8() is chw

    colour = _pixels(3, 2, 3, 3, seed=9)
    shards.write_shards(tmp_path, "train", colour, np.array([0, 1, 0]), ["a", "b"], codec="raw")
    full = data.load_dataset("uint8-shards", tmp_path, "train", train_per_class=None,
                             test_per_class=1)
    image, label = full[2]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), colour[2]) and label == 0
    summed = shards.ShardDataset(tmp_path, "train", transform=lambda im: int(np.sum(im)))
    assert summed[1] == (int(colour[1].astype(np.int64).sum()), 1)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        shards.ShardDataset(tmp_path, "val")
