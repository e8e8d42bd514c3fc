"""``uint8-shards``: a dataset already decoded to uint8 pixels, in ``.npz`` shard files.

``figkd pack`` writes these from any registered dataset at a fixed size (the same resize as
the uint8 cache, so the pixels equal what the fast path trains on); the reader hands the
pixels to the fast path without decoding anything.  The format exists to move a dataset to a
machine where only a few tens of MiB travel at a time (tools/device/README.md).

Layout (shards may sit in sub-folders of the root, e.g. one per transfer)::

    <root>/**/<split>-<k>-of-<n>.npz     split "train" or "test", k = 00000 .. n-1

Each shard holds a contiguous slice of its split, in the source dataset's order:

    format      1
    codec       "raw": ``images`` uint8 (N, H, W, 3), deflated by ``np.savez_compressed``
                "med-xz": ``blocks`` of at most ``block`` images, each stored as the residual
                of the LOCO-I/JPEG-LS median predictor per channel, R and B minus G, then xz
                (lossless, ~0.55x of the raw bytes on Tiny-ImageNet at 32x32, decoded
                vectorised over all images of a shard at once)
    shape       (N, H, W, C) of this shard;  labels int64 (N,)
    split, shard = (k, n), start (index of the first image in the split), split_size
    classes     class names in label order;  class_names (optional, human-readable)
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import Transform

SHARD_FORMAT = 1
CODECS = ("med-xz", "raw")
_NAME = re.compile(r"^(train|test)-(\d{5})-of-(\d{5})\.npz$")
SHARDS_LAYOUT = """
<root>/                      written by `figkd pack <dataset> --size S --out <root>`
  **/train-00000-of-0000N.npz ... train-0000(N-1)-of-0000N.npz   (any sub-folders)
  **/test-00000-of-0000M.npz  ...
"""


# --------------------------------------------------------------------------- the codec


def _median_prediction(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """LOCO-I median edge detector: a = left, b = above, c = above-left (int16 arrays)."""
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def encode_block(images: np.ndarray) -> bytes:
    """uint8 (N, H, W, C) -> xz bytes of the per-channel median-predictor residuals."""
    x = images.transpose(0, 3, 1, 2).astype(np.int16)  # N C H W
    a = np.zeros_like(x)
    a[..., :, 1:] = x[..., :, :-1]
    b = np.zeros_like(x)
    b[..., 1:, :] = x[..., :-1, :]
    c = np.zeros_like(x)
    c[..., 1:, 1:] = x[..., :-1, :-1]
    r = (x - _median_prediction(a, b, c)) % 256
    if r.shape[1] == 3:  # decorrelate the residuals: R - G, B - G
        r[:, 0] = (r[:, 0] - r[:, 1]) % 256
        r[:, 2] = (r[:, 2] - r[:, 1]) % 256
    body = r.astype(np.uint8).transpose(1, 0, 2, 3).tobytes()  # channel-major compresses best
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    return lzma.compress(body, format=lzma.FORMAT_XZ, filters=filters)


def _residuals(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """xz bytes -> int16 (N, C, H, W) median-predictor residuals (colour transform undone)."""
    n, h, w, ch = shape
    r = np.frombuffer(lzma.decompress(data), dtype=np.uint8).reshape(ch, n, h, w)
    r = r.transpose(1, 0, 2, 3).astype(np.int16)
    if ch == 3:
        r[:, 0] = (r[:, 0] + r[:, 1]) % 256
        r[:, 2] = (r[:, 2] + r[:, 1]) % 256
    return r


def _reconstruct(r: np.ndarray) -> np.ndarray:
    """Undo the median prediction, one pixel position at a time for all images at once."""
    n, ch, h, w = r.shape
    x = np.zeros((n, ch, h, w), dtype=np.int16)
    zero = np.zeros((n, ch), dtype=np.int16)
    for i in range(h):
        above = x[:, :, i - 1, :] if i else np.zeros((n, ch, w), dtype=np.int16)
        for j in range(w):
            a = x[:, :, i, j - 1] if j else zero
            c = above[:, :, j - 1] if j else zero
            x[:, :, i, j] = (_median_prediction(a, above[:, :, j], c) + r[:, :, i, j]) % 256
    return x.astype(np.uint8).transpose(0, 2, 3, 1).copy()


def decode_block(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`encode_block`: uint8 (N, H, W, C)."""
    return _reconstruct(_residuals(data, shape))


def decode_blocks(blocks: list[tuple[bytes, tuple[int, ...]]]) -> np.ndarray:
    """Several blocks of one image size decoded together (one reconstruction pass)."""
    return _reconstruct(np.concatenate([_residuals(d, s) for d, s in blocks]))


# --------------------------------------------------------------------------- writing


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.npz"


def write_shards(
    out: str | os.PathLike[str],
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    max_mib: float = 45.0,
    codec: str = "med-xz",
    block: int = 2048,
    class_names: list[str] | None = None,
) -> list[Path]:
    """Write ``images`` (uint8 N, H, W, C) and ``labels`` as shards of at most ``max_mib`` MiB.

    Images are encoded in blocks of ``block``; consecutive blocks fill a shard while it stays
    under ``max_mib`` (a single block larger than that is an error: lower ``block``).
    Existing shards of ``split`` in ``out`` are replaced.  Returns the files in order.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need uint8 images (N, H, W, C) with N labels, got {images.shape}")
    limit = int(max_mib * 2**20)
    # what a shard holds besides its blocks: class arrays, zip headers and metadata
    fixed = 64 * 1024 + np.array(list(classes), dtype=np.str_).nbytes
    if class_names is not None:
        fixed += np.array(list(class_names), dtype=np.str_).nbytes
    per_block = 8 * (images.ndim + 1) + 128  # its block_shapes row and its zip entry

    def shard_bytes(group: list[tuple[int, int, bytes]]) -> int:
        count = sum(stop - start for start, stop, _ in group)
        return fixed + sum(len(p) + per_block for _, _, p in group) + 8 * count  # + labels

    blocks: list[tuple[int, int, bytes]] = []  # (start, stop, payload)
    for start in range(0, len(images), block):
        stop = min(start + block, len(images))
        chunk = images[start:stop]
        payload = encode_block(chunk) if codec == "med-xz" else chunk.tobytes()
        if shard_bytes([(start, stop, payload)]) > limit:
            raise ValueError(
                f"one block of {stop - start} images and the shard's labels and class names "
                f"take {shard_bytes([(start, stop, payload)]) / 2**20:.2f} MiB > --max-mib "
                f"{max_mib}; use a smaller block or a larger --max-mib"
            )
        blocks.append((start, stop, payload))
    groups: list[list[tuple[int, int, bytes]]] = [[]]
    for item in blocks:
        if groups[-1] and shard_bytes([*groups[-1], item]) > limit:
            groups.append([])
        groups[-1].append(item)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{split}-*-of-*.npz"):
        old.unlink()
    paths = []
    for k, group in enumerate(groups):
        start, stop = group[0][0], group[-1][1]
        meta: dict[str, Any] = {
            "format": np.int64(SHARD_FORMAT),
            "codec": np.str_(codec),
            "split": np.str_(split),
            "shard": np.array([k, len(groups)], dtype=np.int64),
            "start": np.int64(start),
            "split_size": np.int64(len(images)),
            "shape": np.array((stop - start, *images.shape[1:]), dtype=np.int64),
            "labels": labels[start:stop],
            "classes": np.array(list(classes), dtype=np.str_),
        }
        if class_names is not None:
            meta["class_names"] = np.array(list(class_names), dtype=np.str_)
        path = out / shard_name(split, k, len(groups))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        if codec == "raw":
            np.savez_compressed(tmp, images=images[start:stop], **meta)
        else:
            meta["block_shapes"] = np.array(
                [(b - a, *images.shape[1:]) for a, b, _ in group], dtype=np.int64
            )
            payloads = {f"block_{i:05d}": np.frombuffer(p, dtype=np.uint8)
                        for i, (_, _, p) in enumerate(group)}
            np.savez(tmp, allow_pickle=False, **meta, **payloads)
        size = tmp.stat().st_size
        if size > limit:  # the estimate above is an upper bound; this is a last guard
            tmp.unlink()
            raise ValueError(
                f"shard {path.name} would be {size / 2**20:.2f} MiB > --max-mib {max_mib}; "
                "use a smaller block"
            )
        os.replace(tmp, path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- reading


def _decoded(path: Path, z: Any) -> np.ndarray:
    """Decode a med-xz shard, keeping the pixels as ``.npy`` in the uint8 cache folder
    (``$FIGKD_CACHE``), so parallel runs decode each shard once, not once per process."""
    from figkd.data.cache import default_cache_dir

    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    keep = default_cache_dir() / "shards" / f"{path.stem}-{key.hexdigest()[:16]}.npy"
    if keep.is_file():
        try:
            return np.load(keep, allow_pickle=False)
        except (OSError, ValueError):
            pass
    part = decode_blocks([
        (z[f"block_{i:05d}"].tobytes(), tuple(int(v) for v in s))
        for i, s in enumerate(z["block_shapes"])
    ])
    try:
        keep.parent.mkdir(parents=True, exist_ok=True)
        tmp = keep.with_name(f".{keep.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, part)
        os.replace(tmp, keep)
    except OSError:
        pass  # a read-only cache folder only costs the decode next time
    return part


def find_shards(root: str | os.PathLike[str], split: str) -> list[Path]:
    """The complete, ordered shard list of ``split`` under ``root`` (any depth).

    Raises a dataset error naming the missing part files when the set is incomplete.
    """
    root = Path(root)
    found: dict[int, list[Path]] = {}
    totals: set[int] = set()
    paths = sorted(Path(folder) / name for folder, _, names in os.walk(root, followlinks=True)
                   for name in names if name.startswith(f"{split}-"))
    for path in paths:
        match = _NAME.match(path.name)
        if match is None or match.group(1) != split:
            continue
        found.setdefault(int(match.group(2)), []).append(path)
        totals.add(int(match.group(3)))
    if not found:
        raise dataset_error(
            "uint8-shards", f"no {split} shards ({split}-<k>-of-<n>.npz) under {root}."
        )
    if len(totals) != 1:
        raise dataset_error(
            "uint8-shards",
            f"{split} shards under {root} come from different packs (of-"
            + "/".join(f"{t:05d}" for t in sorted(totals)) + "); delete the old ones.",
        )
    total = totals.pop()
    twice = {k: v for k, v in found.items() if len(v) > 1}
    if twice:
        k, paths = next(iter(twice.items()))
        raise dataset_error("uint8-shards", f"shard {k} of {split} is there twice: {paths}.")
    missing = [shard_name(split, k, total) for k in range(total) if k not in found]
    if missing:
        raise dataset_error(
            "uint8-shards",
            f"the {split} set under {root} is incomplete: {len(missing)} of {total} part "
            f"file(s) missing: {', '.join(missing)} (each device call carries some parts; "
            "carry the rest before reading).",
        )
    return [found[k][0] for k in range(total)]


def read_shards(
    root: str | os.PathLike[str], split: str
) -> tuple[np.ndarray, np.ndarray, list[str], list[str] | None]:
    """``(images uint8 (N, H, W, C), labels int64, classes, class_names)`` of ``split``."""
    images, labels = [], []
    classes: list[str] | None = None
    class_names: list[str] | None = None
    expected_start = 0
    size = None
    for path in find_shards(root, split):
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != SHARD_FORMAT:
                    raise ValueError(f"format {int(z['format'])} != {SHARD_FORMAT}")
                codec = str(z["codec"])
                shape = tuple(int(v) for v in z["shape"])
                if codec == "raw":
                    part = z["images"]
                elif codec == "med-xz":
                    part = _decoded(path, z)
                else:
                    raise ValueError(f"unknown codec {codec!r}")
                if part.shape != shape or int(z["start"]) != expected_start:
                    raise ValueError(f"holds {part.shape} from {int(z['start'])}, expected "
                                     f"{shape} from {expected_start}")
                these = [str(c) for c in z["classes"]]
                if classes is not None and these != classes:
                    raise ValueError("its class list differs from the other shards'")
                classes = these
                if "class_names" in z.files:
                    class_names = [str(c) for c in z["class_names"]]
                size = int(z["split_size"])
                images.append(part)
                labels.append(z["labels"].astype(np.int64))
                expected_start += len(part)
        except (OSError, ValueError, KeyError, lzma.LZMAError, EOFError) as error:
            raise dataset_error(
                "uint8-shards", f"{path} is not a readable figkd shard ({error}); pack it again."
            ) from error
    if expected_start != size:
        raise dataset_error(
            "uint8-shards", f"the {split} shards under {root} hold {expected_start} images, "
            f"their header says {size}; pack them again."
        )
    assert classes is not None
    return np.concatenate(images), np.concatenate(labels), classes, class_names


def first_per_class(targets: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in dataset order."""
    if per_class is None:
        return np.arange(len(targets))
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(targets.tolist()):
        if seen.get(t, 0) < per_class:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


class ShardDataset(torch.utils.data.Dataset[Any]):
    """A split held in memory as uint8 pixels; items are ``(transform(PIL image), label)``.

    ``images_uint8()`` gives the whole split as (N, C, H, W) uint8, which the fast path
    uses as is (no decode, no disk cache).  ``per_class`` keeps the first k images of each
    class in stored order - for a pack of Tiny-ImageNet, the same images as
    ``figkd study``'s per-class subsets of the JPEG tree.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Transform | None = None,
        per_class: int | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"uint8-shards split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        images, labels, classes, class_names = read_shards(self.root, split)
        keep = first_per_class(labels, per_class)
        if per_class is not None:
            images, labels = images[keep], labels[keep]
        self.data: np.ndarray = images
        self.targets: list[int] = [int(t) for t in labels]
        self.classes: list[str] = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.class_names = class_names or list(classes)
        self._chw: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.data)

    def raw_image(self, index: int) -> Image.Image:
        array = self.data[index]
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

    def images_uint8(self) -> torch.Tensor:
        """All images as one ``(N, C, H, W)`` uint8 tensor (built once)."""
        if self._chw is None:
            self._chw = torch.from_numpy(self.data).permute(0, 3, 1, 2).contiguous()
        return self._chw

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.raw_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __repr__(self) -> str:
        return (f"ShardDataset(root={self.root}, split={self.split!r}, samples={len(self)}, "
                f"classes={len(self.classes)}, size={tuple(self.data.shape[1:3])})")


@register_dataset(
    "uint8-shards",
    aliases=("shards", "npz-shards"),
    layout=SHARDS_LAYOUT,
    description="any dataset packed by `figkd pack` into uint8 .npz shards (fast path, no decode)",
)
def build_uint8_shards(
    root: Path,
    split: str,
    transform: Transform | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> ShardDataset:
    per_class = train_per_class if split == "train" else test_per_class
    return ShardDataset(root, split, transform, per_class=per_class)
