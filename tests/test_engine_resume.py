"""Resume: a run killed mid-epoch and resumed from last.pt ends bit-identical to a whole one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from figkd.config import Config, config_from_dict
from figkd.engine import Trainer, load_weights_only
from figkd.losses import CELoss


class Killed(Exception):
    """Stands in for SIGKILL: raised from inside a training step."""


class KillableCE(CELoss):
    """Plain CE that can raise at a chosen (epoch, call within the epoch)."""

    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.calls: dict[int, int] = {}

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        epoch = context["epoch"]
        self.calls[epoch] = self.calls.get(epoch, 0) + 1
        if self.kill_at == (epoch, self.calls[epoch]):
            raise Killed(f"killed at epoch {epoch}, step {self.calls[epoch]}")
        return super().forward(student_logits, teacher_logits, targets, **context)


def digits_config(out: Path, name: str, **train: Any) -> Config:
    return config_from_dict(
        {
            "experiment": name,
            "output_dir": str(out),
            "model": {"name": "tiny_cnn", "args": {"width": 8}},
            "data": {"dataset": "digits", "num_workers": 0},
            "schedule": {"milestones": [3]},
            "train": {
                "epochs": 4,
                "device": "cpu",
                "num_threads": 1,
                "progress": "none",
                "deterministic": True,
                **train,
            },
        }
    )


def test_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    full = Trainer(digits_config(tmp_path, "full"), tmp_path / "full", loss=KillableCE()).fit()

    run = tmp_path / "killed"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "killed"), run, loss=KillableCE(kill_at=(3, 7))).fit()
    interrupted = load_weights_only(run / "checkpoints/last.pt")
    assert interrupted["epoch"] == 2
    assert not (run / "summary.json").exists()

    resumed = Trainer(digits_config(tmp_path, "killed"), run, resume=True, loss=KillableCE()).fit()
    a = load_weights_only(tmp_path / "full/checkpoints/last.pt")
    b = load_weights_only(run / "checkpoints/last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert resumed["resumed"] == 1 and full["resumed"] == 0
    assert resumed["final"] == full["final"]
    assert resumed["best"] == full["best"]
    epochs = [
        json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3, 4]


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "run"), run, loss=KillableCE(kill_at=(2, 1))).fit()
    changed = digits_config(tmp_path, "run")
    changed.optim.lr = 0.2
    with pytest.raises(ValueError, match=r"optim.lr: None -> 0.2"):
        Trainer(changed, run, resume=True, loss=KillableCE()).fit()
    # run-time switches may change
    relaxed = digits_config(tmp_path, "run", epochs=2, log_every=7)
    assert Trainer(relaxed, run, resume=True, loss=KillableCE()).fit()["final"]["epoch"] == 2


def test_resume_refuses_a_different_teacher_file(tmp_path: Path) -> None:
    from figkd.engine import model_payload, save_atomic
    from figkd.losses import KDLoss
    from figkd.models import create_model

    teacher = tmp_path / "teacher.pt"
    save_atomic(
        model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)), teacher
    )

    class KillableKD(KDLoss):
        def forward(self, *args: Any, **context: Any) -> dict[str, Tensor]:
            if context["epoch"] == 2:
                raise Killed("killed")
            return super().forward(*args, **context)

    cfg = digits_config(tmp_path, "kd")
    cfg.loss.name = "kd"
    cfg.teacher.name, cfg.teacher.args, cfg.teacher.checkpoint = (
        "tiny_cnn",
        {"width": 4},
        str(teacher),
    )
    with pytest.raises(Killed):
        Trainer(cfg, tmp_path / "kd", loss=KillableKD()).fit()
    torch.manual_seed(123)  # a different teacher with the same architecture
    save_atomic(
        model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)), teacher
    )
    with pytest.raises(ValueError, match="is not the one the run started with"):
        Trainer(cfg, tmp_path / "kd", resume=True).fit()


def test_a_fresh_start_drops_metrics_left_by_a_run_killed_before_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "stale": True}) + "\n")
    for resume in (False, True):  # --resume without last.pt also starts afresh
        Trainer(
            digits_config(tmp_path, "run", epochs=2), run, resume=resume, overwrite=not resume,
            loss=KillableCE(),
        ).fit()
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1, 2] and not any("stale" in r for r in records)
        (run / "summary.json").unlink()
        (run / "checkpoints/last.pt").unlink()
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "stale": True}) + "\n")


def test_dataloader_path_result_does_not_depend_on_the_worker_count(tmp_path: Path) -> None:
    """Each sample's crop and flip draw from a stream seeded by (seed, epoch, index), not from
    whichever process loads it: 0 and 2 workers train the same weights (before, they did not,
    and a resume that changed the count silently took another trajectory)."""
    from figkd.data import synthetic

    root = synthetic.write_fake_cifar100(tmp_path / "cifar", train_per_class=2, test_per_class=1)
    weights = []
    for workers in (0, 2):
        cfg = config_from_dict({
            "experiment": f"w{workers}",
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "data": {"dataset": "cifar100", "root": str(root), "loader": "torch",
                     "num_workers": workers, "batch_size": 32, "val_fraction": 0},
            "train": {"epochs": 2, "device": "cpu", "num_threads": 1, "progress": "none",
                      "deterministic": True},
        })
        Trainer(cfg, tmp_path / "runs" / f"w{workers}").fit()
        weights.append(load_weights_only(tmp_path / "runs" / f"w{workers}" / "checkpoints"
                                         / "last.pt")["model"])
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_resume_survives_a_torn_last_metrics_line(tmp_path: Path) -> None:
    """A kill in the middle of appending an epoch's record leaves half a JSON line; that
    epoch has no checkpoint yet, so resuming drops the line and trains it again."""
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "run"), run, loss=KillableCE(kill_at=(3, 1))).fit()
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"epoch": 3, "train": {"lo')
    summary = Trainer(digits_config(tmp_path, "run"), run, resume=True, loss=KillableCE()).fit()
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4] and summary["final"]["epoch"] == 4
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    from figkd.engine.run_dir import RunDir

    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON.*--overwrite"):
        RunDir(run).read_metrics()


def test_a_kill_between_last_and_best_keeps_best_pt_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new best is written aside and renamed to best.pt after last.pt: killed in between,
    the resumed run promotes it (its epoch is checkpointed), so best.pt always matches the
    summary's best epoch and an uninterrupted run's best.pt."""
    full = Trainer(digits_config(tmp_path, "full"), tmp_path / "full", loss=KillableCE()).fit()
    run = tmp_path / "killed"
    original = Trainer._promote_best

    def killed_once(self: Trainer) -> None:
        if load_weights_only(self._pending_best)["epoch"] >= 2:
            monkeypatch.setattr(Trainer, "_promote_best", original)
            raise Killed("between last.pt and best.pt")
        original(self)

    monkeypatch.setattr(Trainer, "_promote_best", killed_once)
    with pytest.raises(Killed):
        Trainer(digits_config(tmp_path, "killed"), run, loss=KillableCE()).fit()
    killed_at = load_weights_only(run / "checkpoints/last.pt")["epoch"]
    pending = run / "checkpoints/.best.pt.pending"
    assert pending.exists() and load_weights_only(pending)["epoch"] == killed_at
    assert load_weights_only(run / "checkpoints/best.pt")["epoch"] < killed_at
    resumed = Trainer(digits_config(tmp_path, "killed"), run, resume=True, loss=KillableCE()).fit()
    assert not pending.exists() and resumed["best"] == full["best"]
    a = load_weights_only(tmp_path / "full/checkpoints/best.pt")
    b = load_weights_only(run / "checkpoints/best.pt")
    assert a["epoch"] == b["epoch"] == full["best"]["epoch"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
