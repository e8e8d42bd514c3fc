"""Run segments: which code trained which epochs of a run resumed across sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import figkd.engine.trainer as trainer_module
from figkd.analysis.study import epochs_per_commit
from figkd.config import config_from_dict
from figkd.engine import Trainer, save_atomic


class Killed(Exception):
    """Stands in for the machine going back after an epoch."""


def digits_config(out: Path) -> Any:
    return config_from_dict({
        "experiment": "segments",
        "output_dir": str(out),
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "data": {"dataset": "digits", "num_workers": 0},
        "schedule": {"milestones": [2]},
        "train": {"epochs": 3, "device": "cpu", "num_threads": 1, "progress": "none",
                  "max_steps_per_epoch": 2},
    })


def kill_after_epoch_1(record: Any) -> None:
    if record.epoch == 1:
        raise Killed


def fake_commit(monkeypatch: pytest.MonkeyPatch, commit: str) -> None:
    monkeypatch.setattr(trainer_module, "git_commit", lambda: {"commit": commit, "dirty": False})


def test_a_resumed_run_records_each_sessions_commit_and_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    fake_commit(monkeypatch, "a" * 40)
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path), run, on_epoch_end=kill_after_epoch_1).fit()
    saved = torch.load(run / "checkpoints/last.pt", weights_only=False)["state"]["segments"]
    assert [(s["from_epoch"], s["to_epoch"], s["git"]["commit"]) for s in saved] == [
        (1, 1, "a" * 40)]
    fake_commit(monkeypatch, "b" * 40)
    summary = Trainer(digits_config(tmp_path), run, resume=True).fit()
    got = [(s["from_epoch"], s["to_epoch"], s["git"]["commit"]) for s in summary["segments"]]
    assert got == [(1, 1, "a" * 40), (2, 3, "b" * 40)]
    assert all(s["device"].startswith("cpu") and s["started_at"] for s in summary["segments"])
    assert summary["git"]["commit"] == "b" * 40  # the last session's, as before


def test_a_checkpoint_from_before_segments_gets_an_unrecorded_first_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path), run, on_epoch_end=kill_after_epoch_1).fit()
    last = run / "checkpoints/last.pt"
    payload = torch.load(last, weights_only=False)
    del payload["state"]["segments"]  # as written before stop 22
    save_atomic(payload, last)
    fake_commit(monkeypatch, "c" * 40)
    summary = Trainer(digits_config(tmp_path), run, resume=True).fit()
    assert [(s["from_epoch"], s["to_epoch"], s["git"]) for s in summary["segments"]] == [
        (1, 1, None), (2, 3, {"commit": "c" * 40, "dirty": False})]


def test_epochs_per_commit_counts_segments_and_older_summaries() -> None:
    a, b = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}
    summaries = [
        {"run_dir": "kd/seed0", "epochs": 60, "resumed": 1,
         "segments": [{"from_epoch": 1, "to_epoch": 20, "git": None},
                      {"from_epoch": 21, "to_epoch": 60, "git": a}]},
        {"run_dir": "kd/seed1", "epochs": 60, "resumed": 0,
         "segments": [{"from_epoch": 1, "to_epoch": 60, "git": b}]},
        {"run_dir": "ce/seed0", "epochs": 60, "resumed": 0, "git": a},  # older, one session
        {"run_dir": "teacher", "epochs": 30, "resumed": 1, "git": b},  # older, resumed
    ]
    assert epochs_per_commit(summaries) == (
        "epochs trained per git commit: aaaaaaaaaaaa 100 epoch(s) of 2 run(s); "
        "bbbbbbbbbbbb (+ local changes) 60 epoch(s) of 1 run(s); "
        "not recorded 50 epoch(s) of 2 run(s)"
    )
    assert epochs_per_commit([]) == "no finished runs"
