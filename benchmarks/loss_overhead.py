"""Forward+backward time of the FiGKD loss relative to the KD loss, side by side.

Every configuration is timed in interleaved rounds (shuffled order each round)
so that machine noise hits all of them alike; the reported ratio is the median
over rounds of (config time / KD time) measured in the same round.

    python benchmarks/loss_overhead.py                      # CPU, and GPU if present
    python benchmarks/loss_overhead.py --output benchmarks/results/loss_overhead.md

Both losses include their cross-entropy term; per-call input validation is off
for all of them (the trainer checks the loss value itself).  The measurement lives
in figkd.analysis.overhead, shared with `figkd bench` (which also takes --sizes and --quick).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from figkd.analysis import overhead
from figkd.commands.bench import rounds_value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=rounds_value, default=overhead.DEFAULT_ROUNDS,
                        help="interleaved timing rounds per size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = CPU, then CUDA too when present")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        devices = overhead.resolve_devices(args.device)
    except ValueError as error:
        parser.error(str(error))

    command = " ".join(["python", "benchmarks/loss_overhead.py",
                        *(argv if argv is not None else sys.argv[1:])])
    report = overhead.build_report(command, devices, overhead.DEFAULT_SIZES, args.rounds,
                                   say=lambda message: print(message, file=sys.stderr, flush=True))
    print(report)
    if args.output:
        overhead.write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
