"""A run that stops with an error keeps ``failure.json``: the trainer writes it, a study's table
lists the seed as failed instead of silently averaging the others, ``figkd study --plan`` names
it, and ``figkd state records`` carries it.

Expected values are written by hand: the failing step is chosen by the test, the reason is the
first sentence of the engine's own message, and the study folders are built in the engine's
layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import digits_config, unit_tier
from poisoned_losses import NaNAtStep

from figkd.analysis import study as S
from figkd.analysis import study_state as state
from figkd.data import synthetic
from figkd.engine import NonFiniteLossError, RunExistsError, Trainer, model_payload, save_atomic
from figkd.engine.run_dir import failure_reason
from figkd.engine.trainer import EpochRecord
from figkd.models import create_model
from figkd.models.checkpoint import file_sha256

STEPS = 3  # per epoch: digits_config's max_steps_per_epoch
SHA = "ab" * 32


def _config(tmp_path: Path, epochs: int = 2) -> Any:
    return digits_config(tmp_path, "failing", train={"epochs": epochs, "seed": 3})


# --------------------------------------------------------------------------- the trainer


def test_a_failed_run_records_why_and_a_finish_folds_it_into_the_summary(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    cfg = _config(tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, run, loss=NaNAtStep(STEPS + 2)).fit()
    failure = json.loads((run / "failure.json").read_text())
    assert failure["reason"] == (
        f"non-finite loss at epoch 2, step 2 (global step {STEPS + 2}): term detail=nan"
    )
    assert failure["message"] == str(info.value)
    assert (failure["status"], failure["error"]) == ("failed", "NonFiniteLossError")
    assert (failure["epoch"], failure["last_checkpoint_epoch"], failure["epochs"]) == (2, 1, 2)
    assert failure["stage"] == "training"
    assert (failure["experiment"], failure["seed"], failure["method"]) == ("failing", 3, "ce")
    assert failure["teacher"] is None  # CE distils from no teacher
    assert failure["versions"]["torch"] and failure["device"].startswith("cpu (")
    assert not (run / "summary.json").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporaries left

    # run again (the error did not come back): it resumes from epoch 1's checkpoint, and
    # the finished summary keeps what had stopped it
    summary = Trainer(cfg, run, resume=True, loss=NaNAtStep(0)).fit()
    assert not (run / "failure.json").exists()
    assert summary["status"] == "finished" and summary["resumed"] == 1
    assert summary["earlier_failure"] == {
        "stage": "training", "epoch": 2, "error": "NonFiniteLossError", "reason": failure["reason"],
        "failed_at": failure["failed_at"],
    }
    assert json.loads((run / "summary.json").read_text())["earlier_failure"]["epoch"] == 2


def test_a_kill_is_not_a_failure(tmp_path: Path) -> None:
    """KeyboardInterrupt (as a kill) leaves a resumable run, not a failure record."""

    def interrupt(record: EpochRecord) -> None:
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tmp_path), run, loss=NaNAtStep(0), on_epoch_end=interrupt).fit()
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "failure.json").exists()


def _distill_config(tmp_path: Path, teacher: Path, sha256: str | None) -> Any:
    return digits_config(tmp_path, "distilling", loss={"name": "kd"}, teacher={
        "name": "tiny_cnn", "args": {"width": 8}, "checkpoint": str(teacher), "sha256": sha256})


def test_a_run_that_fails_while_setting_up_records_the_stage(tmp_path: Path) -> None:
    """A teacher that does not load (here: not the file the config pins) stops the run before
    its first epoch and before its folder existed; the record says so, and a later finish
    keeps it."""
    teacher = tmp_path / "teacher.pt"
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)),
                teacher)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="SHA-256"):
        Trainer(_distill_config(tmp_path, teacher, "0" * 64), run).fit()
    failure = json.loads((run / "failure.json").read_text())
    assert sorted(p.name for p in run.iterdir()) == ["failure.json"]  # nothing else written
    assert (failure["stage"], failure["epoch"], failure["last_checkpoint_epoch"]) == (
        "setup", 1, 0)
    assert failure["error"] == "ValueError" and failure["teacher"] is None  # it never loaded
    assert failure["reason"] == (
        f"teacher checkpoint {teacher} has SHA-256 {file_sha256(teacher)}, but the config "
        f"expects {'0' * 64}")
    assert S._failure_line(run) == f"setup before epoch 1: {failure['reason']}"

    summary = Trainer(_distill_config(tmp_path, teacher, file_sha256(teacher)), run,
                      resume=True).fit()
    assert summary["status"] == "finished" and not (run / "failure.json").exists()
    assert summary["earlier_failure"]["stage"] == "setup"
    assert summary["earlier_failure"]["epoch"] == 1


def test_a_resumed_run_that_fails_while_setting_up_keeps_its_checkpointed_epoch(
    tmp_path: Path,
) -> None:
    teacher = tmp_path / "teacher.pt"
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)),
                teacher)
    run = tmp_path / "run"

    def stop_after_epoch_1(record: EpochRecord) -> None:
        raise KeyboardInterrupt  # a kill after epoch 1's checkpoint: resumable, no record

    cfg = digits_config(tmp_path, "distilling", loss={"name": "kd"}, train={"epochs": 3},
                        teacher={"name": "tiny_cnn", "args": {"width": 8},
                                 "checkpoint": str(teacher)})
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run, on_epoch_end=stop_after_epoch_1).fit()
    teacher.unlink()  # the teacher file went away before the resume
    with pytest.raises(FileNotFoundError):
        Trainer(cfg, run, resume=True).fit()
    failure = json.loads((run / "failure.json").read_text())
    assert (failure["stage"], failure["epoch"], failure["last_checkpoint_epoch"]) == (
        "setup", 2, 1)
    assert (run / "checkpoints" / "last.pt").is_file()
    assert S.run_state(run, 3) == "failed"  # the study tries it again, from last.pt


def test_an_invocation_error_writes_no_failure_record(tmp_path: Path) -> None:
    """A folder that already holds a run, without --resume, is the caller's mistake, not the
    run's: nothing is written into that run."""
    run = tmp_path / "run"
    Trainer(_config(tmp_path, epochs=1), run, loss=NaNAtStep(0)).fit()
    with pytest.raises(RunExistsError):
        Trainer(_config(tmp_path, epochs=1), run, loss=NaNAtStep(0)).fit()
    assert not (run / "failure.json").exists()


def test_a_run_that_never_failed_has_no_earlier_failure(tmp_path: Path) -> None:
    summary = Trainer(_config(tmp_path, epochs=1), tmp_path / "run", loss=NaNAtStep(0)).fit()
    assert "earlier_failure" not in summary


def test_failure_reason_is_the_first_sentence() -> None:
    assert failure_reason("x went wrong at 1.5 (y). Lower z; then retry") == "x went wrong at 1.5 (y)"
    assert failure_reason("CUDA out of memory.") == "CUDA out of memory"
    assert failure_reason("first line\nsecond line. more") == "first line"
    assert failure_reason("") == ""
    assert failure_reason("x. y") == "x"  # a one-letter sentence still ends at its period
    assert failure_reason(". y") == ". y"  # never an empty reason


# --------------------------------------------------------------------------- study folders


def _finished(run: Path, seed: int, top1: float, sha: str | None = SHA) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "summary.json").write_text(json.dumps({
        "experiment": f"{run.parent.parent.name}/{run.parent.name}", "seed": seed, "status": "finished", "epochs": 3,
        "final": {"test": {"top1": top1}}, "best": {"test": {"top1": top1 - 1}},
        "wall_time_s": 60.0, "teacher": None if sha is None else {"sha256": sha},
    }))


def _failed(run: Path, seed: int, reason: str, epoch: int = 1, sha: str | None = SHA) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e}) + "\n" for e in range(1, epoch)))
    (run / "failure.json").write_text(json.dumps({
        "seed": seed, "status": "failed", "epoch": epoch, "last_checkpoint_epoch": epoch - 1,
        "reason": reason, "teacher": None if sha is None else {"sha256": sha},
    }))


def test_the_table_counts_failed_seeds_and_lists_them_under_it(tmp_path: Path) -> None:
    method = tmp_path / "m"
    _finished(method / "seed0", 0, 30.0)
    _failed(method / "seed1", 1, "non-finite loss at epoch 1, step 37: term detail=inf")
    _failed(method / "seed2", 2, "CUDA out of memory", epoch=4)
    _failed(method / "seed3", 3, "of another teacher", sha="cd" * 32)  # stale: left out
    _finished(method / "seed4", 4, 31.0)
    _failed(method / "seed4", 4, "failed, then finished when run again")  # a leftover
    _failed(method / ".stale" / "seed5", 5, "set aside")
    _failed(method / "seed10", 10, "disk full", epoch=2)  # by number: after seed 2
    _failed(method / "unnamed", 0, "no seed recorded")
    unnamed = json.loads((method / "unnamed" / "failure.json").read_text())
    del unnamed["seed"]
    (method / "unnamed" / "failure.json").write_text(json.dumps(unnamed))  # listed last
    row = S.collect(method, "M", SHA)
    assert row is not None and row.seeds == [0, 4] and row.last == [30.0, 31.0]
    assert row.failed == [
        (1, "epoch 1: non-finite loss at epoch 1, step 37: term detail=inf"),
        (2, "epoch 4: CUDA out of memory"),
        (10, "epoch 2: disk full"),
        (None, "epoch 1: no seed recorded"),
    ]
    table = S.results_table([row], None, "CE")
    assert "| M | 2 of 6 | 30.50 ± 0.71 | 29.50 ± 0.71 |  | 60 s |" in table
    row.failed = row.failed[:2]
    assert S.failure_notes([row]) == [
        "Failed runs (their `failure.json`; the means above leave them out):",
        "",
        "- M, seed 1: failed at epoch 1: non-finite loss at epoch 1, step 37: term detail=inf",
        "- M, seed 2: failed at epoch 4: CUDA out of memory",
    ]


def test_a_method_whose_every_seed_failed_keeps_its_row(tmp_path: Path) -> None:
    _finished(tmp_path / "ce" / "seed0", 0, 20.0, sha=None)
    _finished(tmp_path / "ce" / "seed1", 1, 22.0, sha=None)
    _failed(tmp_path / "sum" / "seed0", 0, "non-finite loss")
    _failed(tmp_path / "sum" / "seed1", 1, "non-finite loss")
    ce, broken = S.collect(tmp_path / "ce", "CE"), S.collect(tmp_path / "sum", "sum", SHA)
    assert ce is not None and broken is not None and broken.n == 0
    assert S.paired_delta(broken, ce) == "–"
    table = S.results_table([ce, broken], "CE", "CE")
    assert "| sum | 0 of 2 | – | – | – | – |" in table
    assert S.failure_notes([ce]) == []
    assert S.collect(tmp_path / "absent", "x") is None


def test_run_state_and_plan_name_a_failed_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _failed(run, 0, "CUDA out of memory", epoch=3)
    assert S.run_state(run, 5) == "failed"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert S.run_state(run, 5) == "failed"  # tried again from last.pt
    assert S._failure_line(run) == "epoch 3: CUDA out of memory"
    _finished(run, 0, 30.0)
    assert S.run_state(run, 3) == "finished"  # a finish outranks a leftover record


# --------------------------------------------------------------------------- records


def test_records_carry_a_failed_run_and_import_it_as_failed(tmp_path: Path) -> None:
    study = tmp_path / "study"
    failed = study / "cpu/pair/sum/seed1"
    _failed(failed, 1, "non-finite loss at epoch 2", epoch=2)
    (failed / "checkpoints").mkdir()
    torch.save({"epoch": 1}, failed / "checkpoints" / "last.pt")  # never part of a record
    assert state.run_progress(failed) == ("partial", 1)  # here it resumes
    _finished(study / "cpu/pair/ce/seed0", 0, 20.0, sha=None)
    (study / "cpu/pair/kd/seed0").mkdir(parents=True)  # killed before a checkpoint: no record
    (study / "cpu/pair/kd/seed0/config.yaml").write_text("{}\n")
    lines: list[str] = []
    records = tmp_path / "records"
    written = state.export_records(study, records, say=lines.append)
    assert sorted(written) == ["cpu/pair/ce/seed0", "cpu/pair/sum/seed1"]
    assert sorted(p.name for p in (records / "cpu/pair/sum/seed1").iterdir()) == [
        "config.yaml", "failure.json", "metrics.jsonl"]
    assert lines == [f"records: 2 finished or failed run(s) written to {records}, 0 "
                     "unchanged, 1 unfinished run(s) left out"]

    fresh = tmp_path / "fresh"
    state.import_state(records, fresh, say=lambda line: None)
    assert state.run_progress(fresh / "cpu/pair/sum/seed1") == ("failed", 2)
    assert S.run_state(fresh / "cpu/pair/sum/seed1", 15) == "failed"
    shown = list(state.describe(fresh))
    assert "  cpu/pair/sum/seed1: failed at epoch 2" in shown

    # a local run killed after a checkpoint can resume: a carried failure never replaces it
    killed = tmp_path / "killed"
    (killed / "cpu/pair/sum/seed1/checkpoints").mkdir(parents=True)
    (killed / "cpu/pair/sum/seed1/config.yaml").write_text("{}\n")
    torch.save({"epoch": 1}, killed / "cpu/pair/sum/seed1/checkpoints/last.pt")
    report = state.import_state(records, killed, say=lambda line: None)
    assert "cpu/pair/sum/seed1" in report.kept_local
    assert not (killed / "cpu/pair/sum/seed1/failure.json").exists()

    # a local run that finished since is further along than the carried failure: kept
    _finished(fresh / "cpu/pair/sum/seed1", 1, 25.0)
    (fresh / "cpu/pair/sum/seed1/failure.json").unlink()
    report = state.import_state(records, fresh, say=lambda line: None)
    assert "cpu/pair/sum/seed1" in report.kept_local
    assert not (fresh / "cpu/pair/sum/seed1/failure.json").exists()


def test_study_md_lists_failed_seeds_under_their_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))
    data = synthetic.write_fake_tiny_imagenet(
        tmp_path / "data", num_classes=3, train_per_class=2, val_per_class=1, size=32
    )
    pair = S.Pair("tiny_cnn", "tiny_cnn", {"width": 8}, {"width": 4})
    methods = [m for m in S.main_methods(3) if m.name == "figkd"]
    study = S.plan_study(unit_tier(pairs=(pair,), epochs=3, seeds=(0, 1)), tmp_path / "out",
                         data, methods=methods + S.ablation_methods(["reduction"]), write=False)
    base = study.out / "tiny_cnn-w8_tiny_cnn-w4"
    for seed in (0, 1):
        _finished(base / "figkd" / f"seed{seed}", seed, 24.0 + seed)
    _finished(base / "figkd_reduction-sum" / "seed0", 0, 1.5)
    _failed(base / "figkd_reduction-sum" / "seed1", 1, "non-finite loss at epoch 1, step 9")
    # runs of seeds this study does not have (e.g. held out to confirm a pick) stay out
    _finished(base / "figkd_reduction-sum" / "seed2", 2, 90.0)
    _failed(base / "figkd_reduction-sum" / "seed3", 3, "of a held-out seed")
    _finished(base / "figkd" / "seed4", 4, 90.0)
    text = S.write_study_report(study, None, "figkd study", None).read_text()
    reduction = text.split("### FiGKD ablation: reduction", 1)[1]
    assert "| FiGKD reduction=sum | 1 of 2 | 1.50 | 0.50 | -23.00 | 60 s |" in reduction
    assert reduction.endswith(
        "\n\nFailed runs (their `failure.json`; the means above leave them out):\n\n"
        "- FiGKD reduction=sum, seed 1: failed at epoch 1: non-finite loss at epoch 1, step 9\n"
    )
    main_table = text.split("## ", 1)[1].split("### ", 1)[0]
    assert "Failed runs" not in main_table
