"""Markdown table of how far each run of a device session got, from its ``metrics.jsonl``.

Unfinished runs have no ``summary.json``, so ``figkd report`` skips them; this reads the
per-epoch records that ``collect.sh`` unpacked into ``.device/results/<UTC time>/`` (or any
study folder) and prints, per run: epochs done, median epoch time and img/s, and the last
epoch's LR, validation and test top-1.

    python tools/device/progress.py .device/results/20261130T203135Z/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def rows(folder: Path) -> list[str]:
    lines = []
    for metrics in sorted(folder.rglob("metrics.jsonl")):
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if not records:
            continue
        last = records[-1]
        run = metrics.parent.relative_to(folder).as_posix()
        seconds = statistics.median(r["time_s"] for r in records)
        speed = statistics.median(r["img_per_s"] for r in records)
        lines.append(
            f"| {run} | {last['epoch']} | {seconds:.1f} | {speed:,.0f} | {last['lr']:g} | "
            f"{last['val']['top1']:.2f} | {last['test']['top1']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a results or study folder")
    args = parser.parse_args(argv)
    found = rows(args.folder)
    if not found:
        print(f"progress: no metrics.jsonl under {args.folder}")
        return 2
    print("| run | epochs done | median epoch (s) | median img/s | last LR | last val top-1 "
          "| last test top-1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
