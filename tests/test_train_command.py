"""``figkd train``'s report and exit codes: what a shell script sees after a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DIGITS_OVERRIDES

import figkd.commands.train as train_command
from figkd.cli import main
from figkd.engine.trainer import NonFiniteLossError, RunExistsError

TINY = [*DIGITS_OVERRIDES, "train.max_steps_per_epoch=3"]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_each_seed_gets_a_line_and_several_seeds_a_report_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per seed: the run folder, last-epoch test top-1 and the best-val epoch's test top-1,
    both to two decimals as summary.json records them; then the `figkd report` command."""
    code = main(["train", *TINY, "data.val_fraction=0.2", f"output_dir={tmp_path}",
                 "--seeds", "0", "1"])
    assert code == 0
    experiment = tmp_path / "digits" / "ce" / "tiny_cnn"
    expected = []
    for seed in (0, 1):
        summary = _summary(experiment / f"seed{seed}")
        last, best = summary["final"]["test"]["top1"], summary["best"]
        expected.append(
            f"{experiment / f'seed{seed}'}: test top-1 {last:.2f} "
            f"(best-val epoch {best['epoch']}: {best['test']['top1']:.2f})"
        )
    expected.append(f"aggregate with: figkd report {experiment}")
    assert capsys.readouterr().out.splitlines() == expected


def test_one_seed_without_validation_prints_one_plain_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No val split: no best-val part; one seed: no aggregation hint."""
    assert main(["train", *TINY, "data.val_fraction=0", f"output_dir={tmp_path}",
                 "experiment=solo"]) == 0
    run = tmp_path / "solo" / "seed0"
    summary = _summary(run)
    assert summary["best"] is None
    assert capsys.readouterr().out.splitlines() == [
        f"{run}: test top-1 {summary['final']['test']['top1']:.2f}"
    ]


def test_only_rank_zero_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun every rank runs the command; one report is enough."""
    monkeypatch.setattr(train_command, "run_seeds", lambda *a, **k: [{"final": {}}])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", *TINY, f"output_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("error", "code", "shown"),
    [
        (NonFiniteLossError("loss is nan at epoch 1, step 2"), 3,
         "figkd train: stopped: loss is nan at epoch 1, step 2"),
        (RunExistsError("runs/x already holds a run"), 2,
         "figkd train: error: runs/x already holds a run"),
    ],
)
def test_failures_have_their_own_exit_codes(
    error: Exception, code: int, shown: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3: training stopped on a non-finite loss; 2: a usage problem (the run folder exists)."""

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(train_command, "run_seeds", fail)
    assert main(["train", *TINY, f"output_dir={tmp_path}"]) == code
    captured = capsys.readouterr()
    assert captured.err.strip() == shown
    assert captured.out == ""


def test_print_config_keeps_the_schema_order(capsys: pytest.CaptureFixture[str]) -> None:
    """``--print-config`` lists sections in the order of the Config dataclass, as documented
    in ``figkd train --help``, not alphabetically."""
    assert main(["train", *TINY, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == [
        "experiment", "output_dir", "model", "teacher", "loss", "data", "optim", "schedule",
        "train", "paper",
    ]
