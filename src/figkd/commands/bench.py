"""``figkd bench``: how much the FiGKD loss costs next to the KD loss on this machine.

    figkd bench --quick                           # a minute at most: 64x100, 3 rounds
    figkd bench                                   # CPU, and the GPU too when present
    figkd bench --device cuda --sizes 256x1000 --output bench.md

What is measured: one forward + backward of each loss (its cross-entropy term included, input
validation off) on random logits of shape BATCH x CLASSES: KD (T=4), CE alone, and FiGKD with
the 2d and 1d transforms, haar and db2 wavelets, levels 1-3.  Each loss runs in blocks of
~20 ms; every round times each loss once, in a shuffled order.

How to read it: "ratio to KD" is the median over rounds of (loss time / KD time in the same
round), so noise that slows a whole round cancels.  1.00 means as fast as KD, 1.30 means 30%
slower; the "computation" column names the path FiGKD takes at that size (band matrix, fused
Haar or band path), which is where the ratio jumps.  The times are the loss alone, not a
training step (where the models' forward and backward come on top of it).  The report starts
with the command, date and machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from figkd.cli import Command

#: ``--quick``: one size, few rounds
QUICK_SIZES = ["64x100"]
QUICK_ROUNDS = 3


def size_value(text: str) -> tuple[int, int]:
    """``--sizes`` items through :func:`figkd.analysis.overhead.parse_size`, its message kept."""
    from figkd.analysis.overhead import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def rounds_value(text: str) -> int:
    """``--rounds``: a positive integer (no round, no ratio)."""
    try:
        rounds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid round count {text!r}: give an integer >= 1"
        ) from None
    if rounds < 1:
        raise argparse.ArgumentTypeError(
            f"must be >= 1 (each round times every loss once), got {rounds}"
        )
    return rounds


def run(args: argparse.Namespace) -> int:
    from figkd.analysis import overhead

    default_sizes = QUICK_SIZES if args.quick else [f"{b}x{c}" for b, c in overhead.DEFAULT_SIZES]
    sizes = args.sizes or [size_value(text) for text in default_sizes]
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else overhead.DEFAULT_ROUNDS)
    devices = overhead.resolve_devices(args.device)  # ValueError (cuda asked, none here) -> exit 2
    command = (f"figkd bench --sizes {' '.join(f'{b}x{c}' for b, c in sizes)} "
               f"--rounds {rounds} --device {args.device}")
    if args.output:
        command += f" --output {args.output}"

    def say(message: str) -> None:
        print(f"figkd bench: {message}", file=sys.stderr, flush=True)

    report = overhead.build_report(command, devices, sizes, rounds, say=say)
    print(report)
    if args.output:
        overhead.write_report(report, Path(args.output))
        say(f"wrote {args.output}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    from figkd.analysis.overhead import DEFAULT_ROUNDS
    from figkd.commands.train import HelpFormatter

    parser.formatter_class = HelpFormatter  # keeps the examples above on their own lines
    parser.add_argument("--sizes", nargs="+", type=size_value, metavar="BxC",
                        help="batch x classes to time (default: 64x100 128x200 256x1000; "
                             "--quick: 64x100)")
    parser.add_argument("--rounds", type=rounds_value, metavar="N",
                        help=f"interleaved timing rounds per size (default: {DEFAULT_ROUNDS}; "
                             f"--quick: {QUICK_ROUNDS})")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = the CPU, then CUDA too when present")
    parser.add_argument("--quick", action="store_true",
                        help=f"a one-minute look: {' '.join(QUICK_SIZES)} only, {QUICK_ROUNDS} "
                             "rounds (--sizes/--rounds still win)")
    parser.add_argument("--output", metavar="PATH", help="also write the report to this file")


COMMAND = Command(
    name="bench",
    help="time the FiGKD loss against the KD loss on this machine (forward + backward)",
    configure=configure,
    run=run,
    description=__doc__,
)
