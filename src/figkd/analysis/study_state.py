"""A study's progress as a size-capped bundle, for machines lent for minutes (``figkd state``).

A borrowed GPU machine starts bare and returns only a few files per call (tools/device: 64 MiB,
8 files of at most 16 MiB), so a study longer than one session continues only if what it
needs travels back and out again.  :func:`export_state` bundles, keeping the state the
receiver will hold within ``budget`` bytes (so that it can travel out again under the same cap):

1. every run's small files (``config.yaml``, ``metrics.jsonl``, ``summary.json``): the
   evidence, and how a study knows a run is finished;
2. each finished teacher's ``checkpoints/teacher.pt`` (students pin its SHA-256);
3. each killed run's ``checkpoints/last.pt`` (resumes bit for bit), teachers first, then the
   runs furthest along; then, if room is left, their ``best.pt``.

A run whose needed files do not fit is *dropped*: listed in the manifest, not sent, and the
receiver keeps whatever older state of it it has.  A file unchanged since the last
:func:`import_state` into the exporting folder is *kept*: named with its SHA-256 but not
re-sent, because the folder it was imported from still has it.

With ``bundle_mib`` the export is cut into several *independent* bundles
(``bundle-00/``, ``bundle-01/``... each with its own ``state.json``), runs in the order above
and each run whole in one bundle, so that a call that returns only one bundle (the device
returns 64 MiB a call) still brings back complete, importable runs, the most valuable first.

:func:`import_state` merges a bundle (or a plain study folder) into a study folder.  A run is
taken only when it is further along than the local copy (finished > killed at a later epoch
> killed earlier > failed without a checkpoint > absent); every file is checked against its
SHA-256 first, and a run is replaced in one rename, so an interrupted import leaves each run
either old or new.

:func:`export_records` writes the *records* of a study's finished and failed runs (their
small files only, never weights) into a plain folder that may be committed to git, so the
evidence outlives the checkout (or lent machine) that held the study.  ``figkd state import
RECORDS STUDY`` brings them back: finished students import as finished, failed ones as failed
(the table lists them; the study tries them again); a teacher's record lacks its
weights, so it imports as "not carried" and the study trains that teacher again, and the
students stay valid only while the retrained ``teacher.pt`` has the SHA-256 their summary pins
(otherwise the study marks them stale and retrains them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from figkd.analysis import study
from figkd.engine.run_dir import read_failure
from figkd.models.checkpoint import file_sha256

FORMAT = 1
#: the manifest of a bundle; its parts are slices of one uncompressed tar stream
MANIFEST = "state.json"
PART_NAME = "state.tar.{:02d}"
#: written into a study folder by an import: ``{path: sha256}`` of every file it placed
IMPORTED = ".figkd-state-imported.json"
#: a study's tables, next to its runs (``<out>/<tier>/``): carried for reading, never merged
TABLE_FILES = ("study.md", "study.json", "report.md", "report.csv")
#: per-run folders that are never carried (TensorBoard restarts its files on resume)
SKIPPED = ("tensorboard",)
CHECKPOINTS = "checkpoints"
TEACHER_WEIGHTS = f"{CHECKPOINTS}/{study.TEACHER_WEIGHTS}"
LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"
MIB = 1 << 20

Printer = Callable[[str], None]


@dataclass
class RunState:
    """One run folder as carried: where it is, how far it got, and its files."""

    path: str  # relative to the study folder, POSIX separators
    status: str  # "finished", "partial" or "failed" (no checkpoint, its failure.json says why)
    epoch: int
    teacher: bool
    files: dict[str, str] = field(default_factory=dict)  # path in the run -> SHA-256
    sent: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the receiver has these (last import)
    complete: bool = True  # False: dropped, over the budget

    @property
    def rank(self) -> tuple[int, int]:
        return (RANKS[self.status], self.epoch)


#: which of two copies of a run an import keeps: the one further along (absent is 0)
RANKS = {"finished": 3, "partial": 2, "failed": 1}


# --------------------------------------------------------------------------- reading a folder


def find_run_dirs(root: Path) -> list[Path]:
    """Run folders below ``root``: folders holding a ``config.yaml`` (the engine's layout)."""
    return sorted(p.parent for p in root.rglob("config.yaml") if not _hidden(p, root))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def run_progress(run_dir: Path) -> tuple[str, int]:
    """("finished", epochs) from ``summary.json``, ("partial", epoch) from ``last.pt``,
    ("failed", the epoch it failed in) from a ``failure.json`` without either (a record: the
    study tries it again from scratch), or ("new", 0) when there is nothing to carry."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        if data.get("status") == "finished":
            return "finished", int(data.get("epochs", 0))
    last = run_dir / LAST
    if last.is_file():
        from figkd.engine.checkpoint import load_weights_only

        return "partial", int(load_weights_only(last).get("epoch", 0))
    failure = read_failure(run_dir)
    if failure is not None:
        return "failed", int(failure.get("epoch") or 0)
    return "new", 0


def _is_teacher(run_dir: Path, root: Path) -> bool:
    return (run_dir / TEACHER_WEIGHTS).is_file() or "teachers" in run_dir.relative_to(root).parts


def _small_files(run_dir: Path) -> list[str]:
    names = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or rel.parts[0] in (CHECKPOINTS, *SKIPPED):
            continue
        if any(part.startswith(".") for part in rel.parts):  # temporaries of atomic writes
            continue
        names.append(rel.as_posix())
    return names


def describe_run(run_dir: Path, root: Path, *, derive_weights: bool = True) -> RunState | None:
    """The run as it would be carried (``None`` for a run with nothing to resume).

    A teacher killed between its summary and ``teacher.pt`` gets its ``teacher.pt`` written
    here, unless ``derive_weights`` is False: a folder being imported *from* is only read.
    """
    status, epoch = run_progress(run_dir)
    if status == "new":
        return None
    teacher = _is_teacher(run_dir, root)
    if derive_weights and status == "finished" and teacher:
        study.teacher_weights(run_dir)  # no-op when teacher.pt exists
    return RunState(run_dir.relative_to(root).as_posix(), status, epoch, teacher)


def required_heavy(run: RunState) -> list[str]:
    if run.status == "partial":
        return [LAST]
    return [TEACHER_WEIGHTS] if run.teacher and run.status == "finished" else []


def optional_heavy(run: RunState) -> list[str]:
    return [BEST] if run.status == "partial" else []


# --------------------------------------------------------------------------- export


#: the most a tar stream adds after its last member: two zero blocks, then zeros up to a
#: whole record (``TarFile.close`` pads to ``RECORDSIZE``, 20 blocks), so a budget checked
#: against 1024 end bytes alone could be overshot by up to 9.5 KiB
TAR_END = 2 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE - tarfile.BLOCKSIZE


def _blocks(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _tar_cost(size: int, name: str = "") -> int:
    """Bytes a file takes in a PAX tar stream: a 512-byte header and 512-byte blocks, plus
    an extended header when ``name`` does not fit the 100-byte ASCII name field."""
    cost = tarfile.BLOCKSIZE + _blocks(size)
    encoded = name.encode("utf-8")
    if len(encoded) > tarfile.LENGTH_NAME or not name.isascii():
        cost += tarfile.BLOCKSIZE + _blocks(len(encoded) + 32)  # "NNN path=<name>\n"
    return cost


def _priority(run: RunState) -> tuple[bool, bool, int, str]:
    # finished runs first (cheap and final), then killed teachers (their students wait on
    # them), then killed students furthest along (the most work saved per byte)
    return (run.status != "finished", not run.teacher, -run.epoch, run.path)


def plan_export(root: Path, budget: int) -> tuple[list[RunState], list[str], dict[str, int]]:
    """(runs with ``sent``/``kept``/``complete`` filled, table files, bytes of each sent file).

    The budget bounds the *whole* state the receiver holds afterwards, kept files included,
    so that the receiver's copy can travel out again under the same limit: the runs imported
    earlier count as they were (the receiver still holds them), and carrying a run's newer
    state costs the difference.  Finished runs usually free room (no checkpoints).
    """
    imported = _read_imported(root)
    runs = [r for d in find_run_dirs(root) if (r := describe_run(d, root)) is not None]
    runs.sort(key=_priority)
    tables = sorted(
        p.relative_to(root).as_posix()
        for name in TABLE_FILES
        for p in [root / name, *root.glob(f"*/{name}")]
        if p.is_file()
    )
    sizes: dict[str, int] = {rel: (root / rel).stat().st_size for rel in tables}
    used = TAR_END + sum(_tar_cost(n, rel) for rel, n in sizes.items())  # the end, the tables
    used += sum(_tar_cost(entry["bytes"], rel) for rel, entry in imported.items())

    def held(run: RunState) -> int:  # what the receiver holds of this run now
        prefix = run.path + "/"
        return sum(_tar_cost(e["bytes"], k) for k, e in imported.items() if k.startswith(prefix))

    def cost(run: RunState, names: list[str]) -> int:
        for name in names:
            run.files.setdefault(name, file_sha256(root / run.path / name))
        return sum(_tar_cost((root / run.path / n).stat().st_size, f"{run.path}/{n}")
                   for n in names)

    def take(run: RunState, names: list[str]) -> None:
        for name in names:
            key = f"{run.path}/{name}"
            if imported.get(key, {}).get("sha256") == run.files[name]:
                run.kept.append(name)
            else:
                run.sent.append(name)
                sizes[key] = (root / key).stat().st_size

    for run in runs:
        needed = _small_files(root / run.path) + required_heavy(run)
        missing = [n for n in needed if not (root / run.path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{root / run.path} lacks {', '.join(missing)}")
        change = cost(run, needed) - held(run)
        if change > 0 and used + change > budget:  # what frees room is always taken
            run.complete = False
            run.files = {}
            continue
        used += change
        take(run, needed)
    for run in runs:  # then best.pt of the killed runs, while room is left
        if not run.complete:
            continue
        extra = [n for n in optional_heavy(run) if (root / run.path / n).is_file()]
        if extra and used + (price := cost(run, extra)) <= budget:
            used += price
            take(run, extra)
        else:
            for name in extra:
                run.files.pop(name, None)
    return runs, tables, sizes


class _PartWriter(io.RawIOBase):
    """A byte stream cut into files of at most ``part_bytes`` (``state.tar.00``, ``.01``...)."""

    def __init__(self, folder: Path, part_bytes: int) -> None:
        self.folder, self.part_bytes = folder, part_bytes
        self.parts: list[Path] = []
        self.handle: Any = None
        self.left = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self.left == 0:
                self._next()
            step = min(self.left, len(view) - done)
            self.handle.write(view[done : done + step])
            done += step
            self.left -= step
        return done

    def _next(self) -> None:
        if self.handle is not None:
            self.handle.close()
        path = self.folder / PART_NAME.format(len(self.parts))
        self.parts.append(path)
        self.handle = open(path, "wb")  # noqa: SIM115 - held across writes; close() ends it
        self.left = self.part_bytes

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        super().close()


def export_state(
    root: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    budget_mib: float = 58.0,
    part_mib: float = 15.0,
    bundle_mib: float | None = None,
    say: Printer = print,
) -> dict[str, Any]:
    """Write ``state.json`` and ``state.tar.NN`` parts of study folder ``root`` into ``dest``.

    With ``bundle_mib``, write independent bundles ``dest/bundle-NN/`` of at most that many
    MiB each instead (a run larger than one bundle is dropped); returns the first bundle's
    manifest, whose ``"bundles"`` entry names them all.
    """
    root, dest = Path(root), Path(dest)
    if not root.is_dir():
        raise FileNotFoundError(f"no study folder {root}")
    if part_mib <= 0 or budget_mib <= 0 or (bundle_mib is not None and bundle_mib <= 0):
        raise ValueError(
            f"budget_mib, part_mib and bundle_mib must be positive, got {budget_mib}, "
            f"{part_mib}, {bundle_mib}"
        )
    runs, tables, sizes = plan_export(root, int(budget_mib * MIB))
    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("state.tar.*"), dest / MANIFEST]:
        if old.is_file():
            old.unlink()
    for old_bundle in dest.glob("bundle-*"):
        if old_bundle.is_dir():
            shutil.rmtree(old_bundle)
    if bundle_mib is None:
        groups = [[r for r in runs if r.complete]]
        folders = [dest]
    else:
        groups = _split_bundles(runs, tables, sizes, int(bundle_mib * MIB))
        folders = [dest / f"bundle-{i:02d}" for i in range(len(groups))]
    manifests = []
    for index, (group, folder) in enumerate(zip(groups, folders)):
        listed = group + ([r for r in runs if not r.complete] if index == 0 else [])
        manifests.append(_write_bundle(root, folder, tables if index == 0 else [], listed,
                                       sizes, int(part_mib * MIB)))
    if bundle_mib is not None:
        manifests[0]["bundles"] = [f.name for f in folders]
        _write_json(folders[0] / MANIFEST, manifests[0])
    parts = [p for m in manifests for p in m["parts"]]
    total = sum(p["bytes"] for p in parts)
    dropped = [r.path for r in runs if not r.complete]
    where = dest if bundle_mib is None else f"{len(folders)} bundle(s) in {dest}"
    say(
        f"state: {len(runs) - len(dropped)} run(s) carried "
        f"({sum(r.status == 'finished' for r in runs if r.complete)} finished), "
        f"{len(dropped)} dropped over the {budget_mib:g} MiB budget; {len(parts)} "
        f"part(s), {total / MIB:.1f} MiB, in {where}"
    )
    for path in dropped:
        say(f"  dropped: {path} (its progress since the last import is lost)")
    return manifests[0]


def _sent_bytes(run: RunState, sizes: dict[str, int]) -> int:
    keys = [f"{run.path}/{name}" for name in run.sent]
    return sum(_tar_cost(sizes[key], key) for key in keys)


def _split_bundles(
    runs: list[RunState], tables: list[str], sizes: dict[str, int], limit: int
) -> list[list[RunState]]:
    """The carried runs cut, in priority order, into groups of at most ``limit`` tar bytes."""
    groups: list[list[RunState]] = [[]]
    used = TAR_END + sum(_tar_cost(sizes[t], t) for t in tables)
    for run in runs:
        if not run.complete:
            continue
        need = _sent_bytes(run, sizes)
        if TAR_END + need > limit:  # it could never travel in one call: dropped
            run.complete, run.files, run.sent, run.kept = False, {}, [], []
            continue
        if used + need > limit and groups[-1]:
            groups.append([])
            used = TAR_END
        groups[-1].append(run)
        used += need
    return groups


def _write_bundle(
    root: Path,
    folder: Path,
    tables: list[str],
    runs: list[RunState],
    sizes: dict[str, int],
    part_bytes: int,
) -> dict[str, Any]:
    """One bundle: ``tables`` and the sent files of ``runs`` as one tar stream in parts."""
    folder.mkdir(parents=True, exist_ok=True)
    members = list(tables) + [f"{r.path}/{n}" for r in runs if r.complete for n in r.sent]
    writer = _PartWriter(folder, max(512, part_bytes))
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel in members:
            info = tarfile.TarInfo(rel)
            info.size = sizes[rel]
            info.mtime = int((root / rel).stat().st_mtime)
            with open(root / rel, "rb") as handle:
                tar.addfile(info, handle)
    writer.close()
    manifest = {
        "format": FORMAT,
        "source": str(root.resolve()),
        "parts": [{"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                  for p in writer.parts],
        "tables": tables,
        "runs": [asdict(r) for r in runs],
    }
    _write_json(folder / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    taken: list[str] = field(default_factory=list)  # runs replaced by the incoming ones
    kept_local: list[str] = field(default_factory=list)  # local copy as far or further
    incomplete: list[str] = field(default_factory=list)  # dropped at export / files missing


def read_manifest(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / MANIFEST).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{folder / MANIFEST} has state format {data.get('format')!r}; this figkd reads "
            f"format {FORMAT}: import it with the figkd version that exported it"
        )
    return data


def _unpack_bundle(folder: Path, staging: Path) -> dict[str, Any]:
    """Check every part and unpack the tar stream into ``staging``; returns the manifest."""
    manifest = read_manifest(folder)
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.is_file():
            raise FileNotFoundError(
                f"bundle {folder} lacks {part['name']}: fetch every state.tar.NN its "
                f"{MANIFEST} lists"
            )
        if path.stat().st_size != part["bytes"] or file_sha256(path) != part["sha256"]:
            raise ValueError(f"{path} is damaged (size or SHA-256 differs from {MANIFEST})")
    with (
        _JoinedParts([folder / p["name"] for p in manifest["parts"]]) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        for member in tar:
            target = (staging / member.name).resolve()
            if not member.isfile() or staging.resolve() not in target.parents:
                raise ValueError(f"bundle {folder} holds an unexpected entry {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
    return manifest


class _JoinedParts(io.RawIOBase):
    """The parts read back as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.handle: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self.handle is None:
                if not self.paths:
                    return 0
                self.handle = open(self.paths.pop(0), "rb")  # noqa: SIM115 - across reads
            count = self.handle.readinto(buffer)
            if count:
                return count
            self.handle.close()
            self.handle = None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        super().close()


def _folder_runs(source: Path) -> list[RunState]:
    """A plain study folder read as a bundle: every run, every file carried."""
    runs = []
    for run_dir in find_run_dirs(source):
        run = describe_run(run_dir, source, derive_weights=False)
        if run is None:
            continue
        required = required_heavy(run)
        if required == [TEACHER_WEIGHTS] and not (run_dir / TEACHER_WEIGHTS).is_file():
            required = [LAST]  # the receiver's study writes teacher.pt from it
        names = _small_files(run_dir) + [
            n for n in (*required, *optional_heavy(run)) if (run_dir / n).is_file()
        ]
        run.files = {n: file_sha256(run_dir / n) for n in names}
        run.sent = names
        run.complete = all((run_dir / n).is_file() for n in required)
        runs.append(run)
    return runs


def _local_rank(run_dir: Path) -> tuple[int, int]:
    if not run_dir.is_dir():
        return (0, 0)
    status, epoch = run_progress(run_dir)
    return RANKS.get(status, 0), epoch


def _check_source(source: Path, action: str) -> None:
    """Refuse a missing folder, and one that is neither a bundle nor a folder of runs."""
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} does not exist: give a bundle folder (state.json + parts, what `figkd "
            f"state export` wrote) or a study's --out folder to `figkd state {action}`"
        )
    if not (source / MANIFEST).is_file() and not find_run_dirs(source):
        raise ValueError(
            f"{source} holds no state.json and no runs (no */config.yaml below it): give a "
            f"bundle folder (what `figkd state export` wrote) or a study's --out folder to "
            f"`figkd state {action}`"
        )


def import_state(
    source: str | os.PathLike[str], root: str | os.PathLike[str], say: Printer = print
) -> ImportReport:
    """Merge a bundle folder (``state.json`` + parts) or a study folder into study ``root``."""
    source, root = Path(source), Path(root)
    _check_source(source, "import")
    root.mkdir(parents=True, exist_ok=True)
    report = ImportReport()
    imported = _read_imported(root)
    with tempfile.TemporaryDirectory(dir=root, prefix=".state-incoming-") as tmp:
        staging = Path(tmp)
        if (source / MANIFEST).is_file():
            manifest = _unpack_bundle(source, staging)
            runs = [RunState(**r) for r in manifest["runs"]]
            incoming, tables = staging, manifest["tables"]
        else:
            runs, incoming, tables = _folder_runs(source), source, []
        for rel in tables:
            _copy_atomic(incoming / rel, root / rel)
        for run in runs:
            local = root / run.path
            if not run.complete:
                report.incomplete.append(run.path)
                continue
            if _local_rank(local) >= run.rank:
                report.kept_local.append(run.path)
                continue
            problem = _check_files(run, incoming, local)
            if problem:
                say(f"  not imported: {run.path}: {problem}")
                report.incomplete.append(run.path)
                continue
            _replace_run(run, incoming, local, staging)
            imported = {k: v for k, v in imported.items() if not k.startswith(run.path + "/")}
            imported.update({
                f"{run.path}/{n}": {"sha256": digest, "bytes": (local / n).stat().st_size}
                for n, digest in run.files.items()
            })
            report.taken.append(run.path)
    _write_json(root / IMPORTED, imported)
    say(
        f"state: imported {len(report.taken)} run(s) into {root}; {len(report.kept_local)} "
        f"local run(s) as far or further kept; {len(report.incomplete)} not carried"
    )
    return report


def _check_files(run: RunState, incoming: Path, local: Path) -> str | None:
    for name, digest in run.files.items():
        where = incoming / run.path / name if name in run.sent else local / name
        if not where.is_file():
            return f"{name} is missing ({'not in the bundle' if name in run.sent else 'kept'})"
        if file_sha256(where) != digest:
            return f"{name} differs from its SHA-256 in the manifest"
    return None


def _replace_run(run: RunState, incoming: Path, local: Path, staging: Path) -> None:
    """Build the new run folder beside the old one, then swap them with renames."""
    fresh = staging / "runs" / run.path
    fresh.mkdir(parents=True)
    for name in run.files:
        target = fresh / name
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = incoming / run.path / name if name in run.sent else local / name
        shutil.copy2(origin, target)
    local.parent.mkdir(parents=True, exist_ok=True)
    old = staging / "old" / run.path
    if local.exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, old)
    os.replace(fresh, local)


def _copy_atomic(origin: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(origin, tmp)
    os.replace(tmp, target)


def _read_imported(root: Path) -> dict[str, dict[str, Any]]:
    path = root / IMPORTED
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- records


def export_records(
    root: str | os.PathLike[str], dest: str | os.PathLike[str], say: Printer = print
) -> list[str]:
    """Copy the small files of every finished or failed run of study ``root`` into
    ``dest/<run path>/`` (a failed run's ``failure.json`` is the evidence of why a seed is
    missing from a table; its checkpoints never go).

    Records accumulate: runs in ``dest`` that ``root`` lacks are kept.  A record already
    byte-identical is left alone (a commit then shows no change); one that differs (the run
    was trained again) is rebuilt beside it and swapped in by renames, so an interrupted
    call leaves each record either old or new.  Returns the run paths written.
    """
    root, dest = Path(root), Path(dest)
    _check_study(root, "records")
    if dest.resolve() == root.resolve():
        raise ValueError(f"records of {root} cannot be written into the study folder itself")
    inside = dest.resolve()
    changed: list[tuple[str, Path, list[str]]] = []
    unchanged = unfinished = 0
    for run_dir in find_run_dirs(root):
        if inside in run_dir.resolve().parents:  # records kept below the study: not runs
            continue
        finished = run_progress(run_dir)[0] == "finished"
        if not finished and read_failure(run_dir) is None:
            unfinished += 1
            continue
        rel = run_dir.relative_to(root).as_posix()
        names = _small_files(run_dir)
        if _same_record(run_dir, dest / rel, names):
            unchanged += 1
        else:
            changed.append((rel, run_dir, names))
    dest.mkdir(parents=True, exist_ok=True)
    if changed:
        with tempfile.TemporaryDirectory(dir=dest, prefix=".records-") as tmp:
            for index, (rel, run_dir, names) in enumerate(changed):
                _swap_record(run_dir, names, dest / rel, Path(tmp) / str(index))
    say(
        f"records: {len(changed)} finished or failed run(s) written to {dest}, {unchanged} "
        f"unchanged, {unfinished} unfinished run(s) left out"
    )
    return [rel for rel, _, _ in changed]


def _check_study(root: Path, action: str) -> None:
    """Refuse a missing folder, and one without runs: only a study's folder has records."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} does not exist: give a study's --out folder (run folders with a "
            f"config.yaml below it) to `figkd state {action}`"
        )
    if not find_run_dirs(root):
        raise ValueError(
            f"{root} holds no runs (no */config.yaml below it): give a study's --out folder "
            f"to `figkd state {action}`"
        )


def _same_record(run_dir: Path, record: Path, names: list[str]) -> bool:
    """Whether ``record`` holds exactly ``names``, each byte-identical to the run's file."""
    if not record.is_dir():
        return False
    held = sorted(p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file())
    return held == sorted(names) and all(
        (run_dir / n).read_bytes() == (record / n).read_bytes() for n in names
    )


def _swap_record(run_dir: Path, names: list[str], record: Path, scratch: Path) -> None:
    """Build the record in ``scratch`` (inside ``dest``: same file system), then rename it in.

    The old record is moved aside first; if the swap is interrupted it is moved back.
    """
    fresh, old = scratch / "new", scratch / "old"
    for name in names:
        (fresh / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / name, fresh / name)
    record.parent.mkdir(parents=True, exist_ok=True)
    try:
        if record.exists():
            os.replace(record, old)
        os.replace(fresh, record)
    except BaseException:
        if old.exists() and not record.exists():
            os.replace(old, record)
        raise


# --------------------------------------------------------------------------- showing


def describe(source: str | os.PathLike[str]) -> Iterator[str]:
    """Lines describing a bundle or a study folder: each run's state and carried bytes."""
    source = Path(source)
    _check_source(source, "show")
    if (source / MANIFEST).is_file():
        manifest = read_manifest(source)
        total = sum(p["bytes"] for p in manifest["parts"])
        yield (f"bundle {source}: {len(manifest['parts'])} part(s), {total / MIB:.1f} MiB, "
               f"exported from {manifest['source']}")
        runs = [RunState(**r) for r in manifest["runs"]]
    else:
        runs = _folder_runs(source)
        total = sum((source / r.path / n).stat().st_size for r in runs for n in r.sent)
        yield f"study folder {source}: {total / MIB:.1f} MiB in carried files"
    for run in sorted(runs, key=lambda r: r.path):
        state = f"{run.status} at epoch {run.epoch}" if run.complete else "dropped"
        heavy = [n.split("/")[-1] for n in run.sent if n.startswith(CHECKPOINTS)]
        kept = [n.split("/")[-1] for n in run.kept]
        extra = (f"; sends {', '.join(heavy)}" if heavy else "") + (
            f"; keeps {', '.join(kept)}" if kept else ""
        )
        yield f"  {run.path}: {state}{extra}"
