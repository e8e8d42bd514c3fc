"""Teacher-logit cache over every crop/flip view (figkd.engine.teacher_cache).

The references here crop and flip images with plain tensor slicing (and torchvision's
PIL ops for the view-id mapping), independently of the cache's own batch arithmetic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from figkd.config import config_from_dict
from figkd.data import BatchAugment, GPUBatchLoader, TensorImageCache, get_preset
from figkd.data.transforms import (
    DIGITS_MEAN,
    DIGITS_STD,
    PRESETS,
    SmallImagePreset,
    register_preset,
)
from figkd.engine import Trainer, load_weights_only, model_payload, save_atomic
from figkd.engine.data import FastSource
from figkd.engine.teacher_cache import (
    CacheKeyMismatchError,
    CacheRangeError,
    CropFlipViews,
    ViewLogitCache,
    build_view_logits,
    cache_fields,
    load_or_build,
    stored_logits,
    used_views,
)
from figkd.losses import KDLoss
from figkd.models import create_model

# digits (8x8, 1 channel) with a CIFAR-style crop: 3 x 3 offsets x 2 flips = 18 views
PRESET = "digits-crop1-test"
if PRESET not in PRESETS:
    register_preset(SmallImagePreset(
        PRESET, 8, DIGITS_MEAN, DIGITS_STD, padding=1, flip=True, tensor_input=True,
        description="test only: digits with RandomCrop(8, padding=1) + HFlip",
    ))


def crop_flip_views(preset: Any) -> CropFlipViews:
    """The view space of a preset that has one (every preset these tests enumerate)."""
    views = CropFlipViews.from_preset(preset)
    assert views is not None, f"{preset} has no finite crop/flip view space"
    return views


def reference_view(images: Tensor, top: int, left: int, flip: bool, pad: int) -> Tensor:
    """Zero-pad, crop at (top, left), maybe flip: plain slicing, no figkd code."""
    size = images.shape[-1]
    padded = F.pad(images, (pad, pad, pad, pad))
    out = padded[..., top : top + size, left : left + size]
    return out.flip(-1) if flip else out


def normalise(images: Tensor, spec: Any, scale: float = 255.0) -> Tensor:
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (images.float() / scale - mean) / std


class CountingTeacher(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.images += len(x)
        return self.model(x)


def test_cifar_view_space_has_162_views_and_each_id_is_its_crop() -> None:
    views = CropFlipViews.from_preset("cifar")
    assert views is not None and len(views) == 162 and views.offsets == 9
    assert {views.describe(v) for v in range(162)} == {
        (t, l, f) for t in range(9) for l in range(9) for f in (False, True)
    }
    ids = torch.arange(162)
    params = {k: torch.cat([views.params(int(v), 1)[k] for v in ids])
              for k in ("top", "left", "flip")}
    assert torch.equal(views.view_ids(params, 162), ids)  # id -> params -> id round trip
    centre = {"top": torch.tensor([4]), "left": torch.tensor([4]), "flip": torch.tensor([False])}
    assert views.describe(int(views.view_ids(centre, 1))) == (4, 4, False)
    # the batch path renders each view as torchvision's pad + crop + flip on PIL images
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    augment = BatchAugment("cifar", train=True)
    for view in (0, 1, 17, 80, 81, 161):
        top, left, flip = views.describe(view)
        got = augment.apply(images, views.params(view, 2))
        for i in range(2):
            pil = TF.pad(TF.to_pil_image(images[i]), [4])
            pil = TF.crop(pil, top, left, 32, 32)
            pil = TF.hflip(pil) if flip else pil
            spec = get_preset("cifar")
            want = TF.normalize(TF.to_tensor(pil), spec.mean, spec.std)
            torch.testing.assert_close(got[i], want, rtol=0, atol=1e-6)
    assert CropFlipViews.from_preset("tiny-imagenet-64") is None  # rotation: not enumerable
    assert len(crop_flip_views("tiny-imagenet-64-crop")) == 17 * 17 * 2
    assert len(crop_flip_views("digits")) == 1


def test_cached_logits_equal_a_live_teacher_on_self_made_views() -> None:
    torch.manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    teacher = create_model("tiny_cnn", num_classes=100, width=8).eval()
    views = crop_flip_views("cifar")
    logits = build_view_logits(teacher, images, "cifar", batch_size=64)
    assert logits.shape == (3, 162, 100) and logits.dtype == torch.float16
    spec = get_preset("cifar")
    for view in (0, 7, 40, 81, 161):
        top, left, flip = views.describe(view)
        with torch.no_grad():
            live = teacher(normalise(reference_view(images, top, left, flip, 4), spec))
        # fp16 storage: relative rounding error <= 2**-11 (plus fp32 batch-composition noise)
        torch.testing.assert_close(logits[:, view].float(), live, rtol=2**-10, atol=1e-4)


def test_cache_file_is_reused_without_teacher_calls_and_refuses_other_keys(tmp_path: Path) -> None:
    torch.manual_seed(2)
    images = torch.randint(0, 17, (10, 1, 8, 8), dtype=torch.uint8)
    teacher = CountingTeacher(create_model("tiny_cnn", num_classes=10, in_channels=1, width=4))
    fields = cache_fields(dataset="digits", split="train", images=images, teacher_sha256="abc",
                          preset=PRESET, scale=16.0, dtype="float16", num_classes=10)
    half = torch.zeros(10, 18, dtype=torch.bool)
    half[:, :9] = True  # a run that only draws views 0..8
    first, record = load_or_build(teacher, fields, images, PRESET, tmp_path, needed=half,
                                  batch_size=4)
    assert record["status"] == "built" and record["views"] == 18 and record["samples"] == 10
    assert record["computed"] == record["filled"] == teacher.images == 90
    assert first.logits[:, 9:].isnan().all() and not first.logits[:, :9].isnan().any()
    name = Path(record["path"]).name
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{name}.lock", name]  # no temp left
    cache, second = load_or_build(teacher, fields, images, PRESET, tmp_path, batch_size=4)
    assert second["status"] == "extended" and second["computed"] == 90 and second["filled"] == 180
    assert teacher.images == 180 and teacher.calls == 2 * 90 / 4 + 1  # mixed-view batches of 4
    assert torch.equal(cache.logits[:, :9], first.logits[:, :9])
    again, third = load_or_build(teacher, fields, images, PRESET, tmp_path)
    assert third["status"] == "hit" and third["computed"] == 0 and teacher.images == 180
    assert torch.equal(again.logits, cache.logits)

    other = dict(fields, teacher_sha256="def")
    with pytest.raises(CacheKeyMismatchError, match="teacher_sha256: file 'abc' != run 'def'"):
        ViewLogitCache.load(record["path"], expected=other)
    state = torch.load(record["path"], weights_only=True)
    state["fields"]["num_samples"] = 11  # tampered: the key no longer matches the fields
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CacheKeyMismatchError, match="stored key does not match"):
        ViewLogitCache.load(tmp_path / "bad.pt")


def test_lookup_follows_the_loaders_augmentation() -> None:
    """The loader's reported crop/flip picks the cached logits of exactly its images."""
    torch.manual_seed(3)
    cache = TensorImageCache(torch.randint(0, 17, (12, 1, 8, 8), dtype=torch.uint8),
                             torch.arange(12), [str(i) for i in range(12)], scale=16.0)
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4).eval()
    views = crop_flip_views(PRESET)
    table = ViewLogitCache(build_view_logits(teacher, cache.images, PRESET, scale=16.0,
                                             dtype=torch.float32), views)
    loader = GPUBatchLoader(cache, 5, PRESET, train=True, seed=0)
    loader.return_params = True
    for images, index, params in loader:
        with torch.no_grad():
            live = teacher(images)
        torch.testing.assert_close(table.lookup(index, params), live, rtol=1e-5, atol=1e-5)


def test_used_views_cover_every_ddp_rank() -> None:
    """Rank 0 fills the file for all ranks: the plan replays each rank's shard."""
    cache = TensorImageCache(torch.zeros(20, 1, 8, 8, dtype=torch.uint8), torch.arange(20),
                             [str(i) for i in range(20)], scale=16.0)
    views = crop_flip_views(PRESET)
    loaders = [GPUBatchLoader(cache, 4, PRESET, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    want = torch.zeros(20, len(views), dtype=torch.bool)
    for loader in loaders:
        for epoch in (1, 2):
            for index, params in loader.plan(epoch):
                want[index, views.view_ids(params, len(index))] = True
    own = torch.zeros_like(want)
    for epoch in (1, 2):
        for index, params in loaders[0].plan(epoch):
            own[index, views.view_ids(params, len(index))] = True
    assert (want & ~own).any()  # rank 1 draws pairs rank 0 never sees
    assert torch.equal(used_views(loaders[0], views, 20, (1, 2)), want)
    assert loaders[0].rank == 0  # restored


# --------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)),
                path)
    return path


def run_cfg(out: Path, name: str, teacher_path: Path, cache: str, **train: Any):
    return config_from_dict({
        "experiment": name,
        "output_dir": str(out),
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "teacher": {"name": "tiny_cnn", "args": {"width": 8}, "checkpoint": str(teacher_path),
                    "cache": cache, "cache_dir": str(out / "cache"), **train.pop("teacher", {})},
        "loss": {"name": "kd"},
        "data": {"dataset": "digits", "preset": PRESET, "num_workers": 0, "loader": "fast"},
        "train": {"epochs": 2, "device": "cpu", "num_threads": 1, "progress": "none",
                  "max_steps_per_epoch": 4, "deterministic": True, "eval_teacher": False,
                  **train},
    })


@pytest.fixture()
def counted_teachers(monkeypatch: pytest.MonkeyPatch) -> list[CountingTeacher]:
    """The teachers the trainer loads, in load order, each counting the images it scores."""
    import figkd.engine.trainer as trainer_module

    teachers: list[CountingTeacher] = []
    real = trainer_module.load_teacher

    def counting(*args: Any, **kwargs: Any):
        model, record = real(*args, **kwargs)
        teachers.append(CountingTeacher(model))
        return teachers[-1], record

    monkeypatch.setattr(trainer_module, "load_teacher", counting)
    return teachers


def test_distillation_with_the_cache_matches_the_live_teacher(
    tmp_path: Path, teacher_file: Path, counted_teachers: list[CountingTeacher]
) -> None:
    teachers = counted_teachers
    weights, summaries = {}, {}
    for name, cache, dtype in (("live", "none", "float16"), ("fp16", "on", "float16"),
                               ("fp32", "on", "float32"), ("again", "auto", "float16")):
        cfg = run_cfg(tmp_path, name, teacher_file, cache, teacher={"cache_dtype": dtype})
        summaries[name] = Trainer(cfg, tmp_path / name).fit()
        weights[name] = load_weights_only(tmp_path / name / "checkpoints/last.pt")["model"]
    live_calls, fp16_calls, fp32_calls, again_calls = (t.images for t in teachers)
    assert live_calls == 2 * 4 * 64  # 2 epochs x 4 steps x batch 64, no evaluation
    used = summaries["fp16"]["teacher_cache"]["computed"]
    assert 0 < used <= live_calls and summaries["fp16"]["teacher_cache"]["filled"] == used
    assert fp16_calls == fp32_calls == used  # the drawn views once, then no live teacher at all
    assert again_calls == 0  # the fp16 file is reused: nothing recomputed
    assert summaries["live"]["teacher_cache"] == {"mode": "none", "status": "off"}
    assert summaries["fp16"]["teacher_cache"]["status"] == "built"
    assert summaries["again"]["teacher_cache"]["status"] == "hit"
    assert summaries["again"]["teacher_cache"]["path"] == summaries["fp16"]["teacher_cache"]["path"]
    for key, value in weights["live"].items():
        # float32 storage: the same logits up to batch-composition rounding (measured: equal)
        torch.testing.assert_close(weights["fp32"][key], value, rtol=1e-5, atol=1e-6)
        # float16 storage: teacher logits off by <= 2**-11 relative, which moves the KD
        # gradient by ~1e-4 of its size; 8 SGD steps at lr 0.05 change weights by ~3e-7
        # (measured max |diff|), so 1e-5 absolute leaves 30x headroom and still fails on
        # a wrong view (a different crop moves logits by O(1))
        torch.testing.assert_close(weights["fp16"][key], value, rtol=1e-4, atol=1e-5)
        assert torch.equal(weights["again"][key], weights["fp16"][key])


def test_a_resumed_run_computes_only_the_views_it_still_needs(
    tmp_path: Path, teacher_file: Path
) -> None:
    """A run killed after epoch 1 and resumed where the cache file is gone (another machine)
    computes the views of epochs 2-3 only, and ends with the uninterrupted run's weights."""
    import shutil

    full = Trainer(run_cfg(tmp_path / "a", "full", teacher_file, "on", epochs=3),
                   tmp_path / "full")
    done = full.fit()

    def killed(record: Any) -> None:
        if record.epoch == 1:
            raise RuntimeError("machine taken back")

    cfg = run_cfg(tmp_path / "b", "cut", teacher_file, "on", epochs=3)
    with pytest.raises(RuntimeError, match="taken back"):
        Trainer(cfg, tmp_path / "cut", on_epoch_end=killed).fit()
    shutil.rmtree(tmp_path / "b" / "cache")
    resumed = Trainer(cfg, tmp_path / "cut", resume=True)
    summary = resumed.fit()

    views = crop_flip_views(get_preset(PRESET))
    train = resumed.data.train
    assert isinstance(train, FastSource)
    samples = len(train.loader.images)
    later = int(used_views(train, views, samples, (2, 3)).sum())
    every = int(used_views(train, views, samples, (1, 2, 3)).sum())
    assert done["teacher_cache"]["computed"] == every
    assert summary["teacher_cache"]["computed"] == later < every
    want = load_weights_only(tmp_path / "full" / "checkpoints/last.pt")["model"]
    got = load_weights_only(tmp_path / "cut" / "checkpoints/last.pt")["model"]
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_logits_beyond_float16_are_refused_not_stored_as_inf(tmp_path: Path) -> None:
    big = torch.tensor([[1.0, -7.0e4], [3.0, 2.0]])
    with pytest.raises(CacheRangeError, match=r"\|z\| = 7e\+04, beyond torch.float16"):
        stored_logits(big, torch.float16)
    assert torch.equal(stored_logits(big, torch.float32), big)
    with pytest.raises(CacheRangeError, match="non-finite"):
        stored_logits(torch.tensor([[0.0, math.nan]]), torch.float32)

    # a teacher whose logits overflow float16: "auto" trains with the live teacher (the same
    # weights as teacher.cache=none), "on" stops with the fix, float32 caches them
    torch.manual_seed(0)
    loud = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)
    assert isinstance(loud.fc, nn.Linear)
    with torch.no_grad():
        for parameter in loud.fc.parameters():
            parameter.mul_(1e6)
    path = tmp_path / "loud.pt"
    save_atomic(model_payload(loud), path)
    auto = Trainer(run_cfg(tmp_path, "auto", path, "auto"), tmp_path / "auto").fit()
    assert auto["teacher_cache"]["status"] == "live"
    assert "teacher.cache_dtype=float32" in auto["teacher_cache"]["reason"]
    Trainer(run_cfg(tmp_path, "none", path, "none"), tmp_path / "none").fit()
    a = load_weights_only(tmp_path / "auto" / "checkpoints/last.pt")["model"]
    b = load_weights_only(tmp_path / "none" / "checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"teacher.cache=on: the teacher's logits reach"):
        Trainer(run_cfg(tmp_path, "on", path, "on"), tmp_path / "on").fit()
    wide = run_cfg(tmp_path, "fp32", path, "on", teacher={"cache_dtype": "float32"})
    assert Trainer(wide, tmp_path / "fp32").fit()["teacher_cache"]["status"] == "built"


class TwoView(KDLoss):
    num_views: ClassVar[int] = 2

    def forward(self, student_logits, teacher_logits, targets, **context):
        context.pop("student_logits_strong"), context.pop("teacher_logits_strong")
        return super().forward(student_logits, teacher_logits, targets)


class NeedsFeatures(KDLoss):
    needs_features: ClassVar[bool] = True


class _TorchPath:
    path = "torch"


@pytest.mark.parametrize(("loss_cls", "data", "reason"), [
    (NeedsFeatures, None, "it needs the teacher's features"),
    (TwoView, _TorchPath(), "only the fast path's weak view can come from the cache"),
])
def test_methods_needing_more_fall_back_to_the_live_teacher(
    tmp_path: Path, teacher_file: Path, capsys: pytest.CaptureFixture[str], loss_cls: type,
    data: Any, reason: str,
) -> None:
    from figkd.engine.teacher_cache import resolve_teacher_cache

    cfg = run_cfg(tmp_path, "mv", teacher_file, "on")
    cache, record = resolve_teacher_cache(cfg, data, nn.Identity(), None, loss_cls(),
                                          torch.device("cpu"), _Main())
    assert cache is None and record["status"] == "live" and reason in record["reason"]
    line = capsys.readouterr().out.strip()
    assert line.startswith("teacher cache: using the live teacher for") and "\n" not in line


def test_two_view_runs_take_the_weak_view_from_the_cache(
    tmp_path: Path, teacher_file: Path, counted_teachers: list[CountingTeacher]
) -> None:
    """MLKD: the weak view's teacher logits come from the cache, the strong view's from the
    live teacher, and training ends where the all-live run ends (float32 storage)."""
    teachers = counted_teachers
    summaries, weights = {}, {}
    for name, cache in (("live", "none"), ("cached", "on")):
        cfg = run_cfg(tmp_path, name, teacher_file, cache, teacher={"cache_dtype": "float32"})
        cfg.loss.name = "mlkd"
        summaries[name] = Trainer(cfg, tmp_path / name).fit()
        weights[name] = load_weights_only(tmp_path / name / "checkpoints/last.pt")["model"]
    assert summaries["cached"]["data_path"] == "fast"
    record = summaries["cached"]["teacher_cache"]
    assert record["status"] == "built" and record["serves"].startswith("weak view")
    live, cached = (t.images for t in teachers)
    steps_images = 2 * 4 * 64  # 2 epochs x 4 steps x batch 64
    assert live == 2 * steps_images  # weak + strong, live
    assert cached == record["computed"] + steps_images  # the cache build + the strong views
    for key, value in weights["live"].items():
        torch.testing.assert_close(weights["cached"][key], value, rtol=1e-5, atol=1e-6)


def test_used_views_take_the_weak_half_of_two_view_plans() -> None:
    """A two-view loader's plan yields (weak, strong) params; the mask follows the weak
    crops, which iterating the loader shows (its images are the weak view's pixels)."""
    images = torch.randint(0, 17, (12, 1, 8, 8), dtype=torch.uint8)
    cache = TensorImageCache(images, torch.arange(12), [str(i) for i in range(12)], scale=16.0)
    views = crop_flip_views(PRESET)
    loader = GPUBatchLoader(cache, 4, PRESET, seed=5, views=2)
    want = torch.zeros(12, len(views), dtype=torch.bool)
    loader.return_params = True
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for (weak, _), index, (weak_params, _) in loader:
            ids = views.view_ids(weak_params, len(index))
            for row, (sample, view) in enumerate(zip(index.tolist(), ids.tolist())):
                top, left, flip = views.describe(view)
                pixels = reference_view(images[sample].float() / 16.0, top, left, flip, 1)
                mean, std = get_preset(PRESET).mean[0], get_preset(PRESET).std[0]
                torch.testing.assert_close(weak[row], (pixels - mean) / std)
            want[index, ids] = True
    assert torch.equal(used_views(loader, views, 12, (1, 2)), want)


def test_cache_on_refuses_data_it_cannot_enumerate(tmp_path: Path, teacher_file: Path) -> None:
    cfg = run_cfg(tmp_path, "torch", teacher_file, "on", epochs=1, max_steps_per_epoch=1)
    cfg.data.loader = "torch"
    with pytest.raises(ValueError, match="teacher.cache=on: the training data is not on the"):
        Trainer(cfg, tmp_path / "torch").fit()
    cfg = run_cfg(tmp_path, "auto", teacher_file, "auto", epochs=1, max_steps_per_epoch=1)
    cfg.data.loader = "torch"
    summary = Trainer(cfg, tmp_path / "auto").fit()
    assert summary["teacher_cache"]["status"] == "live"
    assert json.loads((tmp_path / "auto/summary.json").read_text())["teacher_cache"] == (
        summary["teacher_cache"]
    )


class _Main:
    is_main, enabled, world_size, rank = True, False, 1, 0


def test_state_dict_hash_identifies_teacher_weights() -> None:
    from figkd.engine.teacher_cache import state_dict_sha256

    torch.manual_seed(0)
    a = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)
    b = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)
    b.load_state_dict(a.state_dict())
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert isinstance(b.fc, nn.Linear)
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


_RACER = """
import json, sys, time
from pathlib import Path
import torch
from figkd.engine.teacher_cache import cache_fields, load_or_build
from figkd.models import create_model

folder, me, first, last = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
model = create_model("tiny_cnn", num_classes=10, width=4)

class Slow(torch.nn.Module):  # slow enough that the two runs overlap
    def __init__(self):
        super().__init__()
        self.model = model
    def forward(self, x):
        time.sleep(0.05)
        return self.model(x)

fields = cache_fields(dataset="race", split="train", images=images, teacher_sha256="t",
                      preset="cifar", scale=255.0, dtype="float16", num_classes=10)
needed = torch.zeros(3, 162, dtype=torch.bool)
needed[:, first:last] = True
(folder / f"ready-{me}").touch()
while len(list(folder.glob("ready-*"))) < 2:  # start together
    time.sleep(0.01)
lines = []
_, record = load_or_build(Slow(), fields, images, "cifar", folder / "cache", needed=needed,
                          batch_size=16, log=lines.append)
print(json.dumps({"computed": record["computed"], "log": lines, "path": record["path"]}))
"""


def test_parallel_runs_extend_one_cache_file_in_turn(tmp_path: Path) -> None:
    """Two runs started together with overlapping views: the second waits for the first,
    computes only what the file still lacks, and the file ends with both runs' views."""
    import subprocess
    import sys

    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    ranges = {"a": (0, 100), "b": (50, 162)}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path), me, str(lo), str(hi)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me, (lo, hi) in ranges.items()
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    union = 3 * 162
    # no pair computed twice: the sum is the union (without the lock: 300 + 336 = 636)
    assert sum(r["computed"] for r in results) == union
    assert sum(any("another run is extending it" in line for line in r["log"])
               for r in results) == 1
    stored = ViewLogitCache.load(results[0]["path"])
    assert stored.filled.all()  # without the lock the last writer's views only
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    teacher = create_model("tiny_cnn", num_classes=10, width=4)
    alone = build_view_logits(teacher, images, "cifar", batch_size=16)
    torch.testing.assert_close(stored.logits.float(), alone.float(), rtol=2**-10, atol=1e-4)
