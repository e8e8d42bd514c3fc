"""``figkd state records``: finished runs' text files copied into a folder fit for git.

The study folders are built here by hand in the engine's layout (``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/``, ``tensorboard/``, temporaries of
atomic writes); expected records are worked out from those files' bytes, not from
``study_state``'s own helpers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from figkd.analysis import study_state as state
from figkd.analysis.study import run_state
from figkd.cli import main

TEACHER_SHA = "ab" * 32
KD = "unit/pair/kd/seed0"
CE = "unit/pair/ce/seed0"
TEACHER = "unit/teachers/resnet8-1a2b/seed0"
KILLED = "unit/pair/dkd/seed0"
FRESH = "unit/pair/fitnet/seed0"
FINISHED = sorted([CE, KD, TEACHER])
#: a time no copy made today can carry: shows that a record's file was not rewritten
OLD_NS = 1_000_000_000_000_000_000


def _summary(epochs: int, top1: float, teacher: bool = False) -> str:
    data: dict[str, object] = {"status": "finished", "epochs": epochs, "test": {"top1": top1}}
    if not teacher:
        data["teacher"] = {"sha256": TEACHER_SHA}
    return json.dumps(data, indent=1)


def _make_run(root: Path, rel: str, *, finished: bool, epoch: int = 3, top1: float = 61.5,
              last: bool = False, best: bool = False, teacher_pt: bool = False,
              extra: dict[str, str] | None = None) -> Path:
    """A run folder in the engine's layout, with weights, TensorBoard events and a half-written
    temporary that must never become part of a record."""
    run = root / rel
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"experiment: {rel}\nmodel:\n  arch: resnet8\ntrain:\n"
                                     f"  epochs: {epoch if finished else 3}\n")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train": {"loss": 4.6 / e}, "test": {"top1": 20.0 * e}}) + "\n"
        for e in range(1, epoch + 1)))
    if finished:
        (run / "summary.json").write_text(_summary(epoch, top1, teacher="teachers" in rel))
    if last:
        torch.save({"epoch": epoch, "model": {"w": torch.arange(8.0)}},
                   run / "checkpoints" / "last.pt")
    if best:
        torch.save({"epoch": epoch, "model": {"w": torch.ones(8)}}, run / "checkpoints" / "best.pt")
    if teacher_pt:
        (run / "checkpoints" / "teacher.pt").write_bytes(b"teacher weights " * 16)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"\x00event" * 100)
    (run / ".summary.json.tmp").write_text("half written")
    for name, text in (extra or {}).items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    return run


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """Three finished runs (two students, one teacher with its weights), a killed student at
    epoch 2 and a student that never got to a checkpoint."""
    root = tmp_path / "study"
    _make_run(root, KD, finished=True, last=True, best=True,
              extra={"eval/test.json": json.dumps({"top1": 61.5})})
    _make_run(root, CE, finished=True, top1=58.25)
    _make_run(root, TEACHER, finished=True, top1=70.0, last=True, teacher_pt=True)
    _make_run(root, KILLED, finished=False, epoch=2, last=True, best=True)
    _make_run(root, FRESH, finished=False, epoch=0)
    return root


def _record_files(run: Path) -> list[str]:
    """What a record of ``run`` must hold: every file but weights, events and dot-files."""
    return sorted(
        p.relative_to(run).as_posix() for p in run.rglob("*")
        if p.is_file() and p.relative_to(run).parts[0] not in ("checkpoints", "tensorboard")
        and not p.name.startswith(".")
    )


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _expected(root: Path, runs: list[str]) -> dict[str, bytes]:
    return {f"{rel}/{name}": (root / rel / name).read_bytes()
            for rel in runs for name in _record_files(root / rel)}


def _line(dest: Path, written: int, unchanged: int, unfinished: int) -> str:
    """The summary line ``export_records`` ends with."""
    return (f"records: {written} finished or failed run(s) written to {dest}, {unchanged} "
            f"unchanged, {unfinished} unfinished run(s) left out")


def _age(dest: Path) -> None:
    for path in dest.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(OLD_NS, OLD_NS))


def _stamps(dest: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every record file: a swapped-in copy changes at least the inode."""
    return {p.relative_to(dest).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in dest.rglob("*") if p.is_file()}


def test_records_hold_finished_runs_small_files_byte_for_byte(root: Path, tmp_path: Path) -> None:
    """Exactly the finished runs' config, metrics, summary (and other small files, nested
    ones too) arrive; no checkpoint, no TensorBoard file, no temporary, no killed run."""
    dest = tmp_path / "docs" / "results" / "short_tier_runs"  # parents created as needed
    said: list[str] = []
    written = state.export_records(root, dest, say=said.append)
    assert written == FINISHED
    tree = _tree(dest)
    assert tree == _expected(root, FINISHED)
    assert sorted(tree) == sorted([
        f"{CE}/config.yaml", f"{CE}/metrics.jsonl", f"{CE}/summary.json",
        f"{KD}/config.yaml", f"{KD}/eval/test.json", f"{KD}/metrics.jsonl",
        f"{KD}/summary.json",
        f"{TEACHER}/config.yaml", f"{TEACHER}/metrics.jsonl", f"{TEACHER}/summary.json",
    ])
    assert not any(p.suffix == ".pt" or "tensorboard" in p.parts or p.name.startswith(".")
                   for p in dest.rglob("*"))  # no leftover scratch folder either
    assert not (dest / KILLED).exists() and not (dest / FRESH).exists()
    assert said == [_line(dest, 3, 0, 2)]


def test_unchanged_records_are_left_alone_and_a_retrained_run_is_replaced_whole(
    root: Path, tmp_path: Path
) -> None:
    """A second call rewrites nothing (same inodes and mtimes).  Then the kd run is trained
    again (new summary, no ``eval/test.json``), the killed run finishes, and a stray file is
    put into the ce record: exactly those three records are rewritten, the stale file goes."""
    dest = tmp_path / "records"
    state.export_records(root, dest, say=lambda _: None)
    _age(dest)
    before, stamps = _tree(dest), _stamps(dest)
    said: list[str] = []
    assert state.export_records(root, dest, say=said.append) == []
    assert _tree(dest) == before and _stamps(dest) == stamps
    assert said == [_line(dest, 0, 3, 2)]

    (root / KD / "summary.json").write_text(_summary(3, 63.0))
    (root / KD / "eval" / "test.json").unlink()
    (root / KILLED / "summary.json").write_text(_summary(2, 40.0))
    (dest / CE / "notes.txt").write_text("added by hand")
    said.clear()
    assert state.export_records(root, dest, say=said.append) == sorted([CE, KILLED, KD])
    assert _tree(dest) == _expected(root, sorted([CE, KD, KILLED, TEACHER]))
    assert not (dest / KD / "eval").exists() and not (dest / CE / "notes.txt").exists()
    assert json.loads((dest / KD / "summary.json").read_text())["test"]["top1"] == 63.0
    after = _stamps(dest)
    assert {k: v for k, v in after.items() if k.startswith(TEACHER)} == {
        k: v for k, v in stamps.items() if k.startswith(TEACHER)}
    assert said == [_line(dest, 3, 1, 1)]


def test_records_of_runs_the_study_no_longer_holds_are_kept(root: Path, tmp_path: Path) -> None:
    """Records accumulate over sessions: a run deleted from the study (or a study from an
    earlier checkout) keeps its record."""
    dest = tmp_path / "records"
    state.export_records(root, dest, say=lambda _: None)
    kept = {k: v for k, v in _tree(dest).items() if k.startswith(CE)}
    shutil.rmtree(root / CE)
    other = tmp_path / "other"
    _make_run(other, "small/pair/kd/seed1", finished=True, top1=12.5)
    assert state.export_records(root, dest, say=lambda _: None) == []
    assert state.export_records(other, dest, say=lambda _: None) == ["small/pair/kd/seed1"]
    tree = _tree(dest)
    assert {k: v for k, v in tree.items() if k.startswith(CE)} == kept
    assert sorted({k.rsplit("/", 1)[0] for k in tree}) == sorted(
        [*FINISHED, "small/pair/kd/seed1", f"{KD}/eval"])


def test_an_interrupted_swap_leaves_the_old_record(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If renaming the new record into place fails, the old record is put back whole and no
    scratch folder is left in ``dest``; the next call writes the new record."""
    dest = tmp_path / "records"
    state.export_records(root, dest, say=lambda _: None)
    old = _tree(dest)
    (root / KD / "summary.json").write_text(_summary(3, 64.0))
    real_replace = os.replace

    def failing(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src).name == "new":  # the second rename: new record into place
            raise OSError("disk went away")
        real_replace(src, dst)

    monkeypatch.setattr(state.os, "replace", failing)
    with pytest.raises(OSError, match="disk went away"):
        state.export_records(root, dest, say=lambda _: None)
    monkeypatch.undo()
    assert _tree(dest) == old
    assert [p.name for p in dest.iterdir()] == ["unit"]
    assert state.export_records(root, dest, say=lambda _: None) == [KD]
    assert _tree(dest) == _expected(root, FINISHED)


def test_records_import_back_as_finished_students_and_a_teacher_to_retrain(
    root: Path, tmp_path: Path
) -> None:
    """``import_state(RECORDS, STUDY)`` into a fresh study: students arrive finished with their
    files intact (valid while the teacher keeps the pinned SHA-256); the teacher has no
    weights in its record, so it is not carried and the study trains it again."""
    dest = tmp_path / "records"
    state.export_records(root, dest, say=lambda _: None)
    fresh = tmp_path / "fresh"
    said: list[str] = []
    report = state.import_state(dest, fresh, say=said.append)
    assert sorted(report.taken) == [CE, KD]
    assert report.incomplete == [TEACHER] and report.kept_local == []
    assert not (fresh / TEACHER).exists()
    for rel in (CE, KD):
        run = fresh / rel
        assert _tree(run) == {n: (root / rel / n).read_bytes() for n in _record_files(root / rel)}
        assert run_state(run, 3) == "finished"
        assert run_state(run, 3, TEACHER_SHA) == "finished"
        assert run_state(run, 3, "cd" * 32) == "stale"  # a retrained teacher with other weights
    assert said[-1] == f"state: imported 2 run(s) into {fresh}; 0 local run(s) as far or " \
                       f"further kept; 1 not carried"


def test_records_kept_inside_the_study_folder_are_not_taken_for_runs(
    root: Path, tmp_path: Path
) -> None:
    """``dest`` below the study: its records hold ``config.yaml`` too, but are not copied
    into themselves on the next call; ``dest`` equal to the study is refused."""
    dest = root / "records"
    assert state.export_records(root, dest, say=lambda _: None) == FINISHED
    assert state.export_records(root, dest, say=lambda _: None) == []
    assert not (dest / "records").exists()
    assert _tree(dest) == _expected(root, FINISHED)
    with pytest.raises(ValueError, match="into the study folder itself"):
        state.export_records(root, root, say=lambda _: None)


def test_cli_records_prints_the_summary_and_the_runs_written(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "records"
    assert main(["state", "records", str(root), str(dest)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        _line(dest, 3, 0, 2),
        *[f"  wrote {rel}" for rel in FINISHED],
    ]
    assert _tree(dest) == _expected(root, FINISHED)
    assert main(["state", "records", str(root), str(dest)]) == 0
    assert capsys.readouterr().out == _line(dest, 0, 3, 2) + "\n"


def test_cli_records_refuses_a_missing_or_empty_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 with ``figkd state: error:`` naming the folder; nothing is created."""
    dest = tmp_path / "records"
    missing = tmp_path / "nothing"
    assert main(["state", "records", str(missing), str(dest)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"figkd state: error: {missing} does not exist: give a study's --out folder (run "
        f"folders with a config.yaml below it) to `figkd state records`\n"
    )
    empty = tmp_path / "empty"
    (empty / "unit" / "pair").mkdir(parents=True)
    assert main(["state", "records", str(empty), str(dest)]) == 2
    assert capsys.readouterr().err == (
        f"figkd state: error: {empty} holds no runs (no */config.yaml below it): give a "
        f"study's --out folder to `figkd state records`\n"
    )
    assert not dest.exists()
