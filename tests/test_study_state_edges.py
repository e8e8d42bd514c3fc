"""Edge cases of ``figkd state`` (``figkd.analysis.study_state``) on small hand-made folders.

The study tests check a real study end to end; these check the arithmetic and the file
format against outside references: tar sizes from ``tarfile``, parts checked with
``hashlib`` and re-joined by hand, budgets worked out from the files' sizes, and bundles
built here with ``tarfile`` and ``json`` rather than by ``export_state``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch

from figkd.analysis import study_state as state

MIB = 1 << 20


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A regular file's bytes (extractfile gives None for anything else)."""
    handle = tar.extractfile(member)
    assert handle is not None, f"{member.name} is not a regular file"
    return handle.read()


def _tar_bytes(size: int) -> int:
    """What one member of ``size`` bytes takes in a ustar/pax stream: header + padded data."""
    return 512 + 512 * math.ceil(size / 512)


def _make_run(root: Path, rel: str, *, status: str, epoch: int, last: bool = True,
              best: bool = False, teacher_pt: bool = False) -> Path:
    """A run folder in the engine's layout, with junk that must never travel."""
    run = root / rel
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny_cnn\n")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": epoch}) + "\n")
    if status == "finished":
        (run / "summary.json").write_text(json.dumps({"status": "finished", "epochs": epoch}))
    if last:
        torch.save({"epoch": epoch, "model": {"w": torch.full((200,), float(epoch))}},
                   run / "checkpoints" / "last.pt")
    if best:
        torch.save({"epoch": epoch, "model": {"w": torch.zeros(200)}},
                   run / "checkpoints" / "best.pt")
    if teacher_pt:
        (run / "checkpoints" / "teacher.pt").write_bytes(b"teacher weights " * 64)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out").write_bytes(b"x" * 5000)
    (run / ".summary.json.tmp").write_text("half written")
    return run


def _cost(run: Path, names: list[str]) -> int:
    return sum(_tar_bytes((run / n).stat().st_size) for n in names)


SMALL = ["config.yaml", "metrics.jsonl"]
FINISHED = [*SMALL, "summary.json"]
KILLED = [*SMALL, "checkpoints/last.pt"]


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, Path]:
    """A finished student, a killed teacher (epoch 1) and two killed students (5 and 2)."""
    root = tmp_path / "study"
    runs = {
        "ce": _make_run(root, "unit/p/ce/seed0", status="finished", epoch=3, last=False),
        "teacher": _make_run(root, "unit/teachers/t/seed0", status="partial", epoch=1),
        "kd": _make_run(root, "unit/p/kd/seed0", status="partial", epoch=5, best=True),
        "dkd": _make_run(root, "unit/p/dkd/seed0", status="partial", epoch=2, best=True),
    }
    sizes = {(runs[k] / "checkpoints/last.pt").stat().st_size for k in ("teacher", "kd", "dkd")}
    assert len(sizes) == 1  # equal checkpoints: only the priority decides who is dropped
    return {"root": root, **runs}


def test_tar_cost_is_what_tarfile_writes() -> None:
    for size, want in [(0, 512), (1, 1024), (511, 1024), (512, 1024), (513, 1536)]:
        assert state._tar_cost(size) == want == _tar_bytes(size)
    for size in (0, 1, 512, 513, 5000):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("unit/p/kd/seed0/checkpoints/last.pt")
            info.size = size
            tar.addfile(info, io.BytesIO(b"z" * size))
            assert tar.offset == state._tar_cost(size)


@pytest.mark.parametrize("name", ["x" * 100, "x" * 101, "unit/" + "p" * 300 + "/last.pt",
                                  "unit/p/kd/seed\u00e9/last.pt"])
def test_tar_cost_counts_the_extended_header_of_a_long_or_non_ascii_name(name: str) -> None:
    for size in (0, 700):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"z" * size))
            written = tar.offset
        plain = _tar_bytes(size)
        assert written == state._tar_cost(size, name)
        assert (written > plain) == (len(name.encode()) > 100 or not name.isascii())


def test_tar_end_bounds_the_record_padding_of_any_stream() -> None:
    """``TarFile.close`` pads to a whole 10240-byte record: the stream's length is within
    ``TAR_END`` of its members' costs, and reaches it for some member sizes."""
    extras: set[int] = set()
    for blocks in range(25):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for index in range(blocks):
                info = tarfile.TarInfo(f"m{index}")
                info.size = 0
                tar.addfile(info)
        extra = len(buffer.getvalue()) - blocks * state._tar_cost(0)
        assert 1024 <= extra <= state.TAR_END
        extras.add(extra)
    assert max(extras) == state.TAR_END and min(extras) == 1024


def test_budget_keeps_teachers_then_the_furthest_students_to_the_byte(
    study: dict[str, Path]
) -> None:
    """Finished runs first, then the killed teacher, then the student at epoch 5 before the
    one at epoch 2; a budget that holds exactly those (the tar end included) keeps them,
    one byte less also drops the epoch-5 student."""
    root = study["root"]
    budget = (state.TAR_END + _cost(study["ce"], FINISHED) + _cost(study["teacher"], KILLED)
              + _cost(study["kd"], KILLED))
    runs, tables, sizes = state.plan_export(root, budget)
    assert [r.path for r in runs] == ["unit/p/ce/seed0", "unit/teachers/t/seed0",
                                     "unit/p/kd/seed0", "unit/p/dkd/seed0"]
    assert [r.complete for r in runs] == [True, True, True, False]
    assert [(r.status, r.epoch, r.teacher) for r in runs] == [
        ("finished", 3, False), ("partial", 1, True), ("partial", 5, False), ("partial", 2, False)]
    assert runs[0].sent == FINISHED and runs[1].sent == KILLED and runs[2].sent == KILLED
    assert runs[3].sent == [] and runs[3].files == {}  # dropped: nothing named, nothing sent
    assert "checkpoints/best.pt" not in runs[2].files  # no room left for it
    assert runs[2].files["checkpoints/last.pt"] == hashlib.sha256(
        (study["kd"] / "checkpoints/last.pt").read_bytes()).hexdigest()
    assert tables == []
    assert sizes == {f"{r.path}/{n}": (root / r.path / n).stat().st_size
                     for r in runs[:3] for n in r.sent}

    runs, _, _ = state.plan_export(root, budget - 1)
    assert [r.complete for r in runs] == [True, True, False, False]


def test_best_pt_goes_to_the_furthest_run_while_it_fits(study: dict[str, Path]) -> None:
    """After every needed file, ``best.pt`` of complete runs in priority order, each only if
    it fits; a dropped run's ``best.pt`` is never considered."""
    root = study["root"]
    base = (state.TAR_END + _cost(study["ce"], FINISHED) + _cost(study["teacher"], KILLED)
            + _cost(study["kd"], KILLED))
    best = _cost(study["kd"], ["checkpoints/best.pt"])
    assert best < _cost(study["dkd"], KILLED)  # the dkd run cannot take best.pt's room
    runs, _, _ = state.plan_export(root, base + best)
    by_path = {r.path: r for r in runs}
    assert by_path["unit/p/kd/seed0"].sent == [*KILLED, "checkpoints/best.pt"]
    assert not by_path["unit/p/dkd/seed0"].complete
    assert by_path["unit/p/dkd/seed0"].files == {}
    runs, _, _ = state.plan_export(root, base + best - 1)
    assert "checkpoints/best.pt" not in {r.path: r for r in runs}["unit/p/kd/seed0"].files

    # room for both students and one best.pt: the epoch-5 one takes it, the other does not
    full = base + _cost(study["dkd"], KILLED) + best
    runs, _, _ = state.plan_export(root, full + best - 1)
    by_path = {r.path: r for r in runs}
    assert "checkpoints/best.pt" in by_path["unit/p/kd/seed0"].sent
    assert "checkpoints/best.pt" not in by_path["unit/p/dkd/seed0"].files
    assert by_path["unit/p/dkd/seed0"].complete


def test_parts_are_cut_to_size_and_rejoin_into_the_tar_the_manifest_describes(
    study: dict[str, Path], tmp_path: Path
) -> None:
    root = study["root"]
    for part_bytes, want_parts in ((1000, 1000), (100, 512)):
        dest = tmp_path / f"bundle{part_bytes}"
        manifest = state.export_state(root, dest, budget_mib=1.0, part_mib=part_bytes / MIB,
                                      say=lambda _: None)
        on_disk = json.loads((dest / "state.json").read_text())
        assert on_disk == json.loads(json.dumps(manifest)) and on_disk["format"] == 1
        parts = sorted(dest.glob("state.tar.*"))
        assert [p.name for p in parts] == [f"state.tar.{i:02d}" for i in range(len(parts))]
        assert on_disk["parts"] == [
            {"name": p.name, "bytes": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in parts]
        sizes = [p.stat().st_size for p in parts]
        assert sizes[:-1] == [want_parts] * (len(parts) - 1) and 0 < sizes[-1] <= want_parts
        joined = b"".join(p.read_bytes() for p in parts)
        assert len(joined) % 10240 == 0  # whole tar records: nothing lost at a cut
        with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
            members = {m.name: _read_member(tar, m) for m in tar.getmembers()}
        want = {f"{r['path']}/{n}" for r in on_disk["runs"] for n in r["sent"]}
        assert set(members) == want and len(want) == 3 + 3 * 3 + 2
        for name, content in members.items():
            assert content == (root / name).read_bytes(), name


@pytest.mark.parametrize(("budget", "part"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (1.0, -2.0)])
def test_export_refuses_a_non_positive_budget_or_part_size(
    study: dict[str, Path], tmp_path: Path, budget: float, part: float
) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        state.export_state(study["root"], tmp_path / "b", budget_mib=budget, part_mib=part,
                           say=lambda _: None)
    assert not (tmp_path / "b").exists()


def test_export_writes_a_finished_teachers_weights_but_not_a_killed_ones(tmp_path: Path) -> None:
    """A teacher killed between its summary and ``teacher.pt`` gets ``teacher.pt`` (its
    weights, from ``last.pt``) before export; a killed teacher is carried by ``last.pt``."""
    root = tmp_path / "study"
    done = _make_run(root, "unit/teachers/a/seed0", status="finished", epoch=4)
    killed = _make_run(root, "unit/teachers/b/seed0", status="partial", epoch=2)
    manifest = state.export_state(root, tmp_path / "bundle", say=lambda _: None)
    runs = {r["path"]: r for r in manifest["runs"]}
    assert runs["unit/teachers/a/seed0"]["sent"] == [*FINISHED, "checkpoints/teacher.pt"]
    assert runs["unit/teachers/b/seed0"]["sent"] == KILLED
    assert not (killed / "checkpoints" / "teacher.pt").exists()
    weights = torch.load(done / "checkpoints" / "teacher.pt", weights_only=True)
    assert weights["epoch"] == 4 and torch.equal(weights["model"]["w"], torch.full((200,), 4.0))


def test_run_progress_of_each_kind_of_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert state.run_progress(empty) == ("new", 0)
    failed = _make_run(tmp_path, "failed", status="partial", epoch=4)
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "epochs": 9}))
    assert state.run_progress(failed) == ("partial", 4)
    assert state.run_progress(_make_run(tmp_path, "done", status="finished", epoch=7,
                                        last=False)) == ("finished", 7)


def test_joined_parts_read_through_empty_parts_and_close_their_file(tmp_path: Path) -> None:
    paths = []
    for i, content in enumerate([b"abc", b"", b"defg"]):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(content)
    stream = state._JoinedParts(paths)
    data, buffer = b"", bytearray(3)
    for _ in range(3):  # bounded: a stream that never ends must fail, not hang
        count = stream.readinto(buffer)
        data += bytes(buffer[:count])
    assert stream.readable() and data == b"abcdefg" and stream.readinto(buffer) == 0
    stream.close()  # everything read: no file left open, closing is still fine
    partial = state._JoinedParts(paths)
    buffer = bytearray(2)
    assert partial.readinto(buffer) == 2 and bytes(buffer) == b"ab"
    handle = partial.handle
    partial.close()
    assert handle.closed and partial.closed


def test_part_writer_closes_its_last_part(tmp_path: Path) -> None:
    writer = state._PartWriter(tmp_path, 4)
    assert writer.writable() and writer.write(b"0123456789") == 10
    handle = writer.handle
    writer.close()
    assert handle.closed and writer.closed
    assert [p.read_bytes() for p in writer.parts] == [b"0123", b"4567", b"89"]


# --------------------------------------------------------------------------- import


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bundle(folder: Path, members: dict[str, bytes], runs: list[dict], *,
                  fmt: int = 1, links: tuple[str, ...] = ()) -> None:
    """A bundle made here with ``tarfile`` and ``json``, as the module docstring describes it:
    ``state.json`` naming one part that holds an uncompressed tar stream."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    folder.mkdir(parents=True)
    part = buffer.getvalue()
    (folder / "state.tar.00").write_bytes(part)
    manifest = {"format": fmt, "source": "elsewhere", "tables": [], "runs": runs,
                "parts": [{"name": "state.tar.00", "bytes": len(part), "sha256": _sha(part)}]}
    (folder / "state.json").write_text(json.dumps(manifest))


def _run_entry(path: str, files: dict[str, bytes], *, epoch: int = 3) -> dict:
    return {"path": path, "status": "partial", "epoch": epoch, "teacher": False,
            "files": {n: _sha(c) for n, c in files.items()}, "sent": list(files), "kept": [],
            "complete": True}


def test_a_hand_built_bundle_is_imported_byte_for_byte(tmp_path: Path) -> None:
    last = io.BytesIO()
    torch.save({"epoch": 3, "model": {}}, last)
    files = {"config.yaml": b"model: x\n", "checkpoints/last.pt": last.getvalue()}
    _write_bundle(tmp_path / "b", {f"unit/kd/seed0/{n}": c for n, c in files.items()},
                  [_run_entry("unit/kd/seed0", files)])
    root = tmp_path / "study"
    report = state.import_state(tmp_path / "b", root, say=lambda _: None)
    assert report.taken == ["unit/kd/seed0"] and not report.incomplete
    for name, content in files.items():
        assert (root / "unit/kd/seed0" / name).read_bytes() == content
    assert json.loads((root / ".figkd-state-imported.json").read_text()) == {
        f"unit/kd/seed0/{n}": {"sha256": _sha(c), "bytes": len(c)} for n, c in files.items()}
    assert sorted(p.name for p in root.iterdir()) == [".figkd-state-imported.json", "unit"]


@pytest.mark.parametrize("evil", ["../escaped.txt", "unit/../../escaped.txt", "ABSOLUTE"])
def test_a_bundle_entry_outside_the_study_is_refused(tmp_path: Path, evil: str) -> None:
    """A crafted tar cannot write beside or above the study folder."""
    if evil == "ABSOLUTE":
        evil = str(tmp_path / "abs" / "escaped.txt")
    files = {"config.yaml": b"x"}
    _write_bundle(tmp_path / "b", {"unit/r/config.yaml": b"x", evil: b"owned"},
                  [_run_entry("unit/r", files)])
    with pytest.raises(ValueError, match="unexpected entry"):
        state.import_state(tmp_path / "b", tmp_path / "study", say=lambda _: None)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "study" / "unit").exists()


def test_a_bundle_with_a_link_entry_is_refused(tmp_path: Path) -> None:
    _write_bundle(tmp_path / "b", {"unit/r/config.yaml": b"x"},
                  [_run_entry("unit/r", {"config.yaml": b"x"})], links=("unit/r/link",))
    with pytest.raises(ValueError, match="unexpected entry 'unit/r/link'"):
        state.import_state(tmp_path / "b", tmp_path / "study", say=lambda _: None)


def test_a_bundle_of_another_format_is_refused(tmp_path: Path) -> None:
    _write_bundle(tmp_path / "b", {}, [], fmt=2)
    with pytest.raises(ValueError, match="state format 2; this figkd reads format 1"):
        state.import_state(tmp_path / "b", tmp_path / "study", say=lambda _: None)


def test_import_refuses_a_missing_or_empty_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        state.import_state(tmp_path / "nothing", tmp_path / "study", say=lambda _: None)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no state.json and no runs"):
        state.import_state(tmp_path / "empty", tmp_path / "study", say=lambda _: None)
    with pytest.raises(ValueError, match="holds no state.json and no runs"):
        list(state.describe(tmp_path / "empty"))


def _last_pt(epoch: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "model": {"w": torch.zeros(3)}}, buffer)
    return buffer.getvalue()


def test_import_keeps_whichever_copy_is_further_along(tmp_path: Path) -> None:
    """finished > killed (at any epoch) > killed earlier; a tie keeps the local copy; a taken
    run replaces the local folder whole (its stale ``last.pt`` goes)."""
    root = tmp_path / "study"
    _make_run(root, "u/finished_here/seed0", status="finished", epoch=3, last=False)
    _make_run(root, "u/killed_here/seed0", status="partial", epoch=5)
    _make_run(root, "u/behind/seed0", status="partial", epoch=2)
    _make_run(root, "u/level/seed0", status="partial", epoch=3)
    killed5 = {"config.yaml": b"new\n", "checkpoints/last.pt": _last_pt(5)}
    killed3 = {"config.yaml": b"new\n", "checkpoints/last.pt": _last_pt(3)}
    done2 = {"config.yaml": b"new\n",
             "summary.json": json.dumps({"status": "finished", "epochs": 2}).encode()}
    incoming = {"u/finished_here/seed0": killed5, "u/killed_here/seed0": done2,
                "u/behind/seed0": killed3, "u/level/seed0": killed3}
    entries = [_run_entry(p, f, epoch=5 if f is killed5 else 3 if f is killed3 else 2)
               for p, f in incoming.items()]
    entries[1]["status"] = "finished"
    _write_bundle(tmp_path / "b", {f"{p}/{n}": c for p, f in incoming.items()
                                   for n, c in f.items()}, entries)
    before = (root / "u/finished_here/seed0/config.yaml").read_bytes()
    report = state.import_state(tmp_path / "b", root, say=lambda _: None)
    assert sorted(report.taken) == ["u/behind/seed0", "u/killed_here/seed0"]
    assert sorted(report.kept_local) == ["u/finished_here/seed0", "u/level/seed0"]
    assert (root / "u/finished_here/seed0/config.yaml").read_bytes() == before
    assert not (root / "u/finished_here/seed0/checkpoints/last.pt").exists()
    taken = root / "u/killed_here/seed0"
    assert sorted(p.relative_to(taken).as_posix() for p in taken.rglob("*")) == [
        "config.yaml", "summary.json"]
    assert state.run_progress(taken) == ("finished", 2)
    assert state.run_progress(root / "u/behind/seed0") == ("partial", 3)
    assert (root / "u/level/seed0/config.yaml").read_text() == "model: tiny_cnn\n"


def test_tables_count_toward_the_budget(tmp_path: Path) -> None:
    """A study's tables travel first and take their share of the budget."""
    root = tmp_path / "study"
    run = _make_run(root, "unit/p/ce/seed0", status="finished", epoch=1, last=False)
    (root / "unit" / "study.md").write_text("| method | acc |\n" * 100)
    (root / "report.csv").write_text("a,b\n")
    tables = ["report.csv", "unit/study.md"]
    budget = state.TAR_END + _cost(root, tables) + _cost(run, FINISHED)
    runs, got_tables, sizes = state.plan_export(root, budget)
    assert got_tables == tables and runs[0].complete
    assert sizes["unit/study.md"] == len("| method | acc |\n" * 100)
    runs, _, _ = state.plan_export(root, budget - 1)
    assert not runs[0].complete


def test_an_unchanged_run_is_kept_even_over_a_smaller_budget(tmp_path: Path) -> None:
    """Runs imported earlier and unchanged cost nothing more: they stay complete (named as
    kept) even when what the receiver already holds exceeds a budget lowered since."""
    root = tmp_path / "study"
    run = _make_run(root, "unit/p/ce/seed0", status="finished", epoch=1, last=False)
    (root / ".figkd-state-imported.json").write_text(json.dumps({
        f"unit/p/ce/seed0/{n}": {"sha256": _sha((run / n).read_bytes()),
                                 "bytes": (run / n).stat().st_size} for n in FINISHED}))
    runs, _, sizes = state.plan_export(root, 1024)  # less than the files already held
    assert runs[0].complete and runs[0].kept == FINISHED and runs[0].sent == []
    assert sizes == {}


def test_export_replaces_an_earlier_bundle_and_creates_nested_folders(
    study: dict[str, Path], tmp_path: Path
) -> None:
    """On the lent machine ``$OUT`` may already hold a bundle: its stale parts go, so the
    folder holds exactly what the new ``state.json`` lists; a nested new folder is made."""
    dest = tmp_path / "out"
    dest.mkdir()
    for name in ("state.tar.00", "state.tar.07", "state.json"):
        (dest / name).write_bytes(b"stale")
    (dest / "notes.txt").write_text("not ours")
    manifest = state.export_state(study["root"], dest, say=lambda _: None)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["notes.txt", "state.json", *(p["name"] for p in manifest["parts"])])
    assert json.loads((dest / "state.json").read_text())["parts"] == manifest["parts"]
    nested = tmp_path / "a" / "b" / "bundle"
    again = state.export_state(study["root"], nested, say=lambda _: None)
    assert [p["sha256"] for p in again["parts"]] == [
        _sha((nested / p["name"]).read_bytes()) for p in again["parts"]]


def test_an_absent_or_empty_local_run_is_always_replaced(tmp_path: Path) -> None:
    """Absent (or a folder with nothing to resume) ranks below every carried run, even one
    whose checkpoint names no epoch (epoch 0); the study folder may not exist yet."""
    files = {"config.yaml": b"new\n", "checkpoints/last.pt": _last_pt(0)}
    entries = [_run_entry(p, files, epoch=0) for p in ("u/absent/seed0", "u/empty/seed0")]
    _write_bundle(tmp_path / "b", {f"{e['path']}/{n}": c for e in entries
                                   for n, c in files.items()}, entries)
    root = tmp_path / "deep" / "er" / "study"
    (root / "u/empty/seed0").mkdir(parents=True)
    (root / "u/empty/seed0/config.yaml").write_text("old\n")
    root_parent = tmp_path / "fresh" / "study"
    for where in (root, root_parent):
        report = state.import_state(tmp_path / "b", where, say=lambda _: None)
        assert sorted(report.taken) == ["u/absent/seed0", "u/empty/seed0"]
        assert (where / "u/empty/seed0/config.yaml").read_bytes() == b"new\n"


def test_run_progress_falls_back_to_epoch_zero(tmp_path: Path) -> None:
    """A summary without ``epochs`` or a checkpoint without ``epoch`` reads as epoch 0."""
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert state.run_progress(done) == ("finished", 0)
    killed = tmp_path / "killed" / "checkpoints"
    killed.mkdir(parents=True)
    torch.save({"model": {}}, killed / "last.pt")
    assert state.run_progress(killed.parent) == ("partial", 0)


def test_import_replaces_sibling_seeds_and_nested_files_in_one_go(tmp_path: Path) -> None:
    """Two seeds of one method (sharing a parent folder) are both replaced by one import, and
    small files in nested folders of a run travel too."""
    root = tmp_path / "study"
    for seed in (0, 1):
        _make_run(root, f"u/p/kd/seed{seed}", status="partial", epoch=1)
    files = {"config.yaml": b"new\n", "plots/epoch2/curve.txt": b"0.5\n",
             "checkpoints/last.pt": _last_pt(2)}
    entries = [_run_entry(f"u/p/kd/seed{seed}", files, epoch=2) for seed in (0, 1)]
    _write_bundle(tmp_path / "b", {f"{e['path']}/{n}": c for e in entries
                                   for n, c in files.items()}, entries)
    report = state.import_state(tmp_path / "b", root, say=lambda _: None)
    assert sorted(report.taken) == ["u/p/kd/seed0", "u/p/kd/seed1"]
    for seed in (0, 1):
        run = root / f"u/p/kd/seed{seed}"
        assert {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*")
                if p.is_file()} == files


def test_finished_runs_with_more_epochs_win_and_killed_ones_further_along_stay(
    tmp_path: Path
) -> None:
    root = tmp_path / "study"
    _make_run(root, "u/short/seed0", status="finished", epoch=2, last=False)
    _make_run(root, "u/ahead/seed0", status="partial", epoch=5)
    done4 = {"config.yaml": b"new\n",
             "summary.json": json.dumps({"status": "finished", "epochs": 4}).encode()}
    killed3 = {"config.yaml": b"new\n", "checkpoints/last.pt": _last_pt(3)}
    entries = [_run_entry("u/short/seed0", done4, epoch=4),
               _run_entry("u/ahead/seed0", killed3, epoch=3)]
    entries[0]["status"] = "finished"
    _write_bundle(tmp_path / "b", {**{f"u/short/seed0/{n}": c for n, c in done4.items()},
                                   **{f"u/ahead/seed0/{n}": c for n, c in killed3.items()}},
                  entries)
    report = state.import_state(tmp_path / "b", root, say=lambda _: None)
    assert report.taken == ["u/short/seed0"] and report.kept_local == ["u/ahead/seed0"]
    assert state.run_progress(root / "u/short/seed0") == ("finished", 4)
    assert state.run_progress(root / "u/ahead/seed0") == ("partial", 5)


def test_show_names_each_runs_state_and_what_it_sends_or_keeps(
    study: dict[str, Path], tmp_path: Path
) -> None:
    """``figkd state show``: one line per run, sorted; dropped runs say so; heavy files sent
    and files kept (by their last name) are listed."""
    root, teacher = study["root"], study["teacher"]
    held = ["config.yaml", "checkpoints/last.pt"]
    (root / ".figkd-state-imported.json").write_text(json.dumps({
        f"unit/teachers/t/seed0/{n}": {"sha256": _sha((teacher / n).read_bytes()),
                                       "bytes": (teacher / n).stat().st_size} for n in held}))
    budget = (state.TAR_END + _cost(study["ce"], FINISHED) + _cost(teacher, KILLED)
              + _cost(study["kd"], KILLED))
    dest = tmp_path / "bundle"
    state.export_state(root, dest, budget_mib=budget / MIB, say=lambda _: None)
    parts = sorted(dest.glob("state.tar.*"))
    total = sum(p.stat().st_size for p in parts)
    assert list(state.describe(dest)) == [
        (f"bundle {dest}: {len(parts)} part(s), {total / MIB:.1f} MiB, exported from "
         f"{root.resolve()}"),
        "  unit/p/ce/seed0: finished at epoch 3",
        "  unit/p/dkd/seed0: dropped",
        "  unit/p/kd/seed0: partial at epoch 5; sends last.pt",
        "  unit/teachers/t/seed0: partial at epoch 1; keeps config.yaml, last.pt",
    ]
    carried = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()
                  and p.name not in ("events.out", ".summary.json.tmp",
                                     ".figkd-state-imported.json"))
    assert list(state.describe(root)) == [
        f"study folder {root}: {carried / MIB:.1f} MiB in carried files",
        "  unit/p/ce/seed0: finished at epoch 3",
        "  unit/p/dkd/seed0: partial at epoch 2; sends last.pt, best.pt",
        "  unit/p/kd/seed0: partial at epoch 5; sends last.pt, best.pt",
        "  unit/teachers/t/seed0: partial at epoch 1; sends last.pt",
    ]


# --------------------------------------------------------------------------- bundles


def _members(bundle: Path) -> dict[str, bytes]:
    """A bundle's tar stream, parts joined by hand, as ``{name: bytes}``."""
    joined = b"".join(p.read_bytes() for p in sorted(bundle.glob("state.tar.*")))
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        return {m.name: _read_member(tar, m) for m in tar.getmembers()}


def _three_bundle_limit(study: dict[str, Path]) -> int:
    """Bytes that hold CE + teacher, then KD alone, then DKD alone (checked here)."""
    ce = _cost(study["ce"], FINISHED)
    teacher = _cost(study["teacher"], KILLED)
    kd = _cost(study["kd"], [*KILLED, "checkpoints/best.pt"])
    dkd = _cost(study["dkd"], [*KILLED, "checkpoints/best.pt"])
    end = state.TAR_END
    limit = end + ce + teacher + 100  # the tar end + the first two runs, with 100 to spare
    assert kd > 100 and end + kd <= limit < end + kd + dkd  # hence one run per later bundle
    return limit


def test_bundles_hold_whole_runs_in_priority_order_within_their_size(
    study: dict[str, Path], tmp_path: Path
) -> None:
    root = study["root"]
    limit = _three_bundle_limit(study)
    first = state.export_state(root, tmp_path / "out", budget_mib=1.0, part_mib=1.0,
                               bundle_mib=limit / MIB, say=lambda _: None)
    assert first["bundles"] == ["bundle-00", "bundle-01", "bundle-02"]
    assert not (tmp_path / "out" / "state.json").exists()
    want = [["unit/p/ce/seed0", "unit/teachers/t/seed0"], ["unit/p/kd/seed0"], ["unit/p/dkd/seed0"]]
    for name, paths in zip(first["bundles"], want):
        bundle = tmp_path / "out" / name
        manifest = json.loads((bundle / "state.json").read_text())
        assert [r["path"] for r in manifest["runs"]] == paths
        tar_bytes = sum(p.stat().st_size for p in bundle.glob("state.tar.*"))
        assert tar_bytes <= limit  # the record padding included (TAR_END)
        members = _members(bundle)
        assert set(members) == {f"{r['path']}/{n}" for r in manifest["runs"] for n in r["sent"]}
        for member, content in members.items():
            assert content == (root / member).read_bytes(), member


def test_each_bundle_imports_on_its_own_and_together_they_equal_one_bundle(
    study: dict[str, Path], tmp_path: Path
) -> None:
    root = study["root"]
    state.export_state(root, tmp_path / "one", budget_mib=1.0, say=lambda _: None)
    state.export_state(root, tmp_path / "many", budget_mib=1.0,
                       bundle_mib=_three_bundle_limit(study) / MIB, say=lambda _: None)
    bundles = sorted((tmp_path / "many").glob("bundle-*"))
    assert len(bundles) == 3
    # a session that lapsed after the first call back: its runs still import, whole
    lapsed = state.import_state(bundles[0], tmp_path / "lapsed", say=lambda _: None)
    assert lapsed.taken and lapsed.taken == [
        r["path"] for r in json.loads((bundles[0] / "state.json").read_text())["runs"]]
    state.import_state(tmp_path / "one", tmp_path / "a", say=lambda _: None)
    for bundle in bundles:
        state.import_state(bundle, tmp_path / "b", say=lambda _: None)

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".")}

    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert len(files(tmp_path / "a")) == 3 + 3 + 4 + 4  # ce; teacher; kd and dkd with best.pt


def test_a_run_larger_than_one_bundle_is_dropped_and_named(
    study: dict[str, Path], tmp_path: Path
) -> None:
    lines: list[str] = []
    ce = _cost(study["ce"], FINISHED)
    state.export_state(study["root"], tmp_path / "out", budget_mib=1.0,
                       bundle_mib=(state.TAR_END + ce) / MIB, say=lines.append)
    manifest = json.loads((tmp_path / "out" / "bundle-00" / "state.json").read_text())
    assert [(r["path"], r["complete"]) for r in manifest["runs"]] == [
        ("unit/p/ce/seed0", True), ("unit/teachers/t/seed0", False),
        ("unit/p/kd/seed0", False), ("unit/p/dkd/seed0", False)]
    assert manifest["bundles"] == ["bundle-00"]
    assert "3 dropped" in lines[0] and "dropped: unit/teachers/t/seed0" in lines[1]


def test_export_refuses_a_non_positive_bundle_size(study: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bundle_mib must be positive, got 1.0, 15.0, 0.0"):
        state.export_state(study["root"], tmp_path / "b", budget_mib=1.0, bundle_mib=0.0)


def test_tables_travel_in_the_first_bundle_only_and_count_towards_its_size(
    study: dict[str, Path], tmp_path: Path
) -> None:
    root = study["root"]
    (root / "unit" / "study.md").write_text("| method | top-1 |\n" * 40)  # 760 bytes
    table = _tar_bytes(760)
    ce = _cost(study["ce"], FINISHED)
    teacher = _cost(study["teacher"], KILLED)
    # exactly the tar end blocks + the table + CE + the teacher: all four fit, to the byte
    exact = state.TAR_END + table + ce + teacher
    state.export_state(root, tmp_path / "exact", budget_mib=1.0, bundle_mib=exact / MIB,
                       say=lambda _: None)
    first = json.loads((tmp_path / "exact" / "bundle-00" / "state.json").read_text())
    assert first["tables"] == ["unit/study.md"]
    assert [r["path"] for r in first["runs"]] == ["unit/p/ce/seed0", "unit/teachers/t/seed0"]
    for later in sorted((tmp_path / "exact").glob("bundle-0[1-9]")):
        manifest = json.loads((later / "state.json").read_text())
        assert manifest["tables"] == [] and "unit/study.md" not in _members(later)
    assert _members(tmp_path / "exact" / "bundle-00")["unit/study.md"] == (
        root / "unit" / "study.md").read_bytes()
    # one byte less and the teacher moves to the next bundle: the table took its room
    state.export_state(root, tmp_path / "short", budget_mib=1.0,
                       bundle_mib=(exact - 1) / MIB, say=lambda _: None)
    first = json.loads((tmp_path / "short" / "bundle-00" / "state.json").read_text())
    assert [r["path"] for r in first["runs"]] == ["unit/p/ce/seed0"]


def test_a_second_export_replaces_the_first_ones_bundles(
    study: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "outbox"
    state.export_state(study["root"], dest, budget_mib=1.0,
                       bundle_mib=_three_bundle_limit(study) / MIB, say=lambda _: None)
    assert len(list(dest.glob("bundle-*"))) == 3
    (dest / "bundle-02" / "stray").write_text("left from the first export")
    state.export_state(study["root"], dest, budget_mib=1.0, bundle_mib=1.0, say=lambda _: None)
    assert sorted(p.name for p in dest.iterdir()) == ["bundle-00"]
