"""tools/device/calls.py: the next session's calls carry everything, each within the cap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
KIB = 1 << 10


calls = load_script("tools/device/calls.py", "device_calls")


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_pieces_descend_only_into_folders_that_do_not_fit(tmp_path: Path) -> None:
    _file(tmp_path / "m" / "a" / "x", 30 * KIB)
    _file(tmp_path / "m" / "a" / "y", 30 * KIB)
    _file(tmp_path / "m" / "b" / "z", 10 * KIB)
    got = calls.pieces(tmp_path / "m", 50 * KIB)
    assert [(p.relative_to(tmp_path).as_posix(), s) for p, s in got] == [
        ("m/a/x", 30 * KIB),
        ("m/a/y", 30 * KIB),
        ("m/b", 10 * KIB),
    ]
    assert calls.pieces(tmp_path / "m", 70 * KIB) == [(tmp_path / "m", 70 * KIB)]
    with pytest.raises(SystemExit, match="m/a/x \\(0.0 MiB\\) is larger than one call"):
        calls.pieces(tmp_path / "m", 20 * KIB)


def test_pack_is_first_fit_largest_first_with_at_most_eight_paths() -> None:
    first = [(Path("w"), 5)]
    items = [(Path(f"s{i}"), 1) for i in range(9)] + [(Path("big"), 6), (Path("mid"), 4)]
    got = [[p.name for p, _ in call] for call in calls.pack(first, items, room=10)]
    # big (6) opens call 2; mid (4) joins call 1 (5 + 4 <= 10); the ones fill call 1 to 10,
    # then call 2 to 10, then the last two open call 3
    assert got == [["w", "mid", "s0"], ["big", "s1", "s2", "s3", "s4"], ["s5", "s6", "s7", "s8"]]
    crowded = calls.pack([], [(Path(f"t{i}"), 0) for i in range(10)], room=10)
    assert [len(call) for call in crowded] == [8, 2]


def test_printed_calls_carry_every_file_once_within_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, wheels, mirror = tmp_path / "tiny32", tmp_path / "whl", tmp_path / "state"
    _file(data / "p1" / "train-0.npz", 3 * MIB)
    _file(data / "p2" / "train-1.npz", 2 * MIB)
    _file(data / "pack.json", 100)
    _file(wheels / "pywavelets.whl", MIB)
    for seed in range(3):
        _file(mirror / "short" / "p" / "kd" / f"seed{seed}" / "checkpoints" / "last.pt", 2 * MIB)
    _file(mirror / "short" / "teachers" / "t" / "seed0" / "checkpoints" / "teacher.pt", 3 * MIB)
    repo = calls.repo_bytes(REPO)
    cap = repo + 6 * MIB  # room for 6 MiB of carried files a call
    code = calls.main(
        [
            "--data",
            str(data),
            "--wheels",
            str(wheels),
            "--state",
            str(mirror),
            "--call-mib",
            str(cap / MIB),
        ]
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " run(carry=" in line]
    carried = []
    for number, line in enumerate(lines, 1):
        paths = [(REPO / p).resolve() for p in re.findall(r'"([^"]+)"', line.split("command=")[0])]
        size = sum(calls.size_of(p) for p in paths)
        assert size <= 6 * MIB and len(paths) <= 8, line
        want = "BUDGET=<B> bash tools/device/detach.sh" if number == len(lines) else 'command="true"'
        assert want in line
        carried += paths
    assert carried[:3] == [
        wheels.resolve(),
        (data / "p1").resolve(),
        (data / "pack.json").resolve(),
    ]
    files = sorted(
        f for p in carried for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()
    )
    everything = sorted(
        f.resolve() for root in (data, wheels, mirror) for f in root.rglob("*") if f.is_file()
    )
    assert files == everything  # each file once (a repeat would show twice)


def test_no_packed_data_says_to_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calls.main(["--data", str(tmp_path / "none")]) == 2
    assert "run `bash tools/device/prepare.sh` first" in capsys.readouterr().out
