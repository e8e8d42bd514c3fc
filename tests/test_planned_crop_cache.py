"""Planned RandomResizedCrop views and their cached teacher logits (figkd.engine.planned_cache).

References crop with torchvision's own functional ops and compute the centre-crop
fallback from torchvision's formulas, independently of figkd's planning code.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from figkd.config import config_from_dict
from figkd.data import load_dataset
from figkd.data.planned_crop import (
    CropPlan,
    PlannedDataset,
    PlannedResizedCrop,
    plan_generator,
    sample_resized_crops,
)
from figkd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    LargeImagePreset,
    build_transforms,
    register_preset,
)
from figkd.engine import Trainer, load_weights_only, model_payload, save_atomic
from figkd.engine.data import TorchSource
from figkd.engine.planned_cache import PlannedLogitCache, load_or_build_planned, planned_fields
from figkd.engine.teacher_cache import CacheKeyMismatchError
from figkd.models import create_model

PRESET = "rrc-32-test"
if PRESET not in PRESETS:
    register_preset(LargeImagePreset(
        PRESET, 32, 36, IMAGENET_MEAN, IMAGENET_STD,
        description="test only: RandomResizedCrop(32) + HFlip; test Resize(36) + CenterCrop(32)",
    ))


class CountingTeacher(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        return self.model(x)


def fallback_box(height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's centre-crop fallback of RandomResizedCrop.get_params (default ratio)."""
    ratio = (3 / 4, 4 / 3)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --------------------------------------------------------------------------- the plan


def test_plan_follows_random_resized_crop_constraints() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(200, 600, (4000, 2), generator=g)
    sizes[:50, 1] = 20  # very tall images: no box fits often -> exercises the fallback
    plan = CropPlan.from_preset(PRESET)
    assert plan is not None and plan.size == (32, 32) and plan.flip_p == 0.5
    assert plan.scale == (0.08, 1.0) and plan.ratio == pytest.approx((3 / 4, 4 / 3))
    rows = plan.epoch(sizes, seed=1, epoch=1)
    assert rows.shape == (4000, 5) and rows.dtype == torch.long
    top, left, h, w, flip = rows.unbind(1)
    H, W = sizes[:, 0], sizes[:, 1]
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    fallback = torch.tensor([
        tuple(r[:4].tolist()) == fallback_box(int(a), int(b)) for r, a, b in zip(rows, H, W)
    ])
    # (a drawn box may coincide with the fallback box, e.g. the whole image: rare)
    assert fallback[:50].sum() > 25 and fallback[50:].float().mean() < 0.01
    normal = ~fallback
    area = (h * w).double() / (H * W).double()
    aspect = w.double() / h.double()
    # width and height are rounded to integers (>= ~50 px here): <= ~2 % off per side
    assert (area[normal] >= 0.08 * 0.96).all() and (area[normal] <= 1.0).all()
    assert (aspect[normal] >= 0.75 * 0.97).all() and (aspect[normal] <= 4 / 3 * 1.03).all()
    assert area[normal].min() < 0.1 and area[normal].max() > 0.9  # spans the range
    assert 0.45 < flip.float().mean() < 0.55 and set(flip.tolist()) == {0, 1}
    # the placement is uniform over the free room: mean relative offset ~ 1/2
    room = (H - h)[normal].double()
    assert 0.45 < (top[normal][room > 0] / room[room > 0]).mean() < 0.55

    assert torch.equal(plan.epoch(sizes, 1, 1), rows)  # reproducible
    assert not torch.equal(plan.epoch(sizes, 2, 1), rows)  # another seed: another plan
    assert not torch.equal(plan.epoch(sizes, 1, 2), rows)  # another epoch: another plan
    table = plan.table(sizes[:10], 1, 3)
    assert table.shape == (3, 10, 5) and torch.equal(table[1], plan.epoch(sizes[:10], 1, 2))


def test_sampler_matches_torchvision_get_params_on_the_same_draws() -> None:
    """Re-derive one image's box from the generator's raw draws with torchvision's loop."""
    height, width = 300, 500
    rows = sample_resized_crops(torch.tensor([[height, width]]), plan_generator(7, 3))
    g = plan_generator(7, 3)
    u_area = torch.rand(1, 10, generator=g, dtype=torch.float64)[0]
    u_ratio = torch.rand(1, 10, generator=g, dtype=torch.float64)[0]
    u_top, u_left, u_flip = (float(torch.rand(1, generator=g, dtype=torch.float64))
                             for _ in range(3))
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for a, r in zip(u_area.tolist(), u_ratio.tolist()):  # torchvision's get_params body
        target_area = height * width * (0.08 + 0.92 * a)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r)
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = int(u_top * (height - h + 1))
            j = int(u_left * (width - w + 1))
            break
    assert rows[0].tolist() == [i, j, h, w, int(u_flip < 0.5)]


def test_planned_transform_equals_torchvision_resized_crop() -> None:
    torch.manual_seed(0)
    image = TF.to_pil_image(torch.randint(0, 256, (3, 37, 45), dtype=torch.uint8))
    plan = CropPlan.from_preset(PRESET)
    assert plan is not None
    crop = PlannedResizedCrop(plan)
    for params in ([3, 5, 20, 30, 0], [0, 0, 37, 45, 1], [10, 2, 15, 12, 1]):
        t, l, h, w, f = params
        want = TF.resized_crop(image, t, l, h, w, [32, 32],
                               interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        if f:
            want = TF.hflip(want)
        got = crop(image, torch.tensor(params))
        assert torch.equal(TF.pil_to_tensor(got), TF.pil_to_tensor(want))


# --------------------------------------------------------------------------- data


def make_tree(root: Path, per_class: int = 12, classes: int = 3) -> Path:
    """ImageFolder tree of small random images of a few sizes (around 40 x 40)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(40, 40), (36, 44), (44, 34), (40, 30)]
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                hgt, wid = shapes[k % len(shapes)]
                pixels = torch.randint(0, 256, (hgt, wid, 3), generator=g, dtype=torch.uint8)
                pixels[..., c] = pixels[..., c] // 2 + 128  # a class signal
                Image.fromarray(pixels.numpy()).save(folder / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=3, width=8)), path)
    return path


def planned_train(tree: Path, seed: int = 0) -> PlannedDataset:
    dataset = load_dataset("image-folder", tree, "train", build_transforms(PRESET, train=True))
    planned = PlannedDataset.from_dataset(dataset, seed)
    assert planned is not None
    return planned


def reference_view(planned: PlannedDataset, epoch: int, index: int) -> Tensor:
    """The planned view through torchvision's functional ops only."""
    path = planned.dataset.samples[index][0]
    with Image.open(path) as img:
        image = img.convert("RGB")
    t, l, h, w, f = planned.plan.epoch(planned.sizes, planned.seed, epoch)[index].tolist()
    out = TF.resized_crop(image, t, l, h, w, [32, 32], antialias=True)
    out = TF.hflip(out) if f else out
    return TF.normalize(TF.to_tensor(out), IMAGENET_MEAN, IMAGENET_STD)


def test_cached_logits_equal_a_live_teacher_on_the_planned_views(
    tree: Path, tmp_path: Path
) -> None:
    planned = planned_train(tree, seed=3)
    teacher = create_model("tiny_cnn", num_classes=3, width=8).eval()
    fields = planned_fields(dataset="image-folder", split="train", planned=planned, epochs=2,
                            teacher_sha256="t", num_classes=3, dtype="float16",
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
    needed = torch.ones(2, len(planned), dtype=torch.bool)
    needed[1, :5] = False
    rng = torch.get_rng_state()
    cache, info = load_or_build_planned(teacher, fields, planned, tmp_path, needed, batch_size=7)
    assert info["status"] == "built" and info["computed"] == int(needed.sum())
    assert torch.equal(torch.get_rng_state(), rng)  # a build leaves the global RNG alone
    assert torch.isnan(cache.logits[1, :5].float()).all()
    for epoch in (1, 2):
        for index in range(len(planned)):
            if not needed[epoch - 1, index]:
                continue
            with torch.no_grad():
                want = teacher(reference_view(planned, epoch, index)[None])[0]
            got = cache.lookup(epoch, torch.tensor([index]))[0]
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)  # float16 storage
            planned.set_epoch(epoch)
            x, _ = planned[index]
            torch.testing.assert_close(x, reference_view(planned, epoch, index))
    # the file is reused (hit), completed (extended), and refused for other inputs
    _, again = load_or_build_planned(teacher, fields, planned, tmp_path, needed)
    assert again["status"] == "hit" and again["computed"] == 0
    _, more = load_or_build_planned(teacher, fields, planned, tmp_path, torch.ones_like(needed))
    assert more["status"] == "extended" and more["computed"] == 5
    other = planned_fields(dataset="image-folder", split="train", planned=planned_train(tree, 4),
                           epochs=2, teacher_sha256="t", num_classes=3, dtype="float16",
                           mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert other["plan"]["sha256"] != fields["plan"]["sha256"]  # another seed, another plan
    with pytest.raises(CacheKeyMismatchError, match="plan"):
        PlannedLogitCache.load(more["path"], expected=other)


# --------------------------------------------------------------------------- trainer


def run_cfg(out: Path, name: str, tree: Path, teacher: Path, cache: str,
            loss: str = "kd", **teacher_args: Any):
    return config_from_dict({
        "experiment": name,
        "output_dir": str(out),
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "teacher": {"name": "tiny_cnn", "args": {"width": 8}, "checkpoint": str(teacher),
                    "cache": cache, "cache_dir": str(out / "cache"), **teacher_args},
        "loss": {"name": loss},
        "data": {"dataset": "image-folder", "root": str(tree), "preset": PRESET,
                 "num_workers": 0, "batch_size": 8, "eval_batch_size": 16,
                 "val_fraction": 0.0},
        "train": {"epochs": 2, "device": "cpu", "num_threads": 1, "progress": "none",
                  "deterministic": True, "eval_teacher": False, "seed": 5},
    })


def test_distillation_with_planned_cache_matches_the_live_teacher(
    tmp_path: Path, tree: Path, teacher_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import figkd.engine.trainer as trainer_module

    teachers: dict[str, CountingTeacher] = {}
    real = trainer_module.load_teacher
    current = {"name": ""}

    def counting(*args: Any, **kwargs: Any):
        model, record = real(*args, **kwargs)
        teachers[current["name"]] = CountingTeacher(model)
        return teachers[current["name"]], record

    monkeypatch.setattr(trainer_module, "load_teacher", counting)

    def run(name: str, cache: str, loss: str = "kd", **kw: Any) -> dict[str, Any]:
        current["name"] = name
        cfg = run_cfg(tmp_path, name, tree, teacher_file, cache, loss, **kw)
        return Trainer(cfg, tmp_path / name).fit()

    summaries = {
        "fp32": run("fp32", "on", cache_dtype="float32"),
        "again": run("again", "auto", cache_dtype="float32"),
        "fp16": run("fp16", "auto"),
        "dkd": run("dkd", "auto", "dkd"),  # another method reuses the fp16 file
    }
    # the same plan with the live teacher: the planned data path, no stored logits
    with monkeypatch.context() as m:
        m.setattr(PlannedLogitCache, "lookup", lambda self, epoch, index, device=None: None)
        summaries["live"] = run("live", "auto", cache_dtype="float32")  # file hit: no build
    summaries["none"] = run("none", "none")
    weights = {k: load_weights_only(tmp_path / k / "checkpoints/last.pt")["model"]
               for k in summaries}

    steps = 2 * (36 // 8)  # 2 epochs x 4 full batches of 8 (drop_last)
    assert teachers["fp32"].images == steps * 8  # the trained views, once
    assert teachers["again"].images == 0 and teachers["dkd"].images == 0
    assert teachers["fp16"].images == steps * 8
    assert teachers["live"].images == steps * 8  # live forwards during training
    assert teachers["none"].images == steps * 8
    rec = {k: s["teacher_cache"] for k, s in summaries.items()}
    assert rec["fp32"]["status"] == "built" and rec["again"]["status"] == "hit"
    assert rec["fp16"]["status"] == "built" and rec["dkd"]["status"] == "hit"
    assert rec["dkd"]["path"] == rec["fp16"]["path"] != rec["fp32"]["path"]
    assert rec["fp32"]["views"] == "planned" and rec["fp32"]["plan_seed"] == 5
    assert rec["none"] == {"mode": "none", "status": "off"}
    for key, value in weights["live"].items():
        torch.testing.assert_close(weights["fp32"][key], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(weights["again"][key], weights["fp32"][key])
        torch.testing.assert_close(weights["fp16"][key], value, rtol=1e-4, atol=1e-5)
    # cache=none keeps the plain RandomResizedCrop path: other crops, other weights
    assert any(not torch.allclose(weights["none"][k], v) for k, v in weights["live"].items())


def test_a_resumed_planned_run_computes_only_its_remaining_epochs(
    tmp_path: Path, tree: Path, teacher_file: Path
) -> None:
    full = Trainer(run_cfg(tmp_path / "a", "full", tree, teacher_file, "on",
                           cache_dtype="float32"), tmp_path / "full")
    done = full.fit()

    def killed(record: Any) -> None:
        if record.epoch == 1:
            raise RuntimeError("machine taken back")

    cfg = run_cfg(tmp_path / "b", "cut", tree, teacher_file, "on", cache_dtype="float32")
    with pytest.raises(RuntimeError, match="taken back"):
        Trainer(cfg, tmp_path / "cut", on_epoch_end=killed).fit()
    shutil.rmtree(tmp_path / "b" / "cache")  # resumed on a machine without the file
    summary = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    per_epoch = (36 // 8) * 8  # 4 full batches of 8 (drop_last)
    assert done["teacher_cache"]["computed"] == 2 * per_epoch
    assert summary["teacher_cache"]["computed"] == per_epoch  # epoch 2 only
    want = load_weights_only(tmp_path / "full" / "checkpoints/last.pt")["model"]
    got = load_weights_only(tmp_path / "cut" / "checkpoints/last.pt")["model"]
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_logits_beyond_float16_fall_back_to_the_plain_live_path(
    tmp_path: Path, tree: Path
) -> None:
    torch.manual_seed(0)
    loud = create_model("tiny_cnn", num_classes=3, width=8)
    assert isinstance(loud.fc, nn.Linear)
    with torch.no_grad():
        for parameter in loud.fc.parameters():
            parameter.mul_(1e7)
    path = tmp_path / "loud.pt"
    save_atomic(model_payload(loud), path)
    auto = Trainer(run_cfg(tmp_path, "auto", tree, path, "auto"), tmp_path / "auto").fit()
    assert auto["teacher_cache"]["status"] == "live" and "float16" in auto["teacher_cache"]["reason"]
    Trainer(run_cfg(tmp_path, "none", tree, path, "none"), tmp_path / "none").fit()
    a = load_weights_only(tmp_path / "auto" / "checkpoints/last.pt")["model"]
    b = load_weights_only(tmp_path / "none" / "checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the plain RandomResizedCrop path again


def test_methods_needing_features_fall_back_and_keep_plain_crops(
    tmp_path: Path, tree: Path, teacher_file: Path
) -> None:
    cfg = run_cfg(tmp_path, "fitnet", tree, teacher_file, "on", "fitnet")
    cfg.train.epochs = 1
    trainer = Trainer(cfg, tmp_path / "fitnet")
    summary = trainer.fit()
    assert summary["teacher_cache"]["status"] == "live"
    train = trainer.data.train
    assert isinstance(train, TorchSource)  # the DataLoader path: RandomResizedCrop
    assert not isinstance(train.dataset.dataset, PlannedDataset)


def test_a_bf16_run_on_the_planned_cache_ends_at_the_live_bf16_runs_weights(
    tmp_path: Path, tree: Path, teacher_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.amp=bf16: the planned views' cached logits are the live teacher's bf16 ones (the
    build runs under the run's autocast), so the cached and the live run end alike."""
    weights, records = {}, {}
    for name in ("cached", "live"):
        cfg = run_cfg(tmp_path, name, tree, teacher_file, "on", cache_dtype="float32")
        cfg.train.amp = "bf16"
        with monkeypatch.context() as m:
            if name == "live":  # the same planned views, each scored by the live teacher
                m.setattr(PlannedLogitCache, "lookup", lambda self, epoch, index, device=None: None)
            records[name] = Trainer(cfg, tmp_path / name).fit()["teacher_cache"]
        weights[name] = load_weights_only(tmp_path / name / "checkpoints/last.pt")["model"]
    assert records["cached"]["status"] == "built" and records["live"]["status"] == "hit"
    assert PlannedLogitCache.load(records["cached"]["path"]).fields["amp"] == "bf16"
    for key, value in weights["live"].items():
        torch.testing.assert_close(weights["cached"][key], value, rtol=1e-5, atol=1e-6)
