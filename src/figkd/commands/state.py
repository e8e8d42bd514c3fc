"""``figkd state``: carry a study's progress between machines that are lent for minutes.

    figkd state export .device/study $OUT --budget-mib 58   # on the lent machine, at the end
    figkd state import /work/.device/files/... .device/state # here: merge what came back
    figkd state import .device/state .device/study          # there, next time: continue
    figkd state show .device/state                           # what a folder or bundle holds
    figkd state records .device/study docs/results/short_tier_runs  # finished runs' text

``export`` writes ``state.json`` and ``state.tar.NN`` parts of at most ``--part-mib`` (so
each fits a file limit): every run's config, metrics and summary, finished teachers'
``teacher.pt``, and killed runs' ``last.pt`` (teachers first, then the runs furthest along),
then their ``best.pt``, while the state the receiver will hold stays within ``--budget-mib``
(so it can travel out again).  Runs that do not fit are listed as dropped; files unchanged
since the last import count towards the budget but are named, not re-sent.  With
``--bundle-mib`` the state is cut into independent bundles ``DEST/bundle-NN`` (each run whole
in one, the most valuable first), so a device that returns one bundle per call can return a
state larger than one call, and a session that ends early still brings back whole runs.

``import`` takes a bundle or a plain study folder and keeps, run by run, whichever copy is
further along, after checking every file's SHA-256.  Then ``figkd study`` with the same
``--out`` resumes from there.

``records`` copies the config, metrics and summary of every finished run (never weights) into
a folder that can be committed, leaving identical records alone and keeping records of runs
the study no longer holds; ``figkd state import RECORDS STUDY`` brings them back later
(teachers import as not carried and are trained again).
"""

from __future__ import annotations

import argparse

from figkd.cli import Command


def run(args: argparse.Namespace) -> int:
    from figkd.analysis import study_state

    if args.action == "export":
        study_state.export_state(
            args.study,
            args.dest,
            budget_mib=args.budget_mib,
            part_mib=args.part_mib,
            bundle_mib=args.bundle_mib,
        )
    elif args.action == "import":
        report = study_state.import_state(args.source, args.study)
        for path in report.taken:
            print(f"  took {path}")
    elif args.action == "records":
        for path in study_state.export_records(args.study, args.dest):
            print(f"  wrote {path}")
    else:
        for line in study_state.describe(args.folder):
            print(line)
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    from figkd.commands.train import HelpFormatter

    parser.formatter_class = HelpFormatter
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export", help="bundle a study folder's progress into DEST", formatter_class=HelpFormatter
    )
    export.add_argument("study", help="the study's --out folder (e.g. runs/study)")
    export.add_argument("dest", help="folder for state.json and state.tar.NN")
    export.add_argument("--budget-mib", type=float, default=58.0,
                        help="size of the state the receiver holds afterwards, MiB")
    export.add_argument("--part-mib", type=float, default=15.0, help="size of one part, MiB")
    export.add_argument(
        "--bundle-mib", type=float, default=None,
        help="cut the state into independent bundles DEST/bundle-NN of at most this many MiB "
        "(one per device call back), the most valuable runs first; default: one bundle in DEST",
    )
    merge = actions.add_parser(
        "import", help="merge a bundle or study folder into a study", formatter_class=HelpFormatter
    )
    merge.add_argument("source", help="a bundle folder (state.json + parts) or a study folder")
    merge.add_argument("study", help="the study's --out folder to merge into")
    records = actions.add_parser(
        "records", help="copy finished runs' small files (no weights) into DEST, for git",
        formatter_class=HelpFormatter,
    )
    records.add_argument("study", help="the study's --out folder (e.g. runs/study)")
    records.add_argument(
        "dest", help="records folder (e.g. docs/results/short_tier_runs); created if missing"
    )
    show = actions.add_parser(
        "show", help="list the runs of a bundle or a study folder", formatter_class=HelpFormatter
    )
    show.add_argument(
        "folder", help="a bundle folder (state.json + parts) or a study's --out folder"
    )


COMMAND = Command(
    name="state",
    help="export/import a study's progress as size-capped parts (for machines lent briefly)",
    configure=configure,
    run=run,
    description=__doc__,
)
