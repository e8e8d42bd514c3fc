"""tools/device: a state larger than one call back travels as bundles, one per call.

``short_tier.sh`` exports the state into bundles and returns the first; ``fetch.sh`` returns
the next one per call; ``collect.sh`` imports every returned folder into the mirror.  Here the
calls' ``$OUT`` folders are plain folders, and the study is hand-made (no training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from figkd.cli import main

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _killed_run(root: Path, rel: str, epoch: int, weights: int) -> None:
    run = root / rel
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny_cnn\n")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": epoch}) + "\n")
    torch.save(
        {"epoch": epoch, "model": {"w": torch.full((weights,), float(epoch))}},
        run / "checkpoints" / "last.pt",
    )


def _fetch(outbox: Path, out: Path) -> str:
    result = subprocess.run(
        ["bash", str(REPO / "tools/device/fetch.sh")],
        env={**os.environ, "OUTBOX": str(outbox), "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def _carried(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_bundles_returned_call_by_call_rebuild_the_study_in_the_mirror(tmp_path: Path) -> None:
    study, outbox = tmp_path / "study", tmp_path / "outbox"
    for seed, epoch in enumerate((5, 4, 3)):  # three killed runs of ~0.4 MiB each
        _killed_run(study, f"short/p/kd/seed{seed}", epoch, weights=100_000)
    assert (
        main(
            [
                "state",
                "export",
                str(study),
                str(outbox),
                "--budget-mib",
                "5",
                "--part-mib",
                "0.25",
                "--bundle-mib",
                "0.5",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in outbox.iterdir()) == ["bundle-00", "bundle-01", "bundle-02"]

    calls = [tmp_path / f"call{i}" for i in range(4)]
    said = [_fetch(outbox, out) for out in calls]
    assert "returning bundle-00" in said[0] and "2 bundle(s) left: call fetch.sh again" in said[0]
    assert "returning bundle-02" in said[2] and "0 bundle(s) left" in said[2]
    assert "no bundle left" in said[3] and not calls[3].exists()
    for out in calls[:3]:  # each call returns one bundle, within the device's file limits
        files = list((out / "state").iterdir())
        assert (out / "state" / "state.json").is_file() and len(files) <= 7
        assert all(f.stat().st_size <= 16 * MIB for f in files)

    mirror = tmp_path / "mirror"
    collect = subprocess.run(
        ["bash", str(REPO / "tools/device/collect.sh"), *map(str, calls[:3])],
        env={**os.environ, "PY": sys.executable, "MIRROR": str(mirror)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert collect.returncode == 0, collect.stdout + collect.stderr
    assert "3 bundle(s) imported" in collect.stdout
    assert _carried(mirror) == _carried(study)  # the furthest run first, each whole


def test_collect_imports_the_bundles_of_a_session_that_lapsed(tmp_path: Path) -> None:
    study, outbox = tmp_path / "study", tmp_path / "outbox"
    for seed, epoch in enumerate((5, 4)):
        _killed_run(study, f"short/p/kd/seed{seed}", epoch, weights=100_000)
    assert (
        main(
            ["state", "export", str(study), str(outbox), "--budget-mib", "5", "--bundle-mib", "0.5"]
        )
        == 0
    )
    first = tmp_path / "call0"
    _fetch(outbox, first)  # the machine went back before the second fetch
    mirror = tmp_path / "mirror"
    subprocess.run(
        ["bash", str(REPO / "tools/device/collect.sh"), str(first)],
        env={**os.environ, "PY": sys.executable, "MIRROR": str(mirror)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert sorted(_carried(mirror)) == [  # the run furthest along came back whole
        f"short/p/kd/seed0/{n}" for n in ("checkpoints/last.pt", "config.yaml", "metrics.jsonl")
    ]


def test_collect_without_folders_says_how_to_call_it() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "tools/device/collect.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (
        result.returncode == 2 and "usage: bash tools/device/collect.sh FILES_AT" in result.stdout
    )
