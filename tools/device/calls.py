"""Print the device calls of the next session: what each call carries, within 64 MiB a call.

The data parts (``.device/tiny32/pN``), the PyWavelets wheel and the mirror of the study's
progress (``.device/state``, kept by ``collect.sh``) are more than one call may carry, so they
travel over several calls while the machine stays warm.  The mirror is cut into the largest
folders that fit one call (a run folder at the finest), and the pieces are packed first fit,
largest first, at most 8 paths a call; the last call starts the study with ``detach.sh``
(``short_tier.sh`` in a process session of its own, followed by ``attach.sh`` calls).

    python tools/device/calls.py            # --call-mib 62 (the 64 MiB cap, with margin)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
MAX_PATHS = 8  # the device tool's carry limit


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def repo_bytes(root: Path) -> int:
    """What every call carries anyway: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    sizes = [
        (root / name.decode()).stat().st_size
        for name in listed
        if name and (root / name.decode()).is_file()
    ]
    return sum(-(-size // 4096) * 4096 for size in sizes)  # as du counts: whole 4 KiB blocks


def pieces(path: Path, room: int) -> list[tuple[Path, int]]:
    """``path`` itself if it fits ``room``, else its children's pieces (a file must fit)."""
    size = size_of(path)
    if size <= room:
        return [(path, size)]
    if path.is_file():
        raise SystemExit(
            f"calls: {path} ({size / MIB:.1f} MiB) is larger than one call carries "
            f"({room / MIB:.1f} MiB with the repo); it cannot travel"
        )
    return [piece for child in sorted(path.iterdir()) for piece in pieces(child, room)]


def pack(
    first: list[tuple[Path, int]], items: list[tuple[Path, int]], room: int
) -> list[list[tuple[Path, int]]]:
    """Calls (lists of paths): ``first`` together in call 1, the rest first fit, largest first."""
    calls = [list(first)]
    for item in sorted(items, key=lambda it: -it[1]):
        for call in calls:
            if len(call) < MAX_PATHS and sum(s for _, s in call) + item[1] <= room:
                call.append(item)
                break
        else:
            calls.append([item])
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".device/tiny32", help="the packed parts' folder")
    parser.add_argument("--wheels", default=".whl")
    parser.add_argument("--state", default=".device/state", help="collect.sh's mirror")
    parser.add_argument(
        "--call-mib",
        type=float,
        default=62.0,
        help="what one call may carry, repo included (the cap is 64)",
    )
    args = parser.parse_args(argv)
    data, wheels, mirror = (ROOT / args.data, ROOT / args.wheels, ROOT / args.state)
    room = int(args.call_mib * MIB) - repo_bytes(ROOT)
    parts = sorted(data.glob("p[0-9]*"), key=lambda p: int(p.name[1:]))
    if not parts or not (data / "pack.json").is_file():
        print(f"calls: no packed data in {data}: run `bash tools/device/prepare.sh` first")
        return 2
    first = [
        (wheels, size_of(wheels)),
        (parts[0], size_of(parts[0])),
        (data / "pack.json", size_of(data / "pack.json")),
    ]
    if sum(s for _, s in first) > room:
        print(
            f"calls: the wheels and {parts[0].name} exceed one call; repack with a smaller "
            "BUDGET_MIB (tools/device/prepare.sh)"
        )
        return 2
    items = [(p, size_of(p)) for p in parts[1:]]
    if mirror.is_dir():
        items += pieces(mirror, room)
    calls = pack(first, items, room)
    repo_mib = (args.call_mib * MIB - room) / MIB
    print(
        f"Device calls, back to back (each carries the repo, {repo_mib:.1f} MiB, plus what it "
        "names; the machine goes back 30 s after a call):"
    )
    for number, call in enumerate(calls, 1):
        carry = ", ".join(f'"{Path(os.path.relpath(p, ROOT)).as_posix()}"' for p, _ in call)
        mib = sum(s for _, s in call) / MIB
        if number < len(calls):
            print(
                f'  {number}. run(carry=[{carry}], timeout_s=120, command="true")   # {mib:.1f} MiB'
            )
        else:
            print(
                f"  {number}. run(carry=[{carry}], timeout_s=600, "
                'command="BUDGET=<B> bash tools/device/detach.sh")   '
                f"# {mib:.1f} MiB; B = lease.budget_left_s of call {number - 1}'s reply"
            )
    print(
        "  the study runs on in its own session (limit B - 170 s); while the reply says "
        '"still running": run(timeout_s=600, command="bash tools/device/attach.sh")'
    )
    print(
        '  then, while it says bundles are left: run(timeout_s=60, command="bash '
        'tools/device/fetch.sh"); then give_back'
    )
    print(
        "Here, after the last: bash tools/device/collect.sh <files_at of the call that ended the study> "
        "<files_at of each fetch call> ..."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
