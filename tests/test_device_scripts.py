"""tools/device: the scripts a lent GPU session runs, dry-run on the CPU (slow).

Two "sessions" on bare study folders, chained through the mirror that ``collect.sh`` keeps,
must give the table a single uninterrupted session gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from figkd.cli import main
from figkd.data import synthetic

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _session(tmp: Path, name: str, shards: Path, methods: str, state_in: Path,
             **extra: str) -> Path:
    env = {
        **os.environ,
        "PY": sys.executable,
        "PARALLEL": "2",
        "AMP": "none",
        "LIMIT": "500",
        "SHARDS": str(shards),
        "OUT": str(tmp / name / "out"),
        "STUDY_OUT": str(tmp / name / "study"),
        "STATE_IN": str(state_in),
        "RECORDS": str(tmp / "no-records"),  # not the repository's committed ones
        "FIGKD_CACHE": str(tmp / "cache"),
        "OVERRIDES": f"data.batch_size=16 optim.lr=0.01 teacher.cache=auto teacher.cache_dir={tmp / name / 'logits'}",
        "STUDY_ARGS": f"--epochs 2 --teacher-epochs 2 --seeds 0 --methods {methods} "
        "--device cpu --threads 1",
        **extra,
    }
    result = subprocess.run(["bash", str(REPO / "tools/device/short_tier.sh")], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp / name


def _rows(study_md: Path) -> list[str]:
    """Table rows without the time column."""
    return ["|".join(line.split("|")[:6]) for line in study_md.read_text().splitlines()
            if line.startswith("| ") and "method" not in line]


def test_two_chained_sessions_give_the_single_session_table(tmp_path: Path) -> None:
    # enough images for BatchNorm's running statistics to settle in a few steps (with too
    # few, resnet32x4's eval-mode logits explode and the KD students diverge)
    data = synthetic.write_fake_tiny_imagenet(tmp_path / "data", num_classes=5,
                                              train_per_class=40, val_per_class=4, size=32)
    shards = tmp_path / "shards"
    assert main(["pack", "tiny-imagenet", "--data-root", str(data), "--size", "32",
                 "--out", str(shards)]) == 0
    nowhere = tmp_path / "no-state"
    reference = _session(tmp_path, "reference", shards, "ce kd figkd", nowhere)

    first = _session(tmp_path, "first", shards, "ce kd", nowhere)
    returned = sorted(p.relative_to(first / "out").as_posix()
                      for p in (first / "out").rglob("*") if p.is_file())
    assert returned[:2] == ["results.tar.gz", "state/state.json"] and len(returned) <= 8
    # attach.sh's fallback for a study killed mid-way: no training, the same state exported
    finish = _session(tmp_path, "finish", shards, "ce kd", nowhere, FINISH_ONLY="1",
                      STUDY_OUT=str(first / "study"))
    finish_log = (first / "study" / "device.log").read_text().split("FINISH_ONLY")[-1]
    assert "trained" not in finish_log and "state exported" in finish_log
    manifests = [json.loads((where / "out" / "state" / "state.json").read_text())
                 for where in (first, finish)]
    # the same runs and files (the tar parts differ only in their headers' times)
    assert manifests[0]["runs"] == manifests[1]["runs"] and manifests[0]["runs"]
    mirror = tmp_path / "mirror"
    collect = subprocess.run(
        ["bash", str(REPO / "tools/device/collect.sh"), str(first / "out")],
        env={**os.environ, "PY": sys.executable, "MIRROR": str(mirror),
             "RECORDS": str(tmp_path / "records")},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert collect.returncode == 0, collect.stdout + collect.stderr
    assert "imported 3 run(s)" in collect.stdout and len(list(mirror.rglob("teacher.pt"))) == 1

    second = _session(tmp_path, "second", shards, "ce kd figkd", mirror)
    log = (second / "study" / "device.log").read_text()
    assert "imported 3 run(s)" in log  # teacher, CE, KD: skipped, only FiGKD trains
    assert "1 finished run(s) skipped" in log and "2 finished run(s) skipped" in log
    assert "[1/1] resnet32x4_resnet8x4/figkd seed0: trained" in log
    assert _rows(second / "out" / "study.md") == _rows(reference / "out" / "study.md")
    assert len(_rows(reference / "out" / "study.md")) == 4  # teacher, CE, KD, FiGKD

    # a new checkout: no mirror, only the committed records (collect.sh wrote them).  The
    # teacher is retrained (deterministically) to the same teacher.pt, so the CE and KD
    # records count; FiGKD trains; the table is the single session's again
    records = tmp_path / "records"
    assert "commit " + str(records) in collect.stdout
    assert not list(records.rglob("*.pt"))
    fresh = _session(tmp_path, "fresh", shards, "ce kd figkd", nowhere, RECORDS=str(records))
    log = (fresh / "study" / "device.log").read_text()
    assert "imported 2 run(s)" in log and "1 not carried" in log  # the teacher has no weights
    assert "--deterministic-teacher" in log and "--replace-stale" in log
    assert "teacher seed0: trained" in log and "figkd seed0: trained" in log
    assert "set aside" not in log and "/kd seed0: trained" not in log
    assert _rows(fresh / "out" / "study.md") == _rows(reference / "out" / "study.md")
