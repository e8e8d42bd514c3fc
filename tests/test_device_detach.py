"""tools/device/detach.sh + attach.sh: one study across several device calls.

The study script is replaced by a stub (SCRIPT=) that logs, sleeps and writes the files
short_tier.sh returns, so the follow / return / fallback logic runs here in seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
set -u
if [ "${FINISH_ONLY:-0}" = 1 ]; then
  echo "stub: finish only"
  mkdir -p "$OUT/state" && echo '{"finish": 1}' > "$OUT/state/state.json"
  exit 0
fi
echo "stub: limit $LIMIT"
for i in $(seq "$STUB_STEPS"); do echo "stub: step $i"; sleep "$STUB_SLEEP"; done
mkdir -p "$OUT/state"
echo "table" > "$OUT/study.md"
echo '{"bundle": 0}' > "$OUT/state/state.json"
exit 124
"""


@pytest.fixture()
def job(tmp_path: Path) -> dict[str, str]:
    stub = tmp_path / "stub.sh"
    stub.write_text(STUB)
    return {**os.environ, "SCRIPT": str(stub), "JOB": str(tmp_path / "job"),
            "OUT": str(tmp_path / "out"), "STUB_STEPS": "3", "STUB_SLEEP": "0.5"}


def call(script: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", f"tools/device/{script}"], cwd=REPO, env={**env, **extra},
                          capture_output=True, text=True, timeout=60, check=False)


def wait_for(path: Path, seconds: float = 20.0) -> None:
    end = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.1)


def test_the_study_outlives_the_detach_call_and_attach_returns_its_files(
    job: dict[str, str], tmp_path: Path
) -> None:
    first = call("detach.sh", job, BUDGET="500", RESERVE="200", WAIT="0", STUB_SLEEP="1")
    assert first.returncode == 0, first.stderr
    assert "LIMIT=300 s in its own session" in first.stdout
    assert "still running after 0 s of this call: call attach.sh again" in first.stdout
    assert not (tmp_path / "out" / "study.md").exists()  # nothing returned yet
    again = call("detach.sh", job, LIMIT="100")
    assert again.returncode == 3 and "already running" in again.stdout
    second = call("attach.sh", job, WAIT="30")
    assert second.returncode == 0, second.stderr
    assert "the study ended (status 124)" in second.stdout
    assert (tmp_path / "out" / "study.md").read_text() == "table\n"
    assert (tmp_path / "out" / "state" / "state.json").exists()
    # every log line shown exactly once over the two calls
    lines = [ln for ln in (first.stdout + second.stdout).splitlines() if ln.startswith("stub:")]
    assert lines == ["stub: limit 300", "stub: step 1", "stub: step 2", "stub: step 3"]
    # a repeated attach (a lost reply) returns the same files again
    third = call("attach.sh", job, OUT=str(tmp_path / "out2"))
    assert third.returncode == 0 and (tmp_path / "out2" / "study.md").exists()


def test_a_study_that_ends_within_the_detach_call_returns_at_once(job: dict[str, str],
                                                                  tmp_path: Path) -> None:
    done = call("detach.sh", job, LIMIT="90", STUB_STEPS="1", STUB_SLEEP="0")
    assert done.returncode == 0 and "the study ended (status 124)" in done.stdout
    assert "LIMIT=90 s" in done.stdout and "stub: limit 90" in done.stdout
    assert (tmp_path / "out" / "study.md").exists()


def test_a_killed_study_is_exported_as_it_is(job: dict[str, str], tmp_path: Path) -> None:
    call("detach.sh", job, LIMIT="100", WAIT="0", STUB_STEPS="100", STUB_SLEEP="0.2")
    pid_file = tmp_path / "job" / "pid"
    wait_for(pid_file)
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the whole session, as a crash would
    back = call("attach.sh", job, WAIT="30")
    assert back.returncode == 0, back.stderr
    assert "gone without a status" in back.stdout and "status finish-only 0" in back.stdout
    assert (tmp_path / "out" / "state" / "state.json").read_text() == '{"finish": 1}\n'


@pytest.mark.parametrize(("extra", "message"), [
    ({}, "give BUDGET=<budget_left_s"),
    ({"BUDGET": "250", "RESERVE": "200"}, "a 50 s study is too short"),
])
def test_detach_refuses_without_a_usable_limit(job: dict[str, str], extra: dict[str, str],
                                               message: str) -> None:
    job = {k: v for k, v in job.items() if k not in ("BUDGET", "LIMIT")}
    out = call("detach.sh", job, **extra)
    assert out.returncode == 2 and message in out.stdout


def test_attach_without_a_started_study_says_so(job: dict[str, str]) -> None:
    out = call("attach.sh", job)
    assert out.returncode == 2 and "no study was started on this machine" in out.stdout


def test_without_setsid_the_study_runs_in_the_call_within_its_cap(job: dict[str, str],
                                                                 tmp_path: Path) -> None:
    # a PATH with bash and the basic tools but no setsid
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "mkdir", "rm", "sleep", "seq", "cat", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    out = call("detach.sh", {**job, "PATH": str(bin_dir)}, BUDGET="900", STUB_STEPS="1",
               STUB_SLEEP="0")
    assert "no setsid here" in out.stdout and "stub: limit 540" in out.stdout
    assert out.returncode == 124 and (tmp_path / "out" / "study.md").exists()
