"""``figkd study``'s jobs: what each run is configured with, which state a run folder is in,
how ``execute`` launches runs, and how ``run_study`` hands a teacher's checksum to its students.

Nothing here trains: configs are planned, run folders are hand-made ``summary.json`` and
checkpoint files, and the runners are replaced by recorders.  Expected values are written by
hand (the values a user would put in a config, the run folder layout of docs/reproduction.md,
SHA-256 by ``hashlib`` of a file the test wrote).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import unit_tier

import figkd.analysis.study as S
from figkd.config import load_config
from figkd.data import synthetic


@pytest.fixture()
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))
    return synthetic.write_fake_tiny_imagenet(
        tmp_path / "data", num_classes=3, train_per_class=2, val_per_class=1, size=32
    )


PAIR = S.Pair("tiny_cnn", "tiny_cnn", {"width": 8}, {"width": 4})
PAIR_NAME = "tiny_cnn-w8_tiny_cnn-w4"  # <teacher>-<arg initial><value>_<student>-...


def _tier(**changes: Any) -> S.Tier:
    return unit_tier(**{"pairs": (PAIR,), "epochs": 2, "teacher_epochs": 3, "seeds": (4, 7),
                        **changes})


def _methods(*names: str) -> list[S.Method]:
    return [m for m in S.main_methods(2) if m.name in names]


# --------------------------------------------------------------------------- the plan


def test_teacher_and_student_configs_hold_what_the_tier_asks(
    fake_root: Path, tmp_path: Path
) -> None:
    """A wrong epoch count, seed, model or teacher file changes the study's numbers silently."""
    study = S.plan_study(
        _tier(), tmp_path / "out", fake_root, methods=_methods("ce", "kd"), device="cpu",
        amp="bf16", threads=3,
    )
    out = tmp_path / "out" / "unit"
    teacher = study.teachers[PAIR_NAME]
    # docs/reproduction.md: teachers live in <tier>/teachers/<arch>-<key>/seed0, key 12 hex
    assert re.fullmatch(r"teachers/tiny_cnn-[0-9a-f]{12}", str(teacher.config.experiment))
    assert teacher.seed == 0 and teacher.kind == "train" and teacher.method is None
    assert teacher.run_dir == out / str(teacher.config.experiment) / "seed0"
    assert teacher.label == f"{PAIR_NAME}/teacher seed0"
    written = load_config(teacher.config_path)  # the file the subprocess reads
    assert teacher.config_path.parent == out / "configs"
    assert written.model.name == "tiny_cnn" and dict(written.model.args) == {"width": 8}
    assert written.train.epochs == 3 and written.schedule.milestones == [1, 2, 2]
    assert written.data.root == str(fake_root) and written.data.dataset == "tiny-imagenet"
    assert (written.data.val_fraction, written.data.batch_size) == (0.25, 16)
    assert written.data.num_workers == 0 and dict(written.data.args) == {}
    assert (written.train.device, written.train.amp, written.train.num_threads) == (
        "cpu", "bf16", 3
    )
    assert written.train.progress == "none"  # in-process runs print their own lines

    sha = "ab" * 32
    jobs = S.student_jobs(study, {PAIR_NAME: sha})
    assert [(_method_name(j), j.seed, j.kind) for j in jobs] == [
        ("ce", 4, "train"), ("ce", 7, "train"), ("kd", 4, "distill"), ("kd", 7, "distill"),
    ]
    assert jobs[3].run_dir == out / PAIR_NAME / "kd" / "seed7"
    kd = load_config(out / "configs" / PAIR_NAME / "kd.yaml")
    assert kd.model.name == "tiny_cnn" and dict(kd.model.args) == {"width": 4}
    assert kd.train.epochs == 2 and kd.schedule.milestones == [1, 1, 1]
    assert kd.loss.name == "kd"
    assert kd.teacher.name == "tiny_cnn" and dict(kd.teacher.args) == {"width": 8}
    assert kd.teacher.sha256 == sha
    assert kd.teacher.checkpoint == str(
        (out / str(teacher.config.experiment) / "seed0" / "checkpoints" / "teacher.pt").resolve()
    )
    ce = load_config(out / "configs" / PAIR_NAME / "ce.yaml")
    assert ce.teacher.checkpoint is None and ce.teacher.sha256 is None


def test_a_plan_without_a_teacher_checksum_has_only_the_teacher_free_students(
    fake_root: Path, tmp_path: Path
) -> None:
    study = S.plan_study(_tier(), tmp_path, fake_root, methods=_methods("ce", "kd", "figkd"),
                         write=False)
    assert [(_method_name(j), j.seed) for j in S.student_jobs(study, {}, write=False)] == [
        ("ce", 4), ("ce", 7)
    ]
    assert not (tmp_path / "unit").exists()  # --plan writes nothing


def test_defaults_come_from_the_tier(fake_root: Path, tmp_path: Path) -> None:
    study = S.plan_study(_tier(parallel=3), tmp_path, fake_root, write=False)
    assert study.parallel == 3 and study.seeds == [4, 7]
    assert [m.name for m in study.methods] == [
        "ce", "kd", "dkd", "dist", "mlkd", "kd_ls", "figkd"
    ]
    # an explicit --parallel wins over the tier's, and 0 means one run at a time
    assert S.plan_study(_tier(parallel=3), tmp_path, fake_root, parallel=1,
                        write=False).parallel == 1
    assert S.plan_study(_tier(), tmp_path, fake_root, parallel=0, write=False).parallel == 1


@pytest.mark.parametrize(
    "tier_threads,parallel,threads,cores,expected,progress",
    [
        (None, 2, None, 8, 4, "lines"),  # cores shared between parallel runs
        (None, 1, None, 8, 8, "none"),
        (None, 3, None, 8, 2, "lines"),  # 8 // 3
        (None, 4, None, 2, 1, "lines"),  # never below one thread
        (None, 1, None, None, 1, "none"),  # cpu_count() unknown
        (3, 2, None, 8, 3, "lines"),  # the tier's own count
        (3, 2, 5, 8, 5, "lines"),  # --threads wins
    ],
)
def test_threads_per_run_and_subprocess_progress_lines(
    fake_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tier_threads: int | None,
    parallel: int,
    threads: int | None,
    cores: int | None,
    expected: int,
    progress: str,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    tier = dataclasses.replace(_tier(), threads=tier_threads)  # tier_with ignores None
    study = S.plan_study(tier, tmp_path, fake_root, parallel=parallel,
                         threads=threads, methods=_methods("ce"), write=False)
    teacher = study.teachers[PAIR_NAME].config
    student = S.student_jobs(study, {}, write=False)[0].config
    for cfg in (teacher, student):
        assert cfg.train.num_threads == expected and cfg.train.progress == progress


def test_a_per_class_subset_of_another_dataset_is_a_reader_option(tmp_path: Path) -> None:
    """For datasets other than tiny-imagenet the subset sizes travel in ``data.args``."""
    tier = _tier(dataset="uint8-shards", train_per_class=4, test_per_class=2)
    study = S.plan_study(tier, tmp_path, tmp_path / "shards", methods=_methods("ce"),
                         write=False)
    cfg = S.student_jobs(study, {}, write=False)[0].config
    assert dict(cfg.data.args) == {"train_per_class": 4, "test_per_class": 2}
    assert dict(study.teachers[PAIR_NAME].config.data.args) == {
        "train_per_class": 4, "test_per_class": 2
    }


# --------------------------------------------------------------------------- run states


def _method_name(job: S.Job) -> str:
    """The method of a student job (only a teacher's job has none)."""
    assert job.method is not None, job.label
    return job.method.name


def _summary(run: Path, **data: Any) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps(data))


def _last(run: Path) -> None:
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")


def test_run_states(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert S.run_state(run, 5) == "new"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    assert S.run_state(run, 5) == "new"  # killed before its first checkpoint
    _last(run)
    assert S.run_state(run, 5) == "partial"
    _summary(run, status="finished", epochs=5)
    assert S.run_state(run, 5) == "finished"
    # asked for more epochs than the finished run has: it continues from last.pt
    assert S.run_state(run, 8) == "partial"
    _summary(run, status="failed", epochs=5)
    assert S.run_state(run, 5) == "partial"  # a summary that is not "finished"


def test_a_summary_without_an_epoch_count_is_not_finished(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _summary(run, status="finished")
    assert S.run_state(run, 1) == "new"
    assert S.run_state(run, 2) == "new"


def test_stale_only_when_both_checksums_are_known_and_differ(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _summary(run, status="finished", epochs=2, teacher={"sha256": "a" * 64})
    assert S.run_state(run, 2, "b" * 64) == "stale"
    assert S.run_state(run, 2, "a" * 64) == "finished"
    assert S.run_state(run, 2) == "finished"  # the teacher's own check passes no checksum
    _summary(run, status="finished", epochs=2, teacher=None)  # CE: no teacher recorded
    assert S.run_state(run, 2, "b" * 64) == "finished"
    _summary(run, status="finished", epochs=2, teacher={"name": "x"})
    assert S.run_state(run, 2, "b" * 64) == "finished"


# --------------------------------------------------------------------------- execute


def _jobs(root: Path, tmp_path: Path) -> list[S.Job]:
    study = S.plan_study(_tier(seeds=(0, 1, 2)), tmp_path / "out", root,
                         methods=_methods("ce", "kd"), write=False)
    return S.student_jobs(study, {PAIR_NAME: "c" * 64}, write=False)


def test_execute_spreads_runs_over_the_gpus_in_turn(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = _jobs(fake_root, tmp_path)[:3]  # ce seeds 0, 1, 2
    seen: dict[str, str | None] = {}

    def record(job: S.Job, log_dir: Path, env: dict[str, str]) -> None:
        seen[job.label] = env.get("CUDA_VISIBLE_DEVICES")

    monkeypatch.setattr(S, "_run_subprocess", record)
    outcomes = S.execute(jobs, 2, tmp_path / "logs", say=lambda _: None, gpus=["3", "5"])
    assert [o.status for o in outcomes] == ["trained"] * 3
    assert seen == {f"{PAIR_NAME}/ce seed0": "3", f"{PAIR_NAME}/ce seed1": "5",
                    f"{PAIR_NAME}/ce seed2": "3"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    seen.clear()
    S.execute(jobs, 2, tmp_path / "logs", say=lambda _: None)  # no --gpus: inherited
    assert set(seen.values()) == {"7"}


def test_execute_skips_resumes_restarts_and_refuses_stale_runs(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ce0, ce1, ce2, kd0, kd1, _ = _jobs(fake_root, tmp_path)
    _summary(ce0.run_dir, status="finished", epochs=2)
    _last(ce1.run_dir)  # killed after a checkpoint
    ce2.run_dir.mkdir(parents=True)  # killed before its first checkpoint
    (ce2.run_dir / "metrics.jsonl").write_text("{}\n")
    _summary(kd0.run_dir, status="finished", epochs=2, teacher={"sha256": "d" * 64})
    ran: list[str] = []

    def run(job: S.Job, say: Any) -> None:
        # a restarted run finds a clean folder; a resumed one keeps its checkpoint
        ran.append(job.label)
        if job is ce2:
            assert not job.run_dir.exists()
        if job is ce1:
            assert (job.run_dir / "checkpoints" / "last.pt").is_file()

    monkeypatch.setattr(S, "_run_in_process", run)
    lines: list[str] = []
    outcomes = S.execute([ce0, ce1, ce2, kd0, kd1], 1, tmp_path / "logs", say=lines.append)
    by_label = {o.job.label: o for o in outcomes}
    assert {k: o.status for k, o in by_label.items()} == {
        f"{PAIR_NAME}/ce seed0": "skipped",
        f"{PAIR_NAME}/ce seed1": "resumed",
        f"{PAIR_NAME}/ce seed2": "trained",
        f"{PAIR_NAME}/kd seed0": "failed",
        f"{PAIR_NAME}/kd seed1": "trained",
    }
    assert ran == [f"{PAIR_NAME}/ce seed1", f"{PAIR_NAME}/ce seed2", f"{PAIR_NAME}/kd seed1"]
    assert by_label[f"{PAIR_NAME}/ce seed0"].seconds == 0.0  # nothing ran
    assert "another teacher" in str(by_label[f"{PAIR_NAME}/kd seed0"].error)
    assert (kd0.run_dir / "summary.json").is_file()  # a stale run is reported, not deleted


def test_execute_tries_failed_runs_again_from_their_checkpoint_or_afresh(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ce0, ce1 = _jobs(fake_root, tmp_path)[:2]
    for job, epoch, reason in ((ce0, 1, "non-finite loss"), (ce1, 3, "CUDA out of memory")):
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "failure.json").write_text(json.dumps({"epoch": epoch, "reason": reason}))
    _last(ce1.run_dir)  # failed at epoch 3, after two checkpointed epochs
    folders: dict[str, list[str]] = {}

    def run(job: S.Job, say: Any) -> None:  # what the trainer finds
        folders[job.label] = sorted(p.name for p in job.run_dir.glob("*"))

    monkeypatch.setattr(S, "_run_in_process", run)
    lines: list[str] = []
    outcomes = S.execute([ce0, ce1], 1, tmp_path / "logs", say=lines.append)
    assert [o.status for o in outcomes] == ["trained", "resumed"]
    assert folders == {ce0.label: [], ce1.label: ["checkpoints", "failure.json"]}
    assert f"  {ce0.label}: failed before (epoch 1: non-finite loss); trying again" in lines
    assert f"  {ce1.label}: failed before (epoch 3: CUDA out of memory); trying again" in lines


def test_the_plan_names_a_failed_run_and_why(fake_root: Path, tmp_path: Path) -> None:
    study = S.plan_study(_tier(seeds=(0,)), tmp_path / "out", fake_root,
                         methods=_methods("ce"), write=False)
    (job,) = S.student_jobs(study, {}, write=False)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "failure.json").write_text(json.dumps({"epoch": 2, "reason": "disk full"}))
    assert S.describe_plan(study, [job]).splitlines()[1] == (
        f"  failed   train   {job.config_path}  --seeds 0  (failed at epoch 2: disk full; "
        "tried again)"
    )


def test_execute_times_each_run_by_the_clock(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = _jobs(fake_root, tmp_path)[:2]
    ticks = iter([10.0, 12.5, 20.0, 24.0])  # start and end of each run
    monkeypatch.setattr(S, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))

    def run(job: S.Job, say: Any) -> None:
        if job.seed == 1:
            raise RuntimeError("out of memory")

    monkeypatch.setattr(S, "_run_in_process", run)
    outcomes = S.execute(jobs, 1, tmp_path / "logs", say=lambda _: None)
    assert [(o.status, o.seconds) for o in outcomes] == [("trained", 2.5), ("failed", 4.0)]
    assert outcomes[1].error == "out of memory"


def test_a_failed_subprocess_names_its_exit_status_log_and_last_lines(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _jobs(fake_root, tmp_path)[0]
    script = "for i in range(1, 8): print(f'line {i}')\nraise SystemExit(3)"
    monkeypatch.setattr(S, "_command", lambda job: [sys.executable, "-c", script])
    logs = tmp_path / "a" / "b" / "logs"  # created with its parents
    log = logs / f"{PAIR_NAME}_ce_seed0.log"
    tail = "line 3\nline 4\nline 5\nline 6\nline 7"  # the log's last five lines
    with pytest.raises(RuntimeError) as caught:
        S._run_subprocess(job, logs, dict(os.environ))
    assert str(caught.value) == f"exit status 3 (log {log}): {tail}"
    with pytest.raises(RuntimeError):
        S._run_subprocess(job, logs, dict(os.environ))  # the same folder again: appended
    assert log.read_text().count("line 7") == 2
    monkeypatch.setattr(S, "_command", lambda job: [sys.executable, "-c", "print('ok')"])
    S._run_subprocess(job, logs, dict(os.environ))  # exit status 0: no error


def test_the_subprocess_command_resumes_one_seed_of_the_config(
    fake_root: Path, tmp_path: Path
) -> None:
    kd1 = _jobs(fake_root, tmp_path)[4]
    command = S._command(kd1)
    assert command[0] == sys.executable
    assert command[3:] == ["distill", str(kd1.config_path), "--seeds", "1", "--resume"]


# --------------------------------------------------------------------------- run_study


class FakeExecute:
    """Stands in for ``execute``: the first batch finishes the teacher as the test says; the
    jobs ``followers`` releases for those outcomes are the second batch (maybe empty)."""

    def __init__(self, teacher: str, teacher_summary: bool, ce_fails: bool) -> None:
        self.teacher, self.teacher_summary, self.ce_fails = teacher, teacher_summary, ce_fails
        self.batches: list[list[S.Job]] = []
        self.weights = b"teacher weights"

    def __call__(self, jobs: list[S.Job], *args: Any, **kwargs: Any) -> list[S.Outcome]:
        outcomes = self._run(jobs)
        released = [j for outcome in outcomes for j in kwargs["followers"](outcome)]
        return outcomes + self._run(released)

    def _run(self, jobs: list[S.Job]) -> list[S.Outcome]:
        self.batches.append(list(jobs))
        outcomes = []
        for job in jobs:
            if job.method is None:
                if self.teacher_summary:
                    _summary(job.run_dir, status="finished", epochs=3)
                    (job.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                    (job.run_dir / "checkpoints" / "teacher.pt").write_bytes(self.weights)
                outcomes.append(S.Outcome(job, self.teacher, 1.26))
            elif job.method.name == "ce" and self.ce_fails and job.seed == 4:
                outcomes.append(S.Outcome(job, "failed", 0.5, "boom"))
            else:
                outcomes.append(S.Outcome(job, "trained", 2.0))
        return outcomes


def test_students_distil_from_the_finished_teachers_file_even_when_ce_fails(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed CE run is not its pair's teacher failing: the distilled students still run,
    pinned to the SHA-256 of the teacher's ``teacher.pt``."""
    fake = FakeExecute("trained", teacher_summary=True, ce_fails=True)
    monkeypatch.setattr(S, "execute", fake)
    study = S.plan_study(_tier(), tmp_path / "out", fake_root, methods=_methods("ce", "kd"))
    manifest = S.run_study(study, say=lambda _: None)
    labels = [[j.label for j in batch] for batch in fake.batches]
    assert labels == [
        [f"{PAIR_NAME}/teacher seed0", f"{PAIR_NAME}/ce seed4", f"{PAIR_NAME}/ce seed7"],
        [f"{PAIR_NAME}/kd seed4", f"{PAIR_NAME}/kd seed7"],
    ]
    sha = hashlib.sha256(fake.weights).hexdigest()
    assert manifest["teachers"][PAIR_NAME]["sha256"] == sha
    for job in fake.batches[1]:
        assert job.config.teacher.sha256 == sha
        written = load_config(job.config_path)
        assert written.teacher.sha256 == sha
        assert written.teacher.checkpoint == str(
            (study.teachers[PAIR_NAME].run_dir / "checkpoints" / "teacher.pt").resolve()
        )
    runs = {r["run"]: (r["status"], r["seconds"]) for r in manifest["runs"]}
    assert runs[f"{PAIR_NAME}/teacher seed0"] == ("trained", 1.3)  # one decimal
    assert runs[f"{PAIR_NAME}/ce seed4"] == ("failed", 0.5)
    assert runs[f"{PAIR_NAME}/kd seed7"] == ("trained", 2.0)


@pytest.mark.parametrize(
    "status,summary",
    [
        ("trained", False),  # the run returned but left no finished summary
        ("failed", True),  # failed this time, whatever its folder says
    ],
)
def test_no_distilled_students_without_a_finished_teacher(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str,
    summary: bool
) -> None:
    fake = FakeExecute(status, teacher_summary=summary, ce_fails=False)
    monkeypatch.setattr(S, "execute", fake)
    study = S.plan_study(_tier(), tmp_path / "out", fake_root, methods=_methods("ce", "kd"))
    lines: list[str] = []
    manifest = S.run_study(study, say=lines.append)
    assert fake.batches[1] == []
    assert f"  no teacher for {PAIR_NAME}: its distilled students are left out" in lines
    assert manifest["teachers"][PAIR_NAME]["sha256"] is None


# --------------------------------------------------------------------------- the report


def test_the_report_counts_this_invocations_runs_by_status(
    fake_root: Path, tmp_path: Path
) -> None:
    study = S.plan_study(_tier(), tmp_path / "out", fake_root, methods=_methods("ce"),
                         write=False)
    study.out.mkdir(parents=True)
    statuses = ("trained", "failed", "trained", "skipped", "trained")
    manifest = {"runs": [{"status": s} for s in statuses]}
    text = S.write_study_report(study, manifest, "figkd study", 90.0).read_text()
    assert "\n- runs: 1 failed, 1 skipped, 3 trained\n" in text
    assert "\n- wall time of this invocation: 90 s\n" in text
    assert json.loads((study.out / "study.json").read_text()) == manifest
    text = S.write_study_report(study, None, "figkd study", None).read_text()
    assert "- runs:" not in text and "wall time of this invocation" not in text


def test_an_ablation_table_holds_the_default_and_its_own_variants_only(
    fake_root: Path, tmp_path: Path
) -> None:
    methods = _methods("ce", "figkd") + S.ablation_methods(["bands"])
    study = S.plan_study(_tier(), tmp_path / "out", fake_root, methods=methods, write=False)
    for name, top1 in (("ce", 50.0), ("figkd", 60.0), ("figkd_bands-low", 55.0)):
        _summary(study.out / PAIR_NAME / name / "seed4", status="finished", seed=4, epochs=2,
                 final={"test": {"top1": top1}})
    text = S.write_study_report(study, None, "figkd study", None).read_text()
    table = text.split("### FiGKD ablation: bands")[1]
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| FiGKD")]
    assert rows == ["| FiGKD bands=high (default)", "| FiGKD bands=low"]
    assert "| CE |" not in table  # a main method is not an ablation variant


# --------------------------------------------------------------------------- followers


def test_a_released_job_starts_while_the_rest_of_the_first_list_still_runs(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No barrier: KD, released when CE seed0 ends, takes the free slot while CE seed1 (given
    in the first list) is still running.  With a barrier CE seed1 would wait in vain."""
    ce0, ce1, _, kd0, _, _ = _jobs(fake_root, tmp_path)
    kd_started = threading.Event()
    seen: dict[str, bool] = {}

    def run(job: S.Job, log_dir: Path, env: dict[str, str]) -> None:
        if job is ce1:
            seen["kd began while ce seed1 ran"] = kd_started.wait(timeout=20)
        if job is kd0:
            kd_started.set()

    monkeypatch.setattr(S, "_run_subprocess", run)
    released = {id(ce0): [kd0]}
    outcomes = S.execute([ce0, ce1], 2, tmp_path / "logs", say=lambda _: None,
                         followers=lambda outcome: released.get(id(outcome.job), []))
    assert seen == {"kd began while ce seed1 ran": True}
    assert [(o.job.label, o.status) for o in outcomes] == [
        (f"{PAIR_NAME}/ce seed0", "trained"), (f"{PAIR_NAME}/ce seed1", "trained"),
        (f"{PAIR_NAME}/kd seed0", "trained")]


def test_a_finished_job_releases_its_followers_without_running(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ce0, _, _, kd0, kd1, _ = _jobs(fake_root, tmp_path)
    _summary(ce0.run_dir, status="finished", epochs=2)
    _summary(kd0.run_dir, status="finished", epochs=2, teacher={"sha256": "c" * 64})
    ran: list[str] = []
    monkeypatch.setattr(S, "_run_in_process", lambda job, say: ran.append(job.label))
    asked: list[str] = []

    def followers(outcome: S.Outcome) -> list[S.Job]:
        asked.append(f"{outcome.job.label} {outcome.status}")
        return [kd0, kd1] if outcome.job is ce0 else []

    lines: list[str] = []
    outcomes = S.execute([ce0], 1, tmp_path / "logs", say=lines.append, followers=followers)
    assert asked == [f"{PAIR_NAME}/ce seed0 skipped", f"{PAIR_NAME}/kd seed0 skipped",
                     f"{PAIR_NAME}/kd seed1 trained"]
    assert ran == [f"{PAIR_NAME}/kd seed1"]
    assert [o.status for o in outcomes] == ["skipped", "skipped", "trained"]
    assert lines[:2] == ["  1 finished run(s) skipped", "  1 finished run(s) skipped"]
    assert lines[2].startswith(f"  [1/1] {PAIR_NAME}/kd seed1: trained, no summary, ")


def test_students_with_the_most_epochs_left_go_first(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A continued study starts the runs that have not begun (here FiGKD) before the nearly
    done ones; equals keep the plan's order (method, then seed)."""
    import torch

    study = S.plan_study(_tier(epochs=10), tmp_path / "out", fake_root,
                         methods=_methods("kd", "dkd", "figkd"))
    jobs = S.student_jobs(study, {PAIR_NAME: "0" * 64}, teacher_free=False)
    by_label = {job.label.split("/")[1]: job for job in jobs}

    def killed_at(label: str, epoch: int) -> None:
        run = by_label[label].run_dir
        (run / "checkpoints").mkdir(parents=True)
        torch.save({"epoch": epoch, "model": {}}, run / "checkpoints" / "last.pt")

    killed_at("kd seed4", 7)  # 3 left
    killed_at("kd seed7", 2)  # 8 left
    killed_at("dkd seed4", 2)  # 8 left
    _summary(by_label["dkd seed7"].run_dir, status="finished", epochs=10)  # 0 left
    assert [S.epochs_left(by_label[k]) for k in ("kd seed4", "kd seed7", "dkd seed7")] == [3, 8, 0]
    order = [job.label.split("/")[1] for job in S.most_epochs_left_first(jobs)]
    assert order == ["figkd seed4", "figkd seed7", "kd seed7", "dkd seed4", "kd seed4",
                     "dkd seed7"]
