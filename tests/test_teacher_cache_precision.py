"""The teacher-logit cache is computed in the run's own precision (``train.amp``).

Under bf16 autocast the live teacher's logits carry bf16 rounding; a cache built in float32
would hand the student other numbers than a live-teacher run sees.  The references here are
the live teacher itself (run under ``torch.autocast`` by the test, not by the code under
test) and a whole live-teacher training run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_teacher_cache import PRESET, run_cfg, teacher_file  # noqa: F401  (fixture)

from figkd.data import BatchAugment
from figkd.engine import Trainer, load_weights_only
from figkd.engine.teacher_cache import (
    CropFlipViews,
    ViewLogitCache,
    build_view_logits,
    cache_fields,
    load_or_build,
)
from figkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8).eval()
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    return teacher, images


def _live(teacher: torch.nn.Module, images: torch.Tensor, view: int, amp: bool) -> torch.Tensor:
    views = CropFlipViews.from_preset(PRESET)
    assert views is not None
    x = BatchAugment(PRESET, True, 255.0).apply(images, views.params(view, len(images)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return teacher(x).float()


def test_a_bf16_build_stores_the_live_bf16_teachers_logits() -> None:
    teacher, images = _teacher_and_images()
    built = {
        amp: build_view_logits(teacher, images, PRESET, dtype=torch.float32, amp=amp)
        for amp in ("none", "bf16")
    }
    views = len(CropFlipViews.from_preset(PRESET) or ())
    for view in range(views):
        live_bf16 = _live(teacher, images, view, amp=True)
        live_fp32 = _live(teacher, images, view, amp=False)
        torch.testing.assert_close(built["bf16"][:, view], live_bf16, rtol=0, atol=0)
        torch.testing.assert_close(built["none"][:, view], live_fp32, rtol=1e-6, atol=1e-6)
    # the two precisions really differ here, so the checks above tell them apart
    assert not torch.allclose(built["bf16"], built["none"], rtol=1e-4, atol=1e-4)


def test_each_precision_has_its_own_file(tmp_path: Path) -> None:
    teacher, images = _teacher_and_images()

    def fields(amp: str) -> dict:
        return cache_fields(dataset="hand", split="train", images=images, teacher_sha256="t",
                            preset=PRESET, scale=255.0, dtype="float32", num_classes=10,
                            amp=amp)

    _, fp32 = load_or_build(teacher, fields("none"), images, PRESET, tmp_path)
    _cache, bf16 = load_or_build(teacher, fields("bf16"), images, PRESET, tmp_path)
    assert fp32["status"] == bf16["status"] == "built"  # no float32 file reused for bf16
    assert fp32["path"] != bf16["path"]
    stored = ViewLogitCache.load(bf16["path"])
    assert stored.fields["amp"] == "bf16"
    torch.testing.assert_close(stored.logits[:, 5], _live(teacher, images, 5, amp=True),
                               rtol=0, atol=0)


def test_a_bf16_run_on_the_cache_ends_at_the_live_bf16_runs_weights(
    tmp_path: Path, teacher_file: Path  # noqa: F811  (the fixture)
) -> None:
    """train.amp=bf16: with a float32 cache the student ends where the live-teacher run ends,
    weight for weight, because the cache holds the live teacher's bf16 logits."""
    weights = {}
    for name, cache in (("live", "none"), ("cached", "on")):
        cfg = run_cfg(tmp_path, name, teacher_file, cache, amp="bf16",
                      teacher={"cache_dtype": "float32"})
        summary = Trainer(cfg, tmp_path / name).fit()
        weights[name] = load_weights_only(tmp_path / name / "checkpoints/last.pt")["model"]
    assert summary["teacher_cache"]["status"] == "built"
    assert ViewLogitCache.load(summary["teacher_cache"]["path"]).fields["amp"] == "bf16"
    for key, value in weights["live"].items():
        torch.testing.assert_close(weights["cached"][key], value, rtol=1e-5, atol=1e-6)
