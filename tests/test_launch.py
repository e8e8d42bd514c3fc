"""``run_seeds``: one config over several seeds, each seed a run of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import digits_config
from torch import Tensor, nn

from figkd.engine import launch, load_weights_only
from figkd.engine.launch import run_dir_for, run_seeds
from figkd.engine.trainer import RunExistsError
from figkd.losses import CELoss


class LearnedScaleCE(CELoss):
    """CE times a learned scalar created in ``__init__``: state the optimizer trains.

    A loss object handed to ``run_seeds`` must start every seed as it was given; with one
    shared object, seed 1 would start from the scale seed 0 had learned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        terms = super().forward(student_logits, teacher_logits, targets, **context)
        return {"ce": self.scale * terms["ce"]}


def test_each_seed_starts_from_the_loss_as_given(tmp_path: Path) -> None:
    """Seed 1 after seed 0 trains exactly as seed 1 alone (same weights, same loss scale)."""
    cfg = digits_config(tmp_path / "pair", "run", train={"deterministic": True})
    given = LearnedScaleCE()
    run_seeds(cfg, [0, 1], loss=given)
    alone_cfg = digits_config(tmp_path / "alone", "run", train={"deterministic": True})
    run_seeds(alone_cfg, [1], loss=LearnedScaleCE())

    after_pair = load_weights_only(run_dir_for(cfg, 1) / "checkpoints" / "last.pt")
    after_alone = load_weights_only(run_dir_for(alone_cfg, 1) / "checkpoints" / "last.pt")
    for name, tensor in after_alone["model"].items():
        torch.testing.assert_close(after_pair["model"][name], tensor, rtol=0, atol=0)
    # the scale was trained (it moved off 1.0) identically in both runs ...
    pair_scale = after_pair["loss"]["scale"]
    assert float(pair_scale) != 1.0
    torch.testing.assert_close(pair_scale, after_alone["loss"]["scale"], rtol=0, atol=0)
    # ... and the caller's object was left as given
    assert given.scale.item() == 1.0


def test_seeds_default_to_the_configs_seed_and_leave_cfg_alone(tmp_path: Path) -> None:
    """No seeds: one run under ``train.seed``; the caller's config keeps its seed."""
    cfg = digits_config(tmp_path, "run", train={"seed": 7})
    summaries = run_seeds(cfg, [])
    assert [s["seed"] for s in summaries] == [7]
    assert Path(summaries[0]["run_dir"]) == tmp_path / "run" / "seed7"

    summaries = run_seeds(cfg, [3, 4])
    assert [s["seed"] for s in summaries] == [3, 4]
    assert [Path(s["run_dir"]).name for s in summaries] == ["seed3", "seed4"]
    assert cfg.train.seed == 7


def test_callback_hears_which_seed_finished_an_epoch(tmp_path: Path) -> None:
    """``on_epoch_end(seed, record)``: the seed is bound per run, not the loop's last value."""
    heard: list[tuple[int, int]] = []
    cfg = digits_config(tmp_path, "run", train={"epochs": 2})
    run_seeds(cfg, [5, 6], on_epoch_end=lambda seed, record: heard.append((seed, record.epoch)))
    assert heard == [(5, 1), (5, 2), (6, 1), (6, 2)]


def test_run_dir_needs_an_experiment_name(tmp_path: Path) -> None:
    cfg = digits_config(tmp_path, "")
    with pytest.raises(ValueError, match="set experiment=<name>"):
        run_dir_for(cfg, 0)


def test_process_group_is_left_even_when_a_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing seed still tears the process group down, so the next job can start one."""
    calls: list[str] = []
    monkeypatch.setattr(launch.dist_utils, "destroy_process_group", lambda: calls.append("gone"))
    cfg = digits_config(tmp_path, "run", model={"name": "no_such_model"})
    with pytest.raises(Exception, match="no_such_model"):
        run_seeds(cfg, [0])
    assert calls == ["gone"]


def test_an_existing_run_is_neither_resumed_nor_overwritten_unless_asked(tmp_path: Path) -> None:
    """The defaults protect a finished run: a second call stops and names both switches."""
    cfg = digits_config(tmp_path, "run")
    first = run_seeds(cfg, [0])
    with pytest.raises(RunExistsError, match="--resume .* --overwrite"):
        run_seeds(cfg, [0])
    assert run_seeds(cfg, [0], resume=True)[0]["finished_at"] == first[0]["finished_at"]


def test_progress_lines_name_the_seed_only_when_there_are_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``prefix`` + ``seed<k> `` before each epoch line with several seeds; ``prefix`` alone
    with one (the run folder already says which seed it is)."""
    cfg = digits_config(tmp_path / "two", "run", train={"progress": "lines"})
    run_seeds(cfg, [5, 6], prefix="kd ")
    starts = [line.split(" lr ")[0] for line in capsys.readouterr().out.splitlines()]
    assert starts == ["kd seed5 epoch 1/1 ", "kd seed6 epoch 1/1 "]

    cfg = digits_config(tmp_path / "one", "run", train={"progress": "lines"})
    run_seeds(cfg, [5], prefix="kd ")
    starts = [line.split(" lr ")[0] for line in capsys.readouterr().out.splitlines()]
    assert starts == ["kd epoch 1/1 "]
