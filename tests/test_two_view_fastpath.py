"""Two-view methods (MLKD) on the uint8 fast path: the trainer's side.

The strong view's pixels are checked in test_strong_view_loader.py; here: a two-view run
takes the fast path, resumes bit-identical after a kill, and refuses to continue on the
other input path (the two draw different augmentation streams).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.config import Config, config_from_dict
from figkd.engine import Trainer, load_weights_only, save_atomic
from figkd.losses.base import DistillationLoss


class Killed(Exception):
    """Stands in for SIGKILL: raised from inside a training step."""


class TwoViewCE(DistillationLoss):
    """CE on both views, no teacher: a two-view method the trainer must feed (weak, strong)."""

    term_names: ClassVar[tuple[str, ...]] = ("weak", "strong")
    needs_teacher: ClassVar[bool] = False
    num_views: ClassVar[int] = 2

    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.calls: dict[int, int] = {}
        self.strong_differs = 0

    def count_step(self, epoch: int) -> None:
        """Count the epoch's steps; raise at ``kill_at``."""
        self.calls[epoch] = self.calls.get(epoch, 0) + 1
        if self.kill_at == (epoch, self.calls[epoch]):
            raise Killed(f"killed at epoch {epoch}, step {self.calls[epoch]}")

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **context: Any
    ) -> dict[str, Tensor]:
        self.count_step(context["epoch"])
        strong = context["student_logits_strong"]
        self.strong_differs += int(not torch.equal(strong, student_logits))
        return {"weak": F.cross_entropy(student_logits, targets),
                "strong": F.cross_entropy(strong, targets)}


def digits_config(out: Path, name: str, **data: Any) -> Config:
    return config_from_dict(
        {
            "experiment": name,
            "output_dir": str(out),
            "model": {"name": "tiny_cnn", "args": {"width": 8}},
            "data": {"dataset": "digits", "num_workers": 0, **data},
            "schedule": {"milestones": [2]},
            "train": {"epochs": 3, "device": "cpu", "num_threads": 1, "progress": "none",
                      "deterministic": True},
        }
    )


def test_two_view_run_takes_the_fast_path_and_resumes_bit_identical(tmp_path: Path) -> None:
    loss = TwoViewCE()
    full = Trainer(digits_config(tmp_path, "full"), tmp_path / "full", loss=loss).fit()
    assert full["data_path"] == "fast"
    steps = sum(loss.calls.values())
    # the strong view is another image than the weak one in (nearly) every batch
    assert loss.strong_differs >= steps - 1

    run = tmp_path / "killed"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "killed"), run, loss=TwoViewCE(kill_at=(2, 5))).fit()
    assert load_weights_only(run / "checkpoints/last.pt")["state"]["data_path"] == "fast"
    resumed = Trainer(digits_config(tmp_path, "killed"), run, resume=True, loss=TwoViewCE()).fit()
    a = load_weights_only(tmp_path / "full/checkpoints/last.pt")
    b = load_weights_only(run / "checkpoints/last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["resumed"] == 1
    assert resumed["final"] == full["final"]


def _killed_run(tmp_path: Path, **data: Any) -> Path:
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "run", **data), run, loss=TwoViewCE(kill_at=(2, 1))).fit()
    return run


def _forget_the_path(run: Path) -> None:
    """Make ``last.pt`` look like one written before runs recorded their input path."""
    last = run / "checkpoints/last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    del checkpoint["state"]["data_path"]
    save_atomic(checkpoint, last)


def test_resume_refuses_another_input_path_and_names_the_fix(tmp_path: Path) -> None:
    run = _killed_run(tmp_path, loader="torch")
    with pytest.raises(ValueError, match=r"trained on the 'torch' input path .* 'fast'.*"
                                         r"data\.loader=torch"):
        Trainer(digits_config(tmp_path, "run"), run, resume=True, loss=TwoViewCE()).fit()
    # the fix it names works: data.loader may change on resume, the resolved path may not
    done = Trainer(digits_config(tmp_path, "run", loader="torch"), run, resume=True,
                   loss=TwoViewCE()).fit()
    assert done["data_path"] == "torch" and done["final"]["epoch"] == 3


def test_checkpoint_without_a_recorded_path_counts_as_the_dataloader_path(tmp_path: Path) -> None:
    """Before the path was recorded, two-view methods could only train on the DataLoader."""
    run = _killed_run(tmp_path, loader="torch")
    _forget_the_path(run)
    with pytest.raises(ValueError, match=r"'torch' input path"):
        Trainer(digits_config(tmp_path, "run"), run, resume=True, loss=TwoViewCE()).fit()
    summary = Trainer(digits_config(tmp_path, "run", loader="torch"), run, resume=True,
                      loss=TwoViewCE()).fit()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert summary["data_path"] == "torch"


class OneViewCE(TwoViewCE):
    """The same, with one view: a KD-like run on the fast path."""

    term_names: ClassVar[tuple[str, ...]] = ("weak",)
    num_views: ClassVar[int] = 1

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **context: Any
    ) -> dict[str, Tensor]:
        self.count_step(context["epoch"])
        return {"weak": F.cross_entropy(student_logits, targets)}


def test_an_unrecorded_one_view_run_keeps_the_path_its_loader_setting_gave(tmp_path: Path) -> None:
    """Before the record, data.loader could not change on resume, so the run's own setting
    says its path: auto gave the fast path to one view of a fixed-size preset."""
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "run"), run, loss=OneViewCE(kill_at=(2, 1))).fit()
    _forget_the_path(run)
    with pytest.raises(ValueError, match=r"trained on the 'fast' input path .*data\.loader=fast"):
        Trainer(digits_config(tmp_path, "run", loader="torch"), run, resume=True,
                loss=OneViewCE()).fit()
    done = Trainer(digits_config(tmp_path, "run"), run, resume=True, loss=OneViewCE()).fit()
    assert done["data_path"] == "fast" and done["resumed"] == 1


@pytest.mark.parametrize(("loader", "views", "fast_path", "path"), [
    ("auto", 1, True, "fast"), ("auto", 2, True, "torch"), ("auto", 1, False, "torch"),
    ("fast", 1, True, "fast"), ("torch", 1, True, "torch"), ("torch", 2, True, "torch"),
])
def test_the_rule_of_the_time(loader: str, views: int, fast_path: bool, path: str) -> None:
    from figkd.engine.data import legacy_data_path

    assert legacy_data_path(loader, views, fast_path) == path


def test_an_unrecorded_run_set_to_the_dataloader_stays_there(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "run", loader="torch"), run,
                loss=OneViewCE(kill_at=(2, 1))).fit()
    _forget_the_path(run)
    with pytest.raises(ValueError, match=r"trained on the 'torch' input path"):
        Trainer(digits_config(tmp_path, "run"), run, resume=True, loss=OneViewCE()).fit()
