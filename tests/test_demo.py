"""``figkd demo`` (what ``make demo`` runs): reduced in the default suite, the real one in slow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from figkd.cli import main


def _check(out: Path, text: str, seeds: int, epochs: int) -> None:
    for name in ("teacher", "ce", "kd", "figkd"):
        assert f"| {name} | tiny_cnn w" in text
    assert "PyWavelets" in text and "-> OK" in text
    assert (out / "curves.png").stat().st_size > 1000
    rows = {
        r["experiment"]: r for r in csv.DictReader((out / "report.csv").read_text().splitlines())
    }
    assert set(rows) == {"teacher", "ce", "kd", "figkd"}
    assert all(int(rows[m]["n"]) == seeds for m in ("ce", "kd", "figkd"))
    for method in ("ce", "kd", "figkd"):
        lines = (out / method / "seed0" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == epochs
        assert (
            json.loads((out / method / "seed0" / "summary.json").read_text())["status"]
            == "finished"
        )


def test_reduced_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--teacher-epochs",
        "3",
        "--seeds",
        "0",
        "1",
        "--progress",
        "lines",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    _check(out, text, seeds=2, epochs=3)
    assert "figkd    seed 1: 3 epochs" in text
    teacher = json.loads((out / "teacher/seed0/summary.json").read_text())
    assert teacher["final"]["test"]["top1"] > 50.0
    # re-running replaces the previous demo (no stale seeds in the table)
    assert (
        main(
            [
                "demo",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--teacher-epochs",
                "1",
                "--seeds",
                "0",
                "--progress",
                "none",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    _check(out, capsys.readouterr().out, seeds=1, epochs=1)


@pytest.mark.slow
def test_full_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    _check(out, text, seeds=3, epochs=30)
    rows = {
        r["experiment"]: r for r in csv.DictReader((out / "report.csv").read_text().splitlines())
    }
    assert float(rows["teacher"]["top1_last_mean"]) > 95.0
    assert all(float(rows[m]["top1_last_mean"]) > 85.0 for m in ("ce", "kd", "figkd"))
