"""Speed switches (channels_last, bf16 autocast, compile mode) together with the teacher cache.

Each switch may change results only by floating-point noise: runs with and without
it start from the same weights, see the same batches and end close.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_teacher_cache import PRESET, run_cfg  # noqa: F401  (registers the test preset)

from figkd.config import ConfigError, config_from_dict
from figkd.engine import Trainer, load_weights_only, model_payload, save_atomic
from figkd.models import create_model


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)),
                path)
    return path


def _weights(out: Path, name: str, teacher: Path, **train: Any) -> dict[str, torch.Tensor]:
    cfg = run_cfg(out, name, teacher, "auto", **train)
    summary = Trainer(cfg, out / name).fit()
    assert summary["teacher_cache"]["status"] in ("built", "hit")
    return load_weights_only(out / name / "checkpoints/last.pt")["model"]


def test_channels_last_and_bf16_with_the_cache_stay_within_float_noise(
    tmp_path: Path, teacher_file: Path
) -> None:
    base = _weights(tmp_path, "base", teacher_file)
    nhwc = _weights(tmp_path, "nhwc", teacher_file, channels_last=True)
    bf16 = _weights(tmp_path, "bf16", teacher_file, amp="bf16")
    for key, value in base.items():
        if not value.is_floating_point():
            assert torch.equal(nhwc[key], value) and torch.equal(bf16[key], value)
            continue
        # NHWC kernels sum in another order: float32 rounding only
        torch.testing.assert_close(nhwc[key], value, rtol=1e-4, atol=1e-5)
        # bf16 keeps 8 mantissa bits (relative 2**-9 per op): 8 steps move weights by
        # ~lr * |grad| * 1e-2 at most; 1e-3 absolute is far below the O(1e-1) updates
        torch.testing.assert_close(bf16[key], value, rtol=5e-2, atol=1e-3)


def test_compile_mode_reaches_torch_compile(
    tmp_path: Path, teacher_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = []

    def fake_compile(model: torch.nn.Module, mode: str | None = None, **_: Any):
        modes.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = run_cfg(tmp_path, "c", teacher_file, "auto", epochs=1, max_steps_per_epoch=1,
                  compile=True, compile_mode="reduce-overhead")
    Trainer(cfg, tmp_path / "c").fit()
    assert modes == ["reduce-overhead"] * 3  # student (train), student (eval), teacher
    with pytest.raises(ConfigError, match="train.compile_mode"):
        config_from_dict({"train": {"compile_mode": "fast"}})
