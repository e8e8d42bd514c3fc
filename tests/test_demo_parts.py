"""The demo's parts that its end-to-end test only sees in passing: the configs it trains, its
table, its PyWavelets cross-check and its progress lines (values worked out by hand)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest

from figkd.cli import main, parse_args
from figkd.commands import demo
from figkd.commands.demo import DemoProgress, _reference_detail, _table, demo_configs
from figkd.engine.trainer import EpochRecord


def test_configs_train_a_wide_teacher_and_three_narrow_students(tmp_path: Path) -> None:
    """Teacher: tiny_cnn w64, CE, its own epochs; students: w4 with CE, KD and FiGKD, the KD
    ones reading the teacher's last.pt and caching its logits (digits are not augmented).
    Milestones: the paper's 150/180/210 of 240 scaled, floor(m * E / 240):
    E = 20 -> 12, 15, 17; E = 30 -> 18, 22, 26."""
    teacher, students = demo_configs(tmp_path, teacher_epochs=20, epochs=30, teacher_width=64,
                                     student_width=4, device="cpu")
    assert teacher.experiment == "teacher" and teacher.output_dir == str(tmp_path)
    assert (teacher.model.name, teacher.model.args, teacher.loss.name) == (
        "tiny_cnn", {"width": 64}, "ce")
    assert (teacher.train.epochs, teacher.schedule.milestones) == (20, [12, 15, 17])
    assert teacher.teacher.name is None
    assert list(students) == ["ce", "kd", "figkd"]
    last = str(tmp_path / "teacher" / "seed0" / "checkpoints" / "last.pt")
    for method, cfg in students.items():
        assert (cfg.experiment, cfg.loss.name) == (method, method)
        assert cfg.model.args == {"width": 4}
        assert (cfg.train.epochs, cfg.schedule.milestones) == (30, [18, 22, 26])
        assert (cfg.data.dataset, cfg.data.val_fraction, cfg.data.batch_size) == (
            "digits", 0.1, 64)
        assert (cfg.train.device, cfg.train.num_threads, cfg.train.eval_teacher) == (
            "cpu", 1, True)
        if method == "ce":
            assert cfg.teacher.name is None and cfg.teacher.checkpoint is None
            assert not cfg.teacher.cache_logits
        else:
            assert (cfg.teacher.name, cfg.teacher.args) == ("tiny_cnn", {"width": 64})
            assert cfg.teacher.checkpoint == last and cfg.teacher.cache_logits


def test_reference_detail_by_hand() -> None:
    """C = 4 -> a 2x2 map [[1, 2], [3, 4]] against a zero teacher.  One Haar level gives one
    coefficient per band: (1 + 2 - 3 - 4)/2 = -2, (1 - 2 + 3 - 4)/2 = -1, (1 - 2 - 3 + 4)/2 = 0,
    so the summed mean squared band differences are 4 + 1 + 0 = 5.  A second image equal to
    its teacher adds nothing to the sums but halves each mean: 2.5."""
    student = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert _reference_detail(student, np.zeros_like(student)) == pytest.approx(5.0)
    pair = np.array([[1.0, 2.0, 3.0, 4.0], [7.0, 7.0, 7.0, 7.0]])
    teacher = np.array([[0.0, 0.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
    assert _reference_detail(pair, teacher) == pytest.approx(2.5)


def test_reference_detail_pads_a_non_square_class_count() -> None:
    """C = 3 -> a 2x2 map with one zero cell: [[1, 2], [3, 0]] against zeros:
    (1 + 2 - 3)/2 = 0, (1 - 2 + 3)/2 = 1, (1 - 2 - 3)/2 = -2 -> 0 + 1 + 4 = 5."""
    student = np.array([[1.0, 2.0, 3.0]])
    assert _reference_detail(student, np.zeros_like(student)) == pytest.approx(5.0)


def _row(name: str, n: int, last: float, last_std: float | None, best: float | None,
         best_std: float | None) -> dict:
    return {"experiment": name, "n": n, "top1_last_mean": last, "top1_last_std": last_std,
            "top1_best_mean": best, "top1_best_std": best_std}


def test_table_rows_in_order_with_the_gain_over_ce() -> None:
    rows = [
        _row("kd", 3, 97.4, 0.5812, 97.03, 0.43),
        _row("teacher", 1, 98.05, None, 98.61, None),
        _row("ce", 3, 96.19, 0.32, None, None),
    ]
    widths = {"teacher": "tiny_cnn w64", "ce": "tiny_cnn w4", "kd": "tiny_cnn w4",
              "figkd": "tiny_cnn w4"}
    assert _table(rows, ["teacher", "ce", "kd", "figkd"], widths).splitlines() == [
        "| run | model | seeds | test top-1 (last) | test top-1 (best val) | vs CE |",
        "|---|---|---|---|---|---|",
        "| teacher | tiny_cnn w64 | 1 | 98.05 | 98.61 |  |",
        "| ce | tiny_cnn w4 | 3 | 96.19 ± 0.32 | – |  |",
        "| kd | tiny_cnn w4 | 3 | 97.40 ± 0.58 | 97.03 ± 0.43 | +1.21 |",  # 97.4 - 96.19
    ]


def test_table_without_a_ce_row_shows_no_gain() -> None:
    rows = [_row("figkd", 2, 90.0, 1.0, 91.0, 2.0)]
    assert _table(rows, ["ce", "figkd"], {"figkd": "w4"}).splitlines()[-1] == (
        "| figkd | w4 | 2 | 90.00 ± 1.00 | 91.00 ± 2.00 |  |"
    )


def test_progress_lines_report_each_finished_run(capsys: pytest.CaptureFixture[str]) -> None:
    """``lines``: one line when a run's last epoch ends (label padded to 8), none before."""
    progress = DemoProgress(total=4, mode="lines")
    update = progress.callback("kd")
    update(1, EpochRecord(1, 2, {"test": {"top1": 50.0}}))
    update(1, EpochRecord(2, 2, {"test": {"top1": 93.456}}))
    progress.close()
    assert capsys.readouterr().out == "  kd       seed 1: 2 epochs, test top-1 93.46\n"
    silent = DemoProgress(total=1, mode="none")
    silent.callback("ce")(0, EpochRecord(1, 1, {"test": {"top1": 1.0}}))
    assert capsys.readouterr().out == ""


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_epochs_and_names_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal: one bar over every epoch of the demo, its postfix naming the run."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = DemoProgress(total=4, mode="auto")
    update = progress.callback("kd")
    update(1, EpochRecord(1, 2, {"test": {"top1": 50.0}}))
    update(1, EpochRecord(2, 2, {"test": {"top1": 93.456}}))
    assert progress.bar is not None  # a terminal gets a bar
    progress.bar.refresh()
    drawn = terminal.getvalue()
    progress.close()
    assert "demo" in drawn and "2/4" in drawn and "kd seed 1: test top-1 93.5" in drawn


def test_defaults_are_the_documented_demo() -> None:
    """README and the module docstring: a width-64 teacher, width-4 students, three seeds;
    the slow full-demo test checks its 30 student epochs; teachers train 20."""
    args = parse_args(["demo"])
    assert (args.out, args.seeds, args.epochs, args.teacher_epochs) == ("runs/demo", [0, 1, 2],
                                                                         30, 20)
    assert (args.teacher_width, args.student_width, args.device, args.progress) == (
        64, 4, "auto", "auto")


def test_a_pywavelets_mismatch_fails_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cross-check is the demo's verdict: a mismatch prints MISMATCH and exits 1."""
    monkeypatch.setattr(demo, "_pywavelets_check", lambda *args: (1.0, 2.0, False))
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--teacher-epochs", "1",
            "--seeds", "0", "--progress", "none", "--device", "cpu"]
    assert main(argv) == 1
    assert ("FiGKD detail loss on the trained models' test logits: 1.0000000000, "
            "PyWavelets: 2.0000000000 -> MISMATCH") in capsys.readouterr().out


def _metrics(folder: Path, rows: list[tuple[float, float]]) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "test": {"top1": top1, "loss": loss}})
             for e, (top1, loss) in enumerate(rows, start=1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_curves_plot_the_seed_mean_with_a_min_max_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CE over two seeds (the shorter run sets the length: 2 epochs): mean top-1 (50+70)/2 = 60,
    (60+80)/2 = 70, band 50..70 and 60..80; KD with one seed has no band; a run folder without
    seeds (the teacher here) is left out of the legend."""
    _metrics(tmp_path / "ce" / "seed0", [(50.0, 2.0), (60.0, 1.0), (65.0, 0.5)])
    _metrics(tmp_path / "ce" / "seed1", [(70.0, 4.0), (80.0, 3.0)])
    _metrics(tmp_path / "kd" / "seed0", [(90.0, 0.1)])
    (tmp_path / "teacher").mkdir()
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kwargs: saved.append((fig, path)))
    path = demo._curves(tmp_path, {"teacher": "teacher", "ce": "CE", "kd": "KD"})
    assert path == tmp_path / "curves.png" and saved[0][1] == path
    accuracy, loss = saved[0][0].axes
    assert [line.get_label() for line in accuracy.lines] == ["CE", "KD"]
    np.testing.assert_allclose(accuracy.lines[0].get_xydata(), [[1, 60.0], [2, 70.0]])
    np.testing.assert_allclose(loss.lines[0].get_xydata(), [[1, 3.0], [2, 2.0]])
    np.testing.assert_allclose(accuracy.lines[1].get_xydata(), [[1, 90.0]])
    bands = accuracy.collections
    assert len(bands) == 1  # CE only
    corners = bands[0].get_paths()[0].vertices
    assert {tuple(v) for v in corners} >= {(1.0, 50.0), (1.0, 70.0), (2.0, 60.0), (2.0, 80.0)}
    assert (accuracy.get_ylabel(), loss.get_ylabel(), loss.get_yscale()) == (
        "test top-1 (%)", "test cross-entropy", "log")
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["CE", "KD"]
