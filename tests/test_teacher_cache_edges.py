"""Edge cases of the teacher-logit cache's checksums and file layout.

"A cached teacher is reused only by checksum": the digests here are recomputed with
``hashlib`` over bytes laid out in the test (NumPy for the bfloat16 -> float32 widening),
and cache files are written by hand in the documented format-1 layout, not by the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from figkd.data.transforms import PRESETS, SmallImagePreset, register_preset
from figkd.engine import teacher_cache
from figkd.engine.file_lock import exclusive
from figkd.engine.teacher_cache import (
    CacheKeyMismatchError,
    CacheRangeError,
    CropFlipViews,
    ViewLogitCache,
    build_view_logits,
    cache_batch_size,
    cache_fields,
    cache_key,
    load_or_build,
    state_dict_sha256,
    stored_logits,
)

# 8 px, padding 1, flip: 3 x 3 offsets x 2 flips = 18 views
VIEWS = CropFlipViews(size=8, padding=1, flip=True)
# a preset of that view space with a mean and std chosen here, so the key's fields are known
PRESET = "digits-crop1-edges"
if PRESET not in PRESETS:
    register_preset(SmallImagePreset(
        PRESET, 8, (0.25,), (0.5,), padding=1, flip=True, tensor_input=True,
        description="test only: 8 px, RandomCrop(8, padding=1) + HFlip, mean 0.25, std 0.5",
    ))


def bf16_to_f32(values: torch.Tensor) -> np.ndarray:
    """Widen bfloat16 by its bit pattern: a bf16 is the top 16 bits of a float32."""
    bits = values.contiguous().view(torch.int16).numpy().astype(np.uint16).astype(np.uint32)
    return (bits << 16).view(np.float32)


def reference_state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over ``name|dtype|shape|`` then each tensor's own SHA-256 (bf16 as float32)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        if value.dtype == torch.bfloat16:
            raw = bf16_to_f32(value).tobytes()
        else:
            raw = value.contiguous().numpy().tobytes()
        digest.update(hashlib.sha256(raw).digest())
    return digest.hexdigest()


class Mixed(nn.Module):
    """A bfloat16 weight beside a float32 buffer: a half-converted teacher."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.5, -2.25, 3.0], [0.1, 1e-3, -7.0]],
                                                dtype=torch.bfloat16))
        self.register_buffer("scale", torch.tensor([0.5, 2.0], dtype=torch.float32))


def test_bfloat16_teacher_digest_matches_hashlib_over_widened_bytes() -> None:
    model = Mixed()
    assert state_dict_sha256(model) == reference_state_sha256(model.state_dict())


def test_bfloat16_and_float32_teachers_with_equal_values_hash_apart() -> None:
    """Same numbers, other dtype: the header's dtype keeps the two teachers apart."""
    bf16 = Mixed()
    f32 = Mixed()
    f32.weight = nn.Parameter(bf16.weight.detach().float())
    assert np.array_equal(bf16_to_f32(bf16.weight.detach()), f32.weight.detach().numpy())
    assert state_dict_sha256(f32) == reference_state_sha256(f32.state_dict())
    assert state_dict_sha256(bf16) != state_dict_sha256(f32)


def test_bfloat16_digest_sees_a_one_ulp_change() -> None:
    model = Mixed()
    before = state_dict_sha256(model)
    with torch.no_grad():  # 1.5 -> the next bfloat16 up, 1.5078125 (7 mantissa bits)
        model.weight[0, 0] = 1.5078125
    assert model.weight[0, 0].item() == 1.5078125
    assert state_dict_sha256(model) != before
    assert state_dict_sha256(model) == reference_state_sha256(model.state_dict())


# --------------------------------------------------------------------------- float16 range


def test_logits_at_exactly_float16s_largest_value_are_stored() -> None:
    """float16's largest finite value is (2 - 2**-10) * 2**15 = 65504: storable, so kept."""
    top = (2 - 2**-10) * 2**15
    assert top == 65504.0
    logits = torch.tensor([[top, -top, 1.0]])
    stored = stored_logits(logits, torch.float16)
    assert stored.dtype == torch.float16 and stored.float().tolist() == [[65504.0, -65504.0, 1.0]]


# --------------------------------------------------------------------------- the table's shape


@pytest.mark.parametrize(
    "shape",
    [
        (2, 17, 3),  # three dimensions, one view short
        (2, 19, 3),  # one view too many
        (2, 18),  # the views are right but there is no class axis
        (2, 18, 3, 1),  # an extra axis
    ],
)
def test_a_table_of_the_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="18 views"):
        ViewLogitCache(torch.zeros(shape), VIEWS)


def test_a_table_of_the_right_shape_is_accepted_and_all_filled() -> None:
    cache = ViewLogitCache(torch.zeros(2, 18, 3), VIEWS)
    assert len(cache) == 2 and cache.key == ""
    assert cache.filled.shape == (2, 18) and cache.filled.all()  # one flag per (sample, view)


def test_view_ids_outside_the_space_are_refused() -> None:
    # view 17 = crop 17 // 2 = 8 = (top 8 // 3 = 2, left 8 % 3 = 2), flip 17 % 2 = 1
    got = VIEWS.params_of(torch.tensor([0, 17]))
    assert (got["top"].tolist(), got["left"].tolist(), got["flip"].tolist()) == (
        [0, 2], [0, 2], [False, True])
    assert VIEWS.describe(0) == (0, 0, False) and VIEWS.describe(17) == (2, 2, True)
    assert all(len(v) == 0 for v in VIEWS.params_of(torch.tensor([], dtype=torch.long)).values())
    for bad in (18, -1):
        with pytest.raises(ValueError, match=r"0\.\.17"):
            VIEWS.params_of(torch.tensor([3, bad]))
        with pytest.raises(ValueError, match=r"outside 0\.\.17"):
            VIEWS.params(bad, 1)


def test_describe_without_flip_or_without_crop() -> None:
    # no flip: 9 views, view 5 = (top 5 // 3 = 1, left 5 % 3 = 2), never flipped
    assert CropFlipViews(8, 1, False).describe(5) == (1, 2, False)
    # no padding: one offset (0, 0), so view 1 is just the flipped image
    assert CropFlipViews(8, 0, True).describe(1) == (0, 0, True)
    assert CropFlipViews(8, 0, True).describe(0) == (0, 0, False)


def test_a_batch_without_crop_parameters_is_the_centre_crop() -> None:
    """No top/left/flip reported (an un-augmented batch): the centre crop, unflipped, whose id
    the class docstring gives as view_id(padding, padding, 0) = (1 * 3 + 1) * 2 + 0 = 8."""
    assert VIEWS.view_ids({}, 3).tolist() == [8, 8, 8]
    assert VIEWS.describe(8) == (1, 1, False)


# --------------------------------------------------------------------------- file layout


def hand_fields(samples: int = 2, classes: int = 3) -> dict[str, Any]:
    return {
        "format": 1,
        "dataset": "hand",
        "split": "train",
        "num_samples": samples,
        "num_classes": classes,
        "transform": {"kind": "crop_flip", "size": 8, "padding": 1, "flip": True},
        "num_views": 18,
        "dtype": "float16",
    }


def hand_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def write_hand_file(path: Path, fields: dict[str, Any], **override: Any) -> dict[str, Any]:
    """A format-1 cache file laid out by hand: logits[s, v, c] = 100 s + 10 v + c."""
    s, c = fields["num_samples"], fields["num_classes"]
    logits = (100 * torch.arange(s).view(s, 1, 1) + 10 * torch.arange(18).view(1, 18, 1)
              + torch.arange(c).view(1, 1, c)).to(torch.float16)
    filled = torch.ones(s, 18, dtype=torch.bool)
    filled[0, 5] = False
    state = {"format": 1, "key": hand_key(fields), "fields": fields, "logits": logits,
             "filled": filled}
    state.update(override)
    torch.save(state, path)
    return state


def test_a_format_1_file_laid_out_by_hand_is_reused(tmp_path: Path) -> None:
    """A file written by an earlier figkd (format 1, key = SHA-256 of the sorted JSON) loads."""
    fields = hand_fields()
    write_hand_file(tmp_path / "c.pt", fields)
    cache = ViewLogitCache.load(tmp_path / "c.pt", expected=hand_fields())
    assert cache.key == hand_key(fields) and cache.views == VIEWS
    assert cache.filled.sum() == 2 * 18 - 1 and not cache.filled[0, 5]
    # sample 1, view 13 = crop (top 2, left 0) flipped: (2 * 3 + 0) * 2 + 1;
    # logits 100 * 1 + 10 * 13 + c = 230, 231, 232
    params = {"top": torch.tensor([2]), "left": torch.tensor([0]), "flip": torch.tensor([True])}
    assert cache.lookup(torch.tensor([1]), params).tolist() == [[230.0, 231.0, 232.0]]


def test_lookup_delivers_on_the_requested_device(tmp_path: Path) -> None:
    """The table stays where it is; the batch's logits go where the loss runs ("meta" stands
    in for a GPU here: it is a device other than the table's on any machine)."""
    write_hand_file(tmp_path / "c.pt", hand_fields())
    cache = ViewLogitCache.load(tmp_path / "c.pt")
    params = {"top": torch.tensor([0]), "left": torch.tensor([0]), "flip": torch.tensor([False])}
    out = cache.lookup(torch.tensor([1]), params, device=torch.device("meta"))
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (1, 3)
    here = cache.lookup(torch.tensor([1]), params)  # no device: the table's own
    assert here.device.type == "cpu" and here.tolist() == [[100.0, 101.0, 102.0]]


def test_a_saved_file_has_the_format_1_layout(tmp_path: Path) -> None:
    fields = hand_fields()
    logits = torch.full((2, 18, 3), 0.25, dtype=torch.float16)
    path = tmp_path / "a" / "b" / "c.pt"  # two missing folders
    ViewLogitCache(torch.zeros(2, 18, 3, dtype=torch.float16), VIEWS, fields).save(path)
    ViewLogitCache(logits, VIEWS, fields).save(path)  # rewritten in place: the folder exists
    state = torch.load(path, weights_only=True)
    assert state["format"] == 1 and state["key"] == hand_key(fields)
    assert state["fields"] == fields and torch.equal(state["logits"], logits)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temp left


def test_a_saved_file_is_on_disk_before_it_replaces_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync before os.replace: after a power cut the name points at a whole file."""
    from figkd.engine import checkpoint

    events: list[str] = []
    real_fsync, real_replace = checkpoint.os.fsync, checkpoint.os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        events.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    ViewLogitCache(torch.zeros(2, 18, 3, dtype=torch.float16), VIEWS, hand_fields()).save(
        tmp_path / "c.pt"
    )
    assert events == ["fsync", "replace"]


class Payload:
    """Not a tensor or plain container: weights-only loading must refuse to unpickle it."""


def test_a_cache_file_carrying_a_pickled_object_is_not_unpickled(tmp_path: Path) -> None:
    write_hand_file(tmp_path / "c.pt", hand_fields(), extra=Payload())
    with pytest.raises(CacheKeyMismatchError, match="delete it and the next run rebuilds it") as info:
        ViewLogitCache.load(tmp_path / "c.pt")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)  # weights-only refused it


def test_a_truncated_cache_file_is_named_with_the_fix(tmp_path: Path) -> None:
    """A damaged file (here: its first 300 bytes) gives our message, not torch's zip error."""
    write_hand_file(tmp_path / "c.pt", hand_fields())
    (tmp_path / "t.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:300])
    with pytest.raises(CacheKeyMismatchError, match=r"cache .*t\.pt: it is damaged, truncated"):
        ViewLogitCache.load(tmp_path / "t.pt")


@pytest.mark.parametrize("stored_format", [0, 2, None])
def test_a_file_of_another_format_is_refused(tmp_path: Path, stored_format: int | None) -> None:
    write_hand_file(tmp_path / "c.pt", hand_fields(), format=stored_format)
    with pytest.raises(CacheKeyMismatchError, match="not a figkd teacher-logit cache of format 1"):
        ViewLogitCache.load(tmp_path / "c.pt")


def test_a_file_whose_filled_mask_has_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    """The logits fit the fields but the mask does not: refused, not half-trusted."""
    write_hand_file(tmp_path / "c.pt", hand_fields(), filled=torch.ones(2, 17, dtype=torch.bool))
    with pytest.raises(CacheKeyMismatchError, match="delete it"):
        ViewLogitCache.load(tmp_path / "c.pt")


def test_a_file_whose_logits_have_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    write_hand_file(tmp_path / "c.pt", hand_fields(),
                    logits=torch.zeros(2, 18, 4, dtype=torch.float16))
    with pytest.raises(CacheKeyMismatchError, match=r"expected \(2, 18, 3\)"):
        ViewLogitCache.load(tmp_path / "c.pt")


def test_a_file_for_other_fields_is_refused_even_with_a_valid_key(tmp_path: Path) -> None:
    write_hand_file(tmp_path / "c.pt", hand_fields())
    with pytest.raises(CacheKeyMismatchError, match="dataset: file 'hand' != run 'other'"):
        ViewLogitCache.load(tmp_path / "c.pt", expected=dict(hand_fields(), dataset="other"))


# --------------------------------------------------------------------------- the key's fields


def test_cache_fields_hold_what_the_logits_depend_on() -> None:
    """Every field written out by hand; the images are hashed in logical (C) order even
    when the tensor is a transposed view."""
    torch.manual_seed(5)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8).transpose(2, 3)
    assert not images.is_contiguous()
    fields = cache_fields(dataset="hand", split="train", images=images, teacher_sha256="t" * 64,
                          preset=PRESET, scale=16.0, dtype="float16", num_classes=3,
                          amp="bf16", extra={"val_seed": 7})
    assert fields == {
        "format": 1,
        "dataset": "hand",
        "split": "train",
        "num_samples": 4,
        "images_sha256": hashlib.sha256(np.ascontiguousarray(images.numpy()).tobytes())
        .hexdigest(),
        "teacher_sha256": "t" * 64,
        "num_classes": 3,
        "transform": {"kind": "crop_flip", "size": 8, "padding": 1, "flip": True,
                      "mean": [0.25], "std": [0.5], "scale": 16.0},
        "input_size": [1, 8, 8],
        "num_views": 18,
        "amp": "bf16",
        "dtype": "float16",
        "val_seed": 7,
    }
    assert cache_key(fields) == hand_key(fields)


def test_load_or_build_records_the_files_size_and_name(tmp_path: Path) -> None:
    """One pair computed, but the record sizes the whole table: 10 samples x 18 views x 100
    classes x 4 bytes = 72000 B = 72000 / 2**20 MiB = 0.0687 -> 0.1."""
    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    fields = cache_fields(dataset="hand", split="train", images=images, teacher_sha256="t",
                          preset=PRESET, scale=16.0, dtype="float32", num_classes=100)
    needed = torch.zeros(10, 18, dtype=torch.bool)
    needed[3, 7] = True
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 100))
    cache, record = load_or_build(teacher, fields, images, PRESET, tmp_path, needed=needed)
    assert record["size_mb"] == 0.1 and record["dtype"] == "float32"
    counts = (record["computed"], record["filled"], record["samples"], record["views"])
    assert counts == (1, 1, 10, 18)
    key = hand_key(fields)
    assert record["key"] == key
    assert Path(record["path"]) == (tmp_path / f"hand-train-{key[:24]}.pt").resolve()
    assert cache.logits.dtype == torch.float32 and cache.filled.sum() == 1 and cache.filled[3, 7]


# --------------------------------------------------------------------------- progress lines


def test_progress_lines_every_30_seconds_with_rate_and_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clock that reads 1000 s at the start and 1030, 1048, 1078.5 s after each batch of 30:
    30 s is not past the 30 s interval, 48 s is (60 views in 48 s = 1.25/s, 30 left =
    0.4 min), and 30.5 s later so is the last batch (90 in 78.5 s = 1.15/s, none left)."""
    readings = iter([1000.0, 1030.0, 1048.0, 1078.5])
    # the module's own ``time`` only: pytest keeps the real clock
    monkeypatch.setattr(teacher_cache, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    lines: list[str] = []
    cache = ViewLogitCache.empty(5, 3, VIEWS)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    images = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    assert cache.fill(teacher, images, PRESET, scale=16.0, batch_size=30, log=lines.append) == 90
    assert lines == [
        "teacher cache: 60/90 views, 1 img/s, 0.4 min left",
        "teacher cache: 90/90 views, 1 img/s, 0.0 min left",
    ]
    assert cache.filled.all() and not cache.logits.isnan().any()


# --------------------------------------------------------------------------- the file's lock
# flock locks belong to an open file, so a second open() in this process contends like
# another run would.

fcntl = pytest.importorskip("fcntl")


def _try_lock(lock: Path) -> bool:
    """Whether an exclusive lock on ``lock`` can be taken right now (released at once)."""
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_the_lock_is_held_inside_the_block_only(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "b" / "cache.pt"  # folders missing, the file need not exist
    lock = tmp_path / "a" / "b" / ".cache.pt.lock"
    with exclusive(cache):
        assert lock.exists() and not _try_lock(lock)
    assert _try_lock(lock)
    with exclusive(cache):  # again, now that the folder and lock file exist
        assert not _try_lock(lock)
    assert _try_lock(lock) and not cache.exists()


@pytest.mark.parametrize("say", [True, False])
def test_a_second_run_waits_for_the_lock_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, say: bool
) -> None:
    from figkd.engine import file_lock

    cache = tmp_path / "cache.pt"
    lines: list[str] = []
    refused, inside = threading.Event(), threading.Event()

    def flock(handle: Any, operation: int) -> None:  # the real flock, telling us when it refuses
        try:
            fcntl.flock(handle, operation)
        except BlockingIOError:
            refused.set()
            raise

    monkeypatch.setattr(file_lock, "fcntl", SimpleNamespace(
        flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))

    def second_run() -> None:
        with exclusive(cache, lines.append if say else None):
            inside.set()

    with open(tmp_path / ".cache.pt.lock", "a") as first:  # the first run holds the lock
        fcntl.flock(first, fcntl.LOCK_EX)
        waiter = threading.Thread(target=second_run)
        waiter.start()
        assert refused.wait(timeout=30)  # the second run found the lock taken
        assert not inside.is_set()
        fcntl.flock(first, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert inside.is_set() and not waiter.is_alive()
    if say:
        assert lines[0] == "waiting for cache.pt: another run is extending it"
        assert len(lines) == 2 and re.fullmatch(r"  got it after \d+\.\d s", lines[1])
    else:
        assert lines == []


# --------------------------------------------------------------------------- engine glue


class _Main:
    is_main, enabled, world_size, rank = True, False, 1, 0


def _run(tmp_path: Path, images: Any, classes: int, mode: str, dtype: str, max_gb: float) -> Any:
    """The config and data a trainer hands :func:`resolve_teacher_cache`, as plain stubs."""
    cfg = SimpleNamespace(
        teacher=SimpleNamespace(cache=mode, cache_dtype=dtype, cache_max_gb=max_gb,
                                cache_views="all", cache_dir=str(tmp_path / "cache"),
                                cache_batch_size=None),
        data=SimpleNamespace(preset=PRESET, dataset="hand", val_fraction=0.1, val_seed=3,
                             batch_size=64, eval_batch_size=64),
        train=SimpleNamespace(epochs=1, channels_last=False, amp="none"),
    )
    source = SimpleNamespace(images=images, augment=SimpleNamespace(scale=16.0))
    data = SimpleNamespace(path="fast", train=SimpleNamespace(loader=source), num_classes=classes)
    return cfg, data


@pytest.mark.parametrize(
    ("dtype", "limit", "need"),
    [
        # 10**6 samples x 18 views x 100 classes x 2 bytes = 3.6e9 B = 3.6 GB
        ("float16", 3.5, "3.6"),
        # x 4 bytes = 7.2 GB
        ("float32", 7.1, "7.2"),
    ],
)
def test_a_table_over_cache_max_gb_is_refused_under_on(
    tmp_path: Path, dtype: str, limit: float, need: str
) -> None:
    from figkd.engine.teacher_cache import resolve_teacher_cache

    cfg, data = _run(tmp_path, range(10**6), 100, "on", dtype, limit)  # only len() is read
    with pytest.raises(ValueError) as info:
        resolve_teacher_cache(cfg, data, nn.Identity(), None, nn.Identity(),
                              torch.device("cpu"), _Main())
    assert str(info.value) == (
        f"teacher.cache=on: 1000000 samples x 18 views x 100 classes need {need} GB > "
        f"teacher.cache_max_gb={limit}; use teacher.cache=auto or none"
    )


def test_a_table_of_exactly_cache_max_gb_is_built_and_keyed_by_the_teachers_file(
    tmp_path: Path,
) -> None:
    """10 samples x 18 views x 10 classes x 2 bytes = 3600 B = 3.6e-6 GB: at the limit, so
    cached; the key holds the teacher checkpoint's SHA-256 when the trainer has one."""
    from figkd.engine.teacher_cache import resolve_teacher_cache

    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cfg, data = _run(tmp_path, images, 10, "on", "float16", 3.6e-6)
    cache, record = resolve_teacher_cache(cfg, data, teacher, {"sha256": "f" * 64},
                                          nn.Identity(), torch.device("cpu"), _Main())
    assert cache is not None and record["status"] == "built" and record["computed"] == 180
    stored = torch.load(record["path"], weights_only=True)["fields"]
    assert stored["teacher_sha256"] == "f" * 64
    assert (stored["val_fraction"], stored["val_seed"]) == (0.1, 3)
    # no file digest (a teacher built in code): the weights' own digest, as worked out above
    cfg, data = _run(tmp_path / "b", images, 10, "on", "float16", 3.6e-6)
    _, record = resolve_teacher_cache(cfg, data, teacher, None, nn.Identity(),
                                      torch.device("cpu"), _Main())
    stored = torch.load(record["path"], weights_only=True)["fields"]
    assert stored["teacher_sha256"] == reference_state_sha256(teacher.state_dict())


def test_data_off_the_fast_path_is_refused_even_with_a_loader_attached(tmp_path: Path) -> None:
    """The path decides, not whether the data object happens to carry a ``loader``."""
    from figkd.engine.teacher_cache import resolve_teacher_cache

    cfg, data = _run(tmp_path, torch.zeros(10, 1, 8, 8, dtype=torch.uint8), 10, "on",
                     "float16", 1.0)
    data.path = "torch"
    with pytest.raises(ValueError, match="teacher.cache=on: the training data is not on the"):
        resolve_teacher_cache(cfg, data, nn.Identity(), None, nn.Identity(),
                              torch.device("cpu"), _Main())


def test_breakeven_runs_is_build_cost_over_cost_per_run() -> None:
    from figkd.engine.teacher_cache import breakeven_runs

    assert breakeven_runs(1000, 250) == 4.0  # 1000 teacher forwards / 250 per live run
    assert breakeven_runs(1000, 1) == 1000.0
    assert breakeven_runs(1000, 0) == math.inf  # a run that needs no teacher never pays back
    assert breakeven_runs(1000, -5) == math.inf


def test_one_image_is_enough_and_none_is_refused() -> None:
    torch.manual_seed(1)
    image = torch.randint(0, 17, (1, 1, 8, 8), dtype=torch.uint8)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    logits = build_view_logits(teacher, image, PRESET, scale=16.0, dtype=torch.float32)
    assert logits.shape == (1, 18, 4)
    # view 8 is the centre crop, unflipped: the image itself, normalised by hand
    with torch.no_grad():
        live = teacher((image.float() / 16.0 - 0.25) / 0.5)
    torch.testing.assert_close(logits[:, 8], live, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="empty dataset"):
        build_view_logits(teacher, image[:0], PRESET, scale=16.0)


# --------------------------------------------------------------------------- the range check


class OneBadBatch(nn.Module):
    """Logits 0.5 everywhere, except ``value`` in one entry of the ``bad_call``-th batch."""

    def __init__(self, bad_call: int, value: float) -> None:
        super().__init__()
        self.bad_call, self.value, self.calls = bad_call, value, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = torch.full((len(x), 3), 0.5)
        if self.calls == self.bad_call:
            out[len(x) // 2, 1] = self.value
        return out


@pytest.mark.parametrize(("value", "message"), [
    (7.0e4, r"\|z\| = 7e\+04, beyond torch.float16"),
    (math.inf, "non-finite logits"),
    (math.nan, "non-finite logits"),
])
def test_one_bad_logit_in_a_middle_batch_fails_the_fill_and_fills_nothing(
    value: float, message: str
) -> None:
    # the check runs once after the last batch (no GPU sync per batch), so it must still
    # see a value in batch 2 of 3, and the pairs must not count as filled
    cache = ViewLogitCache.empty(5, 3, VIEWS)
    images = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    teacher = OneBadBatch(bad_call=2, value=value)
    with pytest.raises(CacheRangeError, match=message):
        cache.fill(teacher, images, PRESET, scale=16.0, batch_size=30)
    assert teacher.calls == 3 and not cache.filled.any()
    wide = ViewLogitCache.empty(5, 3, VIEWS, dtype=torch.float32)
    if math.isfinite(value):  # float32 holds 7e4: stored exactly, beside the 0.5s
        assert wide.fill(OneBadBatch(2, value), images, PRESET, scale=16.0, batch_size=30) == 90
        assert wide.filled.all() and (wide.logits == value).sum() == 1
        assert (wide.logits == 0.5).sum() == 90 * 3 - 1


def test_the_build_batch_follows_teacher_cache_batch_size() -> None:
    cfg = SimpleNamespace(teacher=SimpleNamespace(cache_batch_size=None),
                          data=SimpleNamespace(batch_size=64, eval_batch_size=256))
    assert cache_batch_size(cfg, torch.device("cpu")) == 64
    assert cache_batch_size(cfg, torch.device("cuda")) == 256
    cfg.teacher.cache_batch_size = 2048
    assert cache_batch_size(cfg, torch.device("cpu")) == 2048
    assert cache_batch_size(cfg, torch.device("cuda")) == 2048
    from figkd.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="teacher.cache_batch_size must be >= 1, got 0"):
        load_config(None, ["teacher.cache_batch_size=0"])
