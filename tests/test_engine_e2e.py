"""End to end on the bundled digits: a teacher, KD and FiGKD students, eval and report.

Everything goes through the ``figkd`` command line, so the run layout, the
teacher hand-off (a ``figkd train`` checkpoint loaded by ``figkd distill``) and
the reports are exercised exactly as users run them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
import torch

from figkd.cli import main

COMMON = [
    "data.dataset=digits",
    "data.num_workers=0",
    "train.device=cpu",
    "train.num_threads=1",
    "train.progress=none",
    "schedule.milestones=[5]",
    "train.epochs=6",
]
TEACHER = ["model.name=tiny_cnn", "model.args.width=16"]
STUDENT = [
    "model.name=tiny_cnn",
    "model.args.width=8",
    "teacher.name=tiny_cnn",
    "teacher.args.width=16",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *COMMON, *TEACHER, "--output-dir", str(out), "--name", "teacher"]) == 0
    teacher = out / "teacher/seed0/checkpoints/last.pt"
    for method in ("kd", "figkd"):
        assert (
            main(
                [
                    "distill",
                    *COMMON,
                    *STUDENT,
                    f"loss.name={method}",
                    "--teacher",
                    str(teacher),
                    "--output-dir",
                    str(out),
                    "--name",
                    method,
                    "--seeds",
                    "0",
                    "1",
                ]
            )
            == 0
        )
    return out


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_layout(runs: Path) -> None:
    run = runs / "figkd/seed1"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert len(_metrics(run)) == 6
    s = _summary(run)
    for key in (
        "versions",
        "git",
        "device",
        "wall_time_s",
        "train_img_per_s",
        "final",
        "best",
        "teacher",
    ):
        assert key in s, key
    assert s["versions"]["torch"] == torch.__version__
    assert s["seed"] == 1 and s["experiment"] == "figkd" and s["status"] == "finished"
    assert s["train_img_per_s"] > 0
    assert s["best"]["epoch"] in range(1, 7) and "test" in s["best"]


def test_accuracy_clearly_above_chance(runs: Path) -> None:
    teacher = _summary(runs / "teacher/seed0")
    assert teacher["final"]["test"]["top1"] > 85.0  # 10 classes: chance is 10 %
    assert teacher["teacher"] is None
    for method in ("kd", "figkd"):
        for seed in (0, 1):
            s = _summary(runs / f"{method}/seed{seed}")
            assert s["final"]["test"]["top1"] > 60.0, (method, seed)
            assert s["teacher"]["test"]["top1"] == pytest.approx(teacher["final"]["test"]["top1"])


def test_figkd_training_loss_decreases_and_logs_its_terms(runs: Path) -> None:
    records = _metrics(runs / "figkd/seed0")
    losses = [r["train"]["loss"] for r in records]
    assert losses[-1] < 0.5 * losses[0]
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 4
    for r in records:
        assert r["train"]["loss"] == pytest.approx(r["train"]["ce"] + r["train"]["detail"])
        assert set(r) >= {"epoch", "lr", "train", "val", "test", "time_s"}
    assert [r["lr"] for r in records] == pytest.approx([0.05] * 5 + [0.005])


def test_teacher_file_is_checked_and_recorded(runs: Path) -> None:
    path = runs / "teacher/seed0/checkpoints/last.pt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    s = _summary(runs / "kd/seed0")
    assert s["teacher"]["sha256"] == digest
    assert s["teacher"]["num_classes"] == 10 and s["teacher"]["arch"] == "tiny_cnn"


def test_eval_command_reproduces_the_logged_metrics(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs / "kd/seed0"
    assert main(["eval", str(run / "checkpoints/last.pt"), "train.device=cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(_summary(run)["final"]["test"]["top1"])
    assert (
        main(["eval", str(run / "checkpoints/best.pt"), "train.device=cpu", "--split", "val"]) == 0
    )
    best = _summary(run)["best"]
    assert f"top-1 {best['val']['top1']:.2f}" in capsys.readouterr().out


def test_report_aggregates_the_seeds(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs), "--out", str(runs / "report")]) == 0
    out = capsys.readouterr().out
    tops = [_summary(runs / f"figkd/seed{s}")["final"]["test"]["top1"] for s in (0, 1)]
    mean = sum(tops) / 2
    std = abs(tops[0] - tops[1]) / 2**0.5
    assert f"{mean:.2f} ± {std:.2f}" in out
    assert (runs / "report/report.csv").read_text().count("\n") == 4  # header + 3 experiments


def test_existing_run_is_not_overwritten_silently(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", *COMMON, *TEACHER, "--output-dir", str(runs), "--name", "teacher"])
    assert code == 2
    assert "--resume" in capsys.readouterr().err
    # a finished run asked to resume is left as it is
    before = (runs / "teacher/seed0/summary.json").read_text()
    assert (
        main(
            ["train", *COMMON, *TEACHER, "--output-dir", str(runs), "--name", "teacher", "--resume"]
        )
        == 0
    )
    assert (runs / "teacher/seed0/summary.json").read_text() == before


def test_wrong_teacher_is_refused_with_both_values(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = str(runs / "teacher/seed0/checkpoints/last.pt")
    args = [*COMMON, "model.name=tiny_cnn", "model.args.width=8", "loss.name=kd"]
    flags = ["--teacher", teacher, "--output-dir", str(runs), "--name", "bad"]
    assert main(["distill", *args, "teacher.name=resnet8x4", *flags]) == 2
    err = capsys.readouterr().err
    assert "'tiny_cnn'" in err and "'resnet8x4'" in err
    assert main(["distill", *args, "teacher.name=tiny_cnn", "teacher.args.width=32", *flags]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "(16, 1, 3, 3)" in err and "(32, 1, 3, 3)" in err


def test_train_and_distill_refuse_the_other_kind_of_method(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", *COMMON, "loss.name=kd"]) == 2
    assert "use `figkd distill`" in capsys.readouterr().err
    assert main(["distill", *COMMON, "loss.name=ce"]) == 2
    assert "use `figkd train`" in capsys.readouterr().err
