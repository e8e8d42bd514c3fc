"""figkd report: mean ± std over seeds on synthetic runs equals a hand computation."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from figkd.cli import main
from figkd.engine.report import aggregate, find_summaries, mean_std, to_csv, to_markdown


def _write(
    root: Path,
    experiment: str,
    seed: int,
    last: float,
    best: float | None,
    paper: float | None = None,
    teacher: float | None = 80.0,
    finished: bool = True,
) -> None:
    run = root / experiment / f"seed{seed}"
    run.mkdir(parents=True)
    summary = {
        "experiment": experiment,
        "seed": seed,
        "method": experiment.split("/")[1],
        "model": "resnet8x4",
        "dataset": experiment.split("/")[0],
        "teacher": {"arch": "resnet32x4", "test": {"top1": teacher}} if teacher else None,
        "final": {"epoch": 240, "test": {"top1": last, "top5": last + 20}} if finished else {},
        "best": {"epoch": 200, "test": {"top1": best}} if best is not None else None,
        "paper": {"top1": paper, "table": 1 if paper else None, "note": None},
    }
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    for seed, (last, best) in enumerate([(77.0, 76.5), (78.0, 78.5), (79.5, 79.0)]):
        _write(tmp_path, "cifar100/figkd/r32x4_r8x4", seed, last, best, paper=78.05)
    for seed, last in enumerate([73.1, 73.4]):
        _write(tmp_path, "cifar100/kd/r32x4_r8x4", seed, last, None, paper=73.33)
    _write(tmp_path, "cifar100/kd/r32x4_r8x4", 2, 0.0, None, paper=73.33, finished=False)
    _write(tmp_path, "cifar100/ce/r8x4", 0, 72.25, 72.0, teacher=None)
    return tmp_path


def test_mean_and_sample_std_match_a_hand_computation(runs: Path) -> None:
    rows = {r["experiment"]: r for r in aggregate(find_summaries([runs]))}
    figkd = rows["cifar100/figkd/r32x4_r8x4"]
    values = [77.0, 78.0, 79.5]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)  # ddof = 1
    assert figkd["n"] == 3 and figkd["seeds"] == "0 1 2"
    assert figkd["top1_last_mean"] == pytest.approx(78.1666666667)
    assert figkd["top1_last_std"] == pytest.approx(std) == pytest.approx(1.2583057392)
    assert figkd["top1_best_mean"] == pytest.approx((76.5 + 78.5 + 79.0) / 3)
    assert figkd["top5_last_mean"] == pytest.approx(mean + 20)
    assert figkd["delta_vs_paper"] == pytest.approx(mean - 78.05)
    assert figkd["teacher_top1"] == 80.0 and figkd["teacher"] == "resnet32x4"

    kd = rows["cifar100/kd/r32x4_r8x4"]  # the unfinished seed is left out
    assert kd["n"] == 2 and kd["top1_last_mean"] == pytest.approx(73.25)
    assert kd["top1_last_std"] == pytest.approx(abs(73.4 - 73.1) / math.sqrt(2))
    assert kd["top1_best_mean"] is None

    ce = rows["cifar100/ce/r8x4"]
    assert ce["n"] == 1 and ce["top1_last_std"] is None and ce["paper_top1"] is None


def test_markdown_and_csv(runs: Path) -> None:
    rows = aggregate(find_summaries([runs]))
    md = to_markdown(rows)
    assert (
        "| cifar100/figkd/r32x4_r8x4 | figkd | resnet32x4 → resnet8x4 | 3 "
        "| 78.17 ± 1.26 | 78.00 ± 1.32" in md
    )
    assert "| 78.05 (T1) | +0.12 |" in md
    assert "| cifar100/ce/r8x4 | ce | resnet8x4 | 1 | 72.25 | 72.00 |" in md
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["experiment"] for r in table] == sorted(r["experiment"] for r in rows)
    assert float(table[1]["top1_last_std"]) == pytest.approx(1.2583057392)
    assert table[0]["top1_last_std"] == ""  # one seed: no spread


def test_report_command_writes_files(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs / "cifar100/figkd"), "--out", str(runs / "out")]) == 0
    assert "78.17 ± 1.26" in capsys.readouterr().out
    assert (runs / "out/report.md").is_file() and (runs / "out/report.csv").is_file()
    assert main(["report", str(runs / "nowhere")]) == 2


def test_mean_std_edge_cases() -> None:
    assert mean_std([2.0]) == (2.0, None)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert math.isnan(mean_std([])[0])


def test_a_run_found_twice_counts_once(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same experiment and seed in two folders (a copy of a study) count once."""
    import shutil

    copy = tmp_path_factory.mktemp("copy")
    shutil.copytree(runs / "cifar100", copy / "cifar100")
    with pytest.warns(UserWarning, match=r"seed 0 found twice"):
        rows = {r["experiment"]: r for r in aggregate(find_summaries([runs, copy]))}
    figkd = rows["cifar100/figkd/r32x4_r8x4"]
    assert figkd["n"] == 3 and figkd["seeds"] == "0 1 2"
    assert figkd["top1_last_mean"] == pytest.approx((77.0 + 78.0 + 79.5) / 3)


def test_a_summary_file_can_be_named_directly_and_other_files_are_refused(runs: Path) -> None:
    summary = runs / "cifar100/ce/r8x4/seed0/summary.json"
    found = find_summaries([summary])
    assert [s["experiment"] for s in found] == ["cifar100/ce/r8x4"]
    assert found[0]["run_dir"] == str(summary.parent)
    other = summary.with_name("metrics.jsonl")
    other.write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="no run folder or summary.json"):
        find_summaries([other])


def test_markdown_rows_have_as_many_cells_as_the_header(runs: Path) -> None:
    markdown = to_markdown(aggregate(find_summaries([runs])))
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [line.count("|") - 1 for line in lines]
    assert cells == [10] * len(lines) and len(lines) == 2 + 3


def test_paper_table_is_shown_only_beside_a_paper_number(tmp_path: Path) -> None:
    _write(tmp_path, "cifar100/kd/a", 0, 70.0, None, paper=None)
    row = aggregate(find_summaries([tmp_path]))[0]
    row["paper_table"] = 4  # a table without a number must not print "(T4)" beside "–"
    assert "| – | – |" in to_markdown([row]) and "(T4)" not in to_markdown([row])


def test_write_report_creates_nested_folders_and_overwrites(runs: Path) -> None:
    from figkd.engine.report import write_report

    rows = aggregate(find_summaries([runs]))
    out = runs / "nested" / "out"
    md, csv_path = write_report(rows, out)
    assert md.read_text() == to_markdown(rows) and csv_path.read_text() == to_csv(rows)
    md2, _ = write_report(rows[:1], out)  # a second report into the same folder replaces the first
    assert md == md2 and md.read_text() == to_markdown(rows[:1])
    assert csv_path.read_text() == to_csv(rows[:1])
