"""``figkd study``: FiGKD against the baselines on real images, over seeds, in one command.

    figkd study --tier smoke                         # 2 CPU cores, minutes: proves the pipeline
    figkd study --tier cpu                           # 2 CPU cores, ~1 h: resnet20 -> resnet8, 100 img/class
    figkd study --tier short --parallel 4            # GPU: 60-epoch recipe, resnet32x4 -> resnet8x4
    figkd study --tier paper --parallel 6 --amp bf16 # GPU: the full 240-epoch recipe, two pairs
    figkd study --tier short --ablations all         # + every FiGKD ablation group (listed below)
    figkd study --tier short --report-only           # rebuild the table from the finished runs

Trains each pair's teacher once (reused while its config is unchanged; its SHA-256 is pinned
in every student config), then CE, KD, DKD, DIST, MLKD, KD + logit standardization and FiGKD
students over the seeds, and writes ``<out>/<tier>/study.md``: mean ± sample std of the test
top-1 at the last epoch and at the best validation epoch, with the time per run, the exact
command, machine, date and versions.  Run it again to resume: finished runs are skipped,
killed ones continue from their last checkpoint; a finished student whose pinned teacher
file differs from this folder's fails, or with ``--replace-stale`` is set aside and trained
again (``figkd state records`` keeps finished runs as committable text, ``figkd state import``
brings them into a new folder, and ``--deterministic-teacher`` lets that folder retrain the
same teacher file on the same kind of processor).  ``key=value`` overrides apply to every run
(e.g. ``train.channels_last=true``).  Data: ``--data-root`` (a Tiny-ImageNet folder or its
``.tar``), else ``$FIGKD_DATA``/``./data``, else the 100-class subset in ``./.cache`` or
``../shared/data``; or ``--dataset uint8-shards --data-root <folder>``, the same images packed
at 32x32 by ``figkd pack tiny-imagenet --size 32`` (the same pixels, no JPEG tree needed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from figkd.analysis import study as S
from figkd.cli import Command
from figkd.commands.train import HelpFormatter, seed_value


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    args.dataset = S.study_dataset(args.dataset)  # canonical name, also in the recorded command
    tier = S.tier_with(
        S.TIERS[args.tier],
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        dataset=args.dataset,
    )
    if tier.gpu and not args.report_only and not args.plan:
        import torch

        if not torch.cuda.is_available() and args.device in ("auto", "cuda"):
            print(
                f"figkd study: warning: the {tier.name} tier is sized for a GPU and none is "
                "available; it will run on the CPU",
                file=sys.stderr,
                flush=True,
            )
    methods = S.main_methods(tier.epochs)
    if args.methods:
        known = {m.name: m for m in methods}
        unknown = [m for m in args.methods if m not in known]
        if unknown:
            hint = (
                "; KEY=VALUE overrides go before --methods, which reads every word after it"
                if any("=" in m for m in unknown)
                else ""
            )
            raise ValueError(
                f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}{hint}"
            )
        methods = [known[m] for m in args.methods]
    if args.ablations:
        methods += S.ablation_methods(args.ablations)
    first = first_methods(args.first or [], methods)
    out = Path(args.out)
    if tier.dataset == "tiny-imagenet":
        source = S.locate_tiny_imagenet(args.data_root, Path(args.cache_dir))
        data_root = S.make_subset(
            source, out / "data", tier.train_per_class, tier.test_per_class, build=not args.plan
        ).resolve()
    else:  # e.g. uint8-shards packed by `figkd pack`: per-class subsets are reader options
        data_root = S.locate_dataset(tier, args.data_root)
    study = S.plan_study(
        tier,
        out,
        data_root,
        methods=methods,
        seeds=args.seeds,
        device=args.device,
        amp=args.amp,
        parallel=args.parallel,
        threads=args.threads,
        overrides=args.items or [],
        first=first,
        replace_stale=args.replace_stale,
        deterministic_teacher=args.deterministic_teacher,
        write=not args.plan,  # a plan writes nothing under --out
    )
    command = canonical_command(args)
    if args.plan:
        from figkd.models.checkpoint import file_sha256

        teachers = list(study.teachers.values())
        shas = {}
        for job in teachers:
            ckpt = study.teacher_checkpoint(job.pair)
            shas[job.pair.name] = file_sha256(ckpt) if ckpt.is_file() else S.PENDING_TEACHER
        print(S.describe_plan(study, teachers + S.student_jobs(study, shas, write=False)))
        return 0
    manifest = None
    if not args.report_only:
        print(
            f"figkd study: {tier.name} tier, {len(tier.pairs)} pair(s), {len(methods)} "
            f"method(s) x {len(study.seeds)} seed(s), {study.parallel} at a time; runs in "
            f"{study.out}/",
            flush=True,
        )
        manifest = S.run_study(study, say=lambda text: print(text, flush=True), gpus=args.gpus)
    wall = time.perf_counter() - start
    path = S.write_study_report(study, manifest, command, None if args.report_only else wall)
    print()
    print(path.read_text())
    print(f"wrote {path}, {study.out / 'report.md'} and {study.out / 'report.csv'}")
    failed = [r for r in (manifest or {}).get("runs", []) if r["status"] == "failed"]
    if failed:
        print(f"figkd study: {len(failed)} run(s) failed: see study.json", file=sys.stderr)
        return 1
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument(
        "items", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every run"
    )
    parser.add_argument("--tier", choices=sorted(S.TIERS), default="smoke", help="study size")
    parser.add_argument("--out", default="runs/study", help="runs go to <out>/<tier>/")
    parser.add_argument(
        "--dataset",
        help="read the data with this reader instead of tiny-imagenet, e.g. uint8-shards "
        "(a `figkd pack` of Tiny-ImageNet at 32x32 in --data-root)",
    )
    parser.add_argument(
        "--data-root", help="Tiny-ImageNet folder, its parent, or its .tar; or the --dataset root"
    )
    parser.add_argument(
        "--cache-dir", default=".cache", help="where a --data-root .tar is unpacked once"
    )
    parser.add_argument("--seeds", type=seed_value, nargs="+", help="student seeds (tier: 0 1 2)")
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="a subset of ce kd dkd dist mlkd kd_ls figkd (default: all)",
    )
    parser.add_argument(
        "--first",
        nargs="+",
        metavar="METHOD",
        help="train these methods' distilled runs first; the others join once these have all "
        "ended (whole rows if the study is cut short); methods not in this study are skipped",
    )
    parser.add_argument(
        "--replace-stale",
        action="store_true",
        help="a finished student distilled from another teacher file (e.g. a record carried "
        "from a checkout whose teacher was retrained differently) is moved to <out>/<tier>/"
        ".stale/ and trained again; default: it fails and the others go on",
    )
    parser.add_argument(
        "--deterministic-teacher",
        action="store_true",
        help="train the teachers under deterministic algorithms (warn-only), so that another "
        "checkout on the same kind of processor retrains the same teacher.pt and carried "
        "student records stay valid",
    )
    parser.add_argument(
        "--ablations",
        nargs="+",
        metavar="GROUP",
        help=f"FiGKD ablations to add: {' '.join(S.ABLATIONS)} or all, or single rows as "
        "GROUP=VALUE (e.g. beta=0.5)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        help="runs at a time, each a subprocess (tier default: "
        + ", ".join(f"{tier.name} {tier.parallel}" for tier in S.TIERS.values())
        + ")",
    )
    parser.add_argument(
        "--gpus", nargs="+", metavar="ID", help="spread parallel runs over these CUDA devices"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast")
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: cores/parallel)")
    group = parser.add_argument_group("change the tier (the table says what ran)")
    group.add_argument("--epochs", type=int, help="student epochs (milestones scale with it)")
    group.add_argument("--teacher-epochs", type=int, help="teacher epochs")
    group.add_argument("--train-per-class", type=int, help="training images per class")
    group.add_argument("--test-per-class", type=int, help="test images per class")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list the runs and their state; trains nothing and writes nothing under --out "
        "(a dataset .tar is still unpacked into --cache-dir, where the runs will look for it)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild study.md from finished runs"
    )


def first_methods(names: list[str], methods: list[S.Method]) -> list[str]:
    """``--first``: names of this study's methods; a name of no method at all is an error,
    one this study does not run (e.g. after ``--methods``) is skipped with a note."""
    known = {m.name for m in S.main_methods(1)} | {m.name for m in methods}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--first: unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(m.name for m in methods)}")
    chosen = {m.name for m in methods}
    skipped = [name for name in names if name not in chosen]
    if skipped:
        print(f"figkd study: --first {' '.join(skipped)}: not in this study's methods, skipped",
              flush=True)
    return [name for name in names if name in chosen]


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that repeats this study (options in a fixed order).

    ``KEY=VALUE`` overrides come first: after a list option such as ``--methods ce kd`` they
    would be read as more methods."""
    parts = ["figkd", "study", *(args.items or []), "--tier", args.tier]
    if getattr(args, "deterministic_teacher", False):  # changes the teacher: part of what ran
        parts.append("--deterministic-teacher")
    for option in (
        "out", "dataset", "data_root", "seeds", "methods", "first", "ablations", "parallel",
        "gpus",
        "device", "amp", "threads", "epochs", "teacher_epochs", "train_per_class", "test_per_class",
    ):
        value = getattr(args, option)
        if value is None or (option == "out" and value == "runs/study"):
            continue
        if option in ("device", "amp") and value in ("auto", "none"):
            continue
        values = value if isinstance(value, list) else [value]
        parts += [f"--{option.replace('_', '-')}", *map(str, values)]
    return " ".join(shlex.quote(p) for p in parts)


COMMAND = Command(
    name="study",
    help="FiGKD vs CE/KD/DKD/DIST/MLKD/KD+LS on Tiny-ImageNet over seeds (smoke/short/paper)",
    configure=configure,
    run=run,
    description=__doc__,
)
