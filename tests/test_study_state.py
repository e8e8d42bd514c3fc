"""``figkd state``: a study's progress carried between machines in size-capped parts.

The strong check: a study killed mid-run on one "machine", exported, imported into a fresh
folder and finished there ends with the same weights as a study that was never interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import unit_tier

from figkd.analysis import study as S
from figkd.analysis import study_state as state
from figkd.cli import main
from figkd.data import synthetic

MIB = 1 << 20


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.write_fake_tiny_imagenet(
        tmp_path_factory.mktemp("data"), num_classes=6, train_per_class=8, val_per_class=3,
        size=32,
    )


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))


def _tier() -> S.Tier:
    return unit_tier(epochs=3, teacher_epochs=2)


KD = [m for m in S.main_methods(3) if m.name in ("kd", "figkd")]


def _study(out: Path, data: Path) -> S.Study:
    return S.plan_study(_tier(), out, data, methods=KD, device="cpu")


def _run(study: S.Study, stop_student_at: int | None = None, monkeypatch=None) -> dict:
    """Run the study; with ``stop_student_at`` every student is killed after that epoch."""
    if stop_student_at is not None:
        from figkd.engine import launch

        original = launch.run_seeds

        def killed(cfg, seeds=None, **kwargs):
            if cfg.teacher.checkpoint is None:
                return original(cfg, seeds, **kwargs)

            def stop(seed: int, record) -> None:
                if record.epoch == stop_student_at:
                    raise RuntimeError("machine taken back")

            return original(cfg, seeds, **{**kwargs, "on_epoch_end": stop})

        monkeypatch.setattr(launch, "run_seeds", killed)
    manifest = S.run_study(study, say=lambda _: None)
    if stop_student_at is not None:
        monkeypatch.undo()
    return manifest


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def reference(fake_root: Path, tmp_path_factory: pytest.TempPathFactory) -> S.Study:
    """The study run start to finish without interruption."""
    study = _study(tmp_path_factory.mktemp("reference"), fake_root)
    manifest = _run(study)
    assert {r["status"] for r in manifest["runs"]} == {"trained"}
    S.write_study_report(study, manifest, "figkd study --tier unit", 1.0)
    return study


def _student(study: S.Study, method: str) -> Path:
    return study.out / study.tier.pairs[0].name / method / "seed0"


def test_killed_study_exported_imported_and_finished_elsewhere_equals_uninterrupted(
    fake_root: Path, tmp_path: Path, reference: S.Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _study(tmp_path / "machine1", fake_root)
    manifest = _run(first, stop_student_at=1, monkeypatch=monkeypatch)
    assert sorted(r["status"] for r in manifest["runs"]) == ["failed", "failed", "trained"]

    bundle = tmp_path / "out1"
    exported = state.export_state(first.out.parent, bundle, budget_mib=50, say=lambda _: None)
    runs = {r["path"].split("/", 1)[1]: r for r in exported["runs"]}
    teacher = next(r for r in runs.values() if r["teacher"])
    assert teacher["status"] == "finished" and "checkpoints/teacher.pt" in teacher["sent"]
    assert "checkpoints/last.pt" not in teacher["sent"]  # the weights-only file suffices
    kd = runs[f"{first.tier.pairs[0].name}/kd/seed0"]
    assert (kd["status"], kd["epoch"], kd["complete"]) == ("partial", 1, True)
    assert "checkpoints/last.pt" in kd["sent"]
    assert not any("tensorboard" in n for r in runs.values() for n in r["sent"])

    # another machine: a fresh folder, the bundle imported, the same study continued
    second = _study(tmp_path / "machine2", fake_root)
    report = state.import_state(bundle, second.out.parent, say=lambda _: None)
    assert len(report.taken) == 3 and not report.incomplete
    again = _run(second)
    statuses = {r["run"].split("/")[-1]: r["status"] for r in again["runs"]}
    assert statuses == {"teacher seed0": "skipped", "kd seed0": "resumed",
                        "figkd seed0": "resumed"}
    for method in ("kd", "figkd"):
        _assert_same_weights(_student(second, method), _student(reference, method))
        done = json.loads((_student(second, method) / "summary.json").read_text())
        want = json.loads((_student(reference, method) / "summary.json").read_text())
        assert done["final"]["test"] == want["final"]["test"] and done["resumed"] == 1
        assert len((_student(second, method) / "metrics.jsonl").read_text().splitlines()) == 3


def test_budget_drops_the_least_advanced_runs_and_they_restart(
    fake_root: Path, tmp_path: Path, reference: S.Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _study(tmp_path / "m1", fake_root)
    _run(first, stop_student_at=2, monkeypatch=monkeypatch)
    kd_dir = _student(first, "kd")
    assert torch.load(kd_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    # everything needed (no best.pt) but half of one student's last.pt
    _, _, file_sizes = state.plan_export(first.out.parent, 1 << 40)
    needed = state.TAR_END + sum(state._tar_cost(n, k) for k, n in file_sizes.items()
                                 if "best.pt" not in k)
    one_student = (kd_dir / "checkpoints" / "last.pt").stat().st_size
    budget = (needed - one_student / 2) / MIB
    bundle = tmp_path / "b"
    exported = state.export_state(first.out.parent, bundle, budget_mib=budget,
                                  part_mib=0.01, say=lambda _: None)
    complete = {r["path"].rsplit("/", 2)[-2]: r["complete"] for r in exported["runs"]
                if not r["teacher"]}
    assert sorted(complete.values()) == [False, True]  # one student fits, one is dropped
    parts = sorted(bundle.glob("state.tar.*"))
    sizes = [p.stat().st_size for p in parts]
    assert len(parts) > 3 and max(sizes) <= int(0.01 * MIB) and sizes[0] == int(0.01 * MIB)
    assert sum(sizes) <= budget * MIB

    second = _study(tmp_path / "m2", fake_root)
    report = state.import_state(bundle, second.out.parent, say=lambda _: None)
    assert len(report.taken) == 2 and len(report.incomplete) == 1
    again = _run(second)
    statuses = sorted(r["status"] for r in again["runs"])
    assert statuses == ["resumed", "skipped", "trained"]  # the dropped one starts over
    for method in ("kd", "figkd"):
        _assert_same_weights(_student(second, method), _student(reference, method))


def test_unchanged_files_are_kept_not_resent_and_the_mirror_resolves_them(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device1 = _study(tmp_path / "device1", fake_root)
    _run(device1, stop_student_at=1, monkeypatch=monkeypatch)
    state.export_state(device1.out.parent, tmp_path / "b1", say=lambda _: None)
    mirror = tmp_path / "mirror"  # what stays here between sessions
    state.import_state(tmp_path / "b1", mirror, say=lambda _: None)

    device2 = _study(tmp_path / "device2", fake_root)  # the next session: carried mirror
    state.import_state(mirror, device2.out.parent, say=lambda _: None)
    _run(device2)  # the students finish
    exported = state.export_state(device2.out.parent, tmp_path / "b2", say=lambda _: None)
    teacher = next(r for r in exported["runs"] if r["teacher"])
    assert teacher["sent"] == [] and "checkpoints/teacher.pt" in teacher["kept"]  # unchanged
    students = [r for r in exported["runs"] if not r["teacher"]]
    assert all("summary.json" in r["sent"] for r in students)  # finished since the import
    size = sum(p.stat().st_size for p in (tmp_path / "b2").glob("state.tar.*"))
    assert size < (next(mirror.rglob("teacher.pt")).stat().st_size)

    report = state.import_state(tmp_path / "b2", mirror, say=lambda _: None)
    assert len(report.taken) == 2 and len(report.kept_local) == 1  # students newer, teacher same
    runs = [state.describe_run(d, mirror) for d in state.find_run_dirs(mirror)]
    assert [r.status if r is not None else None for r in runs] == ["finished"] * 3
    assert not list(mirror.rglob("last.pt"))  # finished students carry no checkpoint
    assert len(list(mirror.rglob("teacher.pt"))) == 1

    # an older bundle never overwrites newer local progress
    report = state.import_state(tmp_path / "b1", mirror, say=lambda _: None)
    assert report.taken == [] and len(report.kept_local) == 3


def _held(folder: Path) -> int:
    """Bytes of the runs' files a mirror holds (what the next session carries)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
               and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def test_budget_bounds_the_mirror_kept_files_included(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device1 = _study(tmp_path / "device1", fake_root)
    _run(device1, stop_student_at=1, monkeypatch=monkeypatch)
    student = next(device1.out.rglob("kd/seed0/checkpoints/last.pt")).stat().st_size
    _, _, sizes = state.plan_export(device1.out.parent, 1 << 40)
    needed = state.TAR_END + sum(state._tar_cost(n, k) for k, n in sizes.items()
                                 if "best.pt" not in k)
    budget = (needed - student / 2) / MIB  # the teacher and one killed student (no best.pt)
    mirror = tmp_path / "mirror"
    state.export_state(device1.out.parent, tmp_path / "b1", budget_mib=budget, say=lambda _: None)
    state.import_state(tmp_path / "b1", mirror, say=lambda _: None)
    assert _held(mirror) <= budget * MIB
    assert len(list(mirror.rglob("last.pt"))) == 1  # one student carried, one dropped

    device2 = _study(tmp_path / "device2", fake_root)
    state.import_state(mirror, device2.out.parent, say=lambda _: None)
    _run(device2, stop_student_at=2, monkeypatch=monkeypatch)  # both students now killed at 2
    out = state.export_state(device2.out.parent, tmp_path / "b2", budget_mib=budget,
                             say=lambda _: None)
    carried = next(r for r in out["runs"] if r["teacher"])
    assert "checkpoints/teacher.pt" in carried["kept"]  # the teacher is not re-sent ...
    assert sum(not r["complete"] for r in out["runs"]) == 1  # ... but still counts
    state.import_state(tmp_path / "b2", mirror, say=lambda _: None)
    assert _held(mirror) <= budget * MIB
    held = {"teacher" if "teachers" in d.parts else d.parent.name: state.run_progress(d)
            for d in state.find_run_dirs(mirror)}
    # FiGKD (carried at epoch 1) moved on to epoch 2 for the difference in size; KD, never
    # carried, still does not fit
    assert held == {"teacher": ("finished", 2), "figkd": ("partial", 2)}


def test_damaged_or_missing_parts_are_refused_by_name(
    fake_root: Path, tmp_path: Path, reference: S.Study
) -> None:
    bundle = tmp_path / "b"
    state.export_state(reference.out.parent, bundle, part_mib=0.02, say=lambda _: None)
    parts = sorted(bundle.glob("state.tar.*"))
    data = bytearray(parts[1].read_bytes())
    data[100] ^= 1
    parts[1].write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"state\.tar\.01 is damaged"):
        state.import_state(bundle, tmp_path / "x", say=lambda _: None)
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks state\.tar\.01"):
        state.import_state(bundle, tmp_path / "x", say=lambda _: None)
    assert not list((tmp_path / "x").rglob("config.yaml"))  # nothing half-imported


def test_cli_export_show_import(reference: S.Study, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bundle"
    assert main(["state", "export", str(reference.out.parent), str(out), "--part-mib", "1"]) == 0
    assert "3 run(s) carried (3 finished)" in capsys.readouterr().out
    assert main(["state", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("finished at epoch") == 3 and "sends teacher.pt" in shown
    assert main(["state", "import", str(out), str(tmp_path / "copy")]) == 0
    assert "imported 3 run(s)" in capsys.readouterr().out
    copied = tmp_path / "copy" / "unit" / "study.md"
    assert copied.read_text() == (reference.out / "study.md").read_text()


def test_folder_import_only_reads_the_source_and_carries_last_pt_for_teacher_pt(
    reference: S.Study, tmp_path: Path
) -> None:
    """A teacher killed between its summary and teacher.pt, imported from a plain folder: the
    source (a fetched reply may be read-only) is only read; last.pt travels instead and the
    receiver's study writes the same teacher.pt from it."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(reference.out.parent, source)
    teacher_dir = next(p.parent.parent for p in source.rglob(state.TEACHER_WEIGHTS))
    want = S.teacher_weights(teacher_dir).read_bytes()
    (teacher_dir / state.TEACHER_WEIGHTS).unlink()
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    report = state.import_state(source, tmp_path / "dest", say=lambda _: None)
    assert len(report.taken) == 3 and not report.incomplete
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    local = tmp_path / "dest" / teacher_dir.relative_to(source)
    assert (local / state.LAST).is_file() and not (local / state.TEACHER_WEIGHTS).exists()
    assert S.teacher_weights(local).read_bytes() == want
