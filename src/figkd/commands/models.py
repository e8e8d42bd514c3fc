"""``figkd models``: list the zoo, or measure parameters and MACs per model."""

from __future__ import annotations

import argparse
import inspect
import sys

from figkd.cli import Command
from figkd.models import MODELS, aliases_of, complexity_table, list_models, measure

#: the setting of the paper's Table 15 (Tiny-ImageNet): 64x64 inputs, 200 classes
PAPER_SIZE = 64
PAPER_CLASSES = 200


def configure(parser: argparse.ArgumentParser) -> None:
    from figkd.commands.train import HelpFormatter

    parser.formatter_class = HelpFormatter
    parser.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help="shell-style filter on canonical names, e.g. 'resnet*'",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="build each model and print params (M) and MACs (M) as Markdown",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side for --flops (default: each model's native size)",
    )
    parser.add_argument("--num-classes", type=int, default=100, help="classifier width for --flops")
    parser.add_argument(
        "--compare-paper",
        action="store_true",
        help="with --flops: add the FiGKD paper's Table 15 figures (measured at 64x64, "
        "200 classes: pair with --input-size 64 --num-classes 200)",
    )


def _family(name: str) -> str:
    """The zoo module that defines ``name`` (one module per family)."""
    entry = MODELS.get(name)
    target = getattr(entry, "func", entry)  # unwrap functools.partial
    module = inspect.getmodule(target)
    return module.__name__.rsplit(".", 1)[-1] if module else "?"


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; try `figkd models` for the list")
    if not args.flops:
        given = [flag for flag, value in (("--input-size", args.input_size),
                                          ("--compare-paper", args.compare_paper)) if value]
        if given:
            raise ValueError(
                f"{' and '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to the "
                "params / MACs table: add --flops"
            )
    if args.flops:
        if args.input_size is not None and args.input_size < 1:
            raise ValueError(f"--input-size must be positive, got {args.input_size}")
        paper_setting = args.input_size == PAPER_SIZE and args.num_classes == PAPER_CLASSES
        if args.compare_paper and not paper_setting:
            measured = (f"{args.input_size}x{args.input_size}" if args.input_size
                        else "each model's native size")
            print(
                f"figkd models: warning: the paper's Table 15 figures are for {PAPER_SIZE}x"
                f"{PAPER_SIZE} inputs and {PAPER_CLASSES} classes, this table for {measured} and "
                f"{args.num_classes} classes, so 'MACs / paper' is not like for like; add "
                f"--input-size {PAPER_SIZE} --num-classes {PAPER_CLASSES}",
                file=sys.stderr,
            )
        rows = [measure(n, args.num_classes, args.input_size) for n in names]
        print(complexity_table(rows, compare_paper=args.compare_paper))
        print(
            "\nMACs = torch.utils.flop_counter.FlopCounterMode FLOPs / 2 "
            "(conv and linear multiply-adds; BN, activations and pooling not counted)."
        )
        return 0
    width = max(len(n) for n in names)
    fam_width = max(len(_family(n)) for n in names)
    for name in names:
        aliases = ", ".join(aliases_of(name))
        print(f"{name:<{width}}  {_family(name):<{fam_width}}  {aliases}".rstrip())
    return 0


COMMAND = Command(
    name="models",
    help="list the model zoo, or print parameters and FLOPs (MACs) per model",
    configure=configure,
    run=run,
)
