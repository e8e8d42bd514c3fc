"""A NaN loss stops the run naming the step and the term, and leaves last.pt intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from poisoned_losses import NaNAtStep

from figkd.config import config_from_dict
from figkd.engine import NonFiniteLossError, Trainer, load_weights_only
from figkd.engine.trainer import EpochRecord


def test_nan_names_step_and_term_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "experiment": "nan",
            "output_dir": str(tmp_path),
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "data": {"dataset": "digits", "num_workers": 0},
            "train": {"epochs": 3, "device": "cpu", "num_threads": 1, "progress": "none"},
        }
    )
    last = tmp_path / "run/checkpoints/last.pt"
    digests: list[str] = []

    def remember(record: EpochRecord) -> None:
        digests.append(hashlib.sha256(last.read_bytes()).hexdigest())

    steps_per_epoch = 1295 // 64  # digits train split minus the 10 % validation carve
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(
            cfg, tmp_path / "run", loss=NaNAtStep(steps_per_epoch + 4), on_epoch_end=remember
        ).fit()
    message = str(info.value)
    assert "epoch 2, step 4 " in message and f"global step {steps_per_epoch + 4}" in message
    assert "detail=nan" in message and "ce=" not in message
    assert "(epoch 1) is intact" in message
    assert len(digests) == 1 and hashlib.sha256(last.read_bytes()).hexdigest() == digests[0]
    checkpoint = load_weights_only(last)
    assert checkpoint["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
    assert not (tmp_path / "run/summary.json").exists()


def test_non_finite_logits_caught_by_a_loss_give_the_trainers_message(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "experiment": "nan",
            "output_dir": str(tmp_path),
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "data": {"dataset": "digits", "num_workers": 0},
            "train": {"epochs": 2, "device": "cpu", "num_threads": 1, "progress": "none"},
        }
    )
    steps_per_epoch = 1295 // 64
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, tmp_path / "run", loss=NaNAtStep(steps_per_epoch + 2, where="logits")).fit()
    message = str(info.value)
    assert "epoch 2, step 2 " in message and "student_logits contains" in message
    assert "(epoch 1) is intact" in message and "--resume" in message
