"""tools/device/progress.py: how far each run got, read from hand-written metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

progress = load_script("tools/device/progress.py", "device_progress")


def _epochs(path: Path, records: list[tuple[float, float, float, float, float]]) -> None:
    path.mkdir(parents=True)
    lines = [
        json.dumps({"epoch": epoch, "lr": lr, "time_s": seconds, "img_per_s": speed,
                    "val": {"top1": val}, "test": {"top1": test}})
        for epoch, (seconds, speed, lr, val, test) in enumerate(records, 1)
    ]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_rows_give_epochs_medians_and_the_last_epochs_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _epochs(tmp_path / "short" / "p" / "ce" / "seed0",
            [(24.0, 1000.0, 0.05, 10.0, 9.5), (10.0, 4000.0, 0.05, 20.0, 19.0),
             (12.0, 3000.0, 0.005, 30.5, 29.25)])
    _epochs(tmp_path / "short" / "teachers" / "t" / "seed0",
            [(16.0, 2000.0, 0.05, 5.0, 4.0), (18.0, 2500.0, 0.05, 7.0, 6.0)])
    assert progress.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    # medians by hand: (10, 12, 24) -> 12 and (1000, 3000, 4000) -> 3000; two values average
    assert out[2:] == [
        "| short/p/ce/seed0 | 3 | 12.0 | 3,000 | 0.005 | 30.50 | 29.25 |",
        "| short/teachers/t/seed0 | 2 | 17.0 | 2,250 | 0.05 | 7.00 | 6.00 |",
    ]


def test_a_folder_without_metrics_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert progress.main([str(tmp_path)]) == 2
    assert f"no metrics.jsonl under {tmp_path}" in capsys.readouterr().out
