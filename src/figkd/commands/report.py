"""``figkd report``: mean ± std over seeds as Markdown and CSV, the paper's numbers beside ours.

    figkd report runs/cifar100/figkd/resnet32x4_resnet8x4
    figkd report runs/cifar100 --out results/        # every experiment below runs/cifar100

Each ``summary.json`` found below the given folders is one seed of one
experiment.  The table goes to stdout and to ``report.md`` / ``report.csv`` in
``--out`` (default: the first folder).  Spread is the sample standard deviation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from figkd.cli import Command
from figkd.commands.train import HelpFormatter
from figkd.engine.report import aggregate, find_summaries, to_csv, to_markdown, write_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="RUNS",
        help="run folders (runs/<experiment>, or any folder above several)",
    )
    parser.add_argument(
        "--out",
        help="folder for report.md and report.csv (default: the first RUNS, or its folder "
        "when it is a summary.json)",
    )
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="what to print")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")


def run(args: argparse.Namespace) -> int:
    summaries = find_summaries(args.paths)
    if not summaries:
        raise ValueError(f"no summary.json below {', '.join(args.paths)}: have the runs finished?")
    rows = aggregate(summaries)
    print(to_markdown(rows) if args.format == "md" else to_csv(rows), end="")
    if not args.no_write:
        first = Path(args.paths[0])  # a run folder, or one summary.json: then its folder
        out = Path(args.out) if args.out else first.parent if first.is_file() else first
        md, csv_path = write_report(rows, out)
        print(f"\nwrote {md} and {csv_path}")
    return 0


COMMAND = Command(
    name="report",
    help="aggregate runs over seeds into mean ± std tables (Markdown, CSV)",
    configure=configure,
    run=run,
    description=__doc__,
)
