"""``figkd train``: train a teacher or a plain student (a loss that needs no teacher).

    figkd train configs/cifar100/teacher/resnet32x4.yaml --seeds 0
    figkd train configs/cifar100/student/resnet8x4.yaml data.root=~/data/cifar-100-python
    figkd train model.name=tiny_cnn data.dataset=digits train.epochs=20   # no file needed

Positional arguments are a config file (optional) and ``key=value`` overrides
(write them before the ``--`` options); the switches below are shortcuts for
the most used overrides.  Runs go to
``<output_dir>/<experiment>/seed<k>/``.  Under ``torchrun`` the same command
trains with DDP (``data.batch_size`` stays the global batch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from figkd.cli import Command
from figkd.config import Config, config_to_dict, describe_config, load_config
from figkd.engine.distributed import env_context
from figkd.engine.launch import run_dir_for, run_seeds
from figkd.engine.trainer import NonFiniteLossError, RunExistsError
from figkd.losses import LOSSES

#: switch -> (config key, how to render the value); None means a boolean flag
SHORTCUTS: dict[str, tuple[str, Callable[[object], str] | None]] = {
    "device": ("train.device", str),
    "amp": ("train.amp", str),
    "epochs": ("train.epochs", str),
    "workers": ("data.num_workers", str),
    "threads": ("train.num_threads", str),
    "data_root": ("data.root", str),
    "output_dir": ("output_dir", str),
    "name": ("experiment", str),
    "channels_last": ("train.channels_last", None),
    "compile": ("train.compile", None),
    "deterministic": ("train.deterministic", None),
}


def seed_value(text: str) -> int:
    """An integer seed; a ``key=value`` here means an override was put after ``--seeds``."""
    try:
        return int(text)
    except ValueError:
        hint = " (put key=value overrides before --seeds)" if "=" in text else ""
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}{hint}") from None


def configure_run(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``distill``."""
    parser.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG_OR_KEY=VALUE",
        help="a YAML config file and/or key=value overrides (keys listed below)",
    )
    parser.add_argument(
        "--seeds",
        type=seed_value,
        nargs="+",
        default=None,
        metavar="SEED",
        help="run once per seed into seed<k>/ (default: train.seed)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each seed's run from checkpoints/last.pt (finished runs are skipped)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder and start again"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    group = parser.add_argument_group("shortcuts for common overrides")
    group.add_argument("--device", help="train.device: auto, cpu, cuda, cuda:N")
    group.add_argument("--amp", choices=("none", "bf16", "fp16"), help="train.amp")
    group.add_argument("--epochs", type=int, help="train.epochs")
    group.add_argument("--workers", type=int, help="data.num_workers")
    group.add_argument("--threads", type=int, help="train.num_threads (CPU threads)")
    group.add_argument("--data-root", help="data.root: the dataset folder")
    group.add_argument("--output-dir", help="output_dir (default runs)")
    group.add_argument("--name", help="experiment name (default: config path under configs/)")
    group.add_argument(
        "--channels-last", action="store_true", default=None, help="train.channels_last=true"
    )
    group.add_argument("--compile", action="store_true", default=None, help="train.compile=true")
    group.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="train.deterministic=true (bit-exact resume)",
    )
    parser.epilog = "config keys (type) = default:\n" + "\n".join(describe_config())
    parser.formatter_class = HelpFormatter


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows defaults that say something (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """(config path or None, overrides) from the positional arguments."""
    paths = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(paths) > 1:
        raise ValueError(
            f"give at most one config file, got {', '.join(paths)}; "
            "overrides must look like key=value"
        )
    return (paths[0] if paths else None), overrides


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    path, overrides = split_items(args.items)
    shortcut = []
    for attr, (key, render) in SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        shortcut.append(f"{key}={'true' if render is None else render(value)}")
    cfg = load_config(path, [*(extra or []), *overrides, *shortcut])
    if cfg.experiment is None:
        cfg.experiment = f"{cfg.data.dataset}/{cfg.loss.name}/{cfg.model.name}"
    return cfg


def launch(args: argparse.Namespace, cfg: Config) -> int:
    """Print or run ``cfg`` over the requested seeds; errors become one clear message."""
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    seeds = args.seeds or [cfg.train.seed]
    main = env_context().is_main
    try:
        summaries = run_seeds(cfg, seeds, resume=args.resume, overwrite=args.overwrite)
    except NonFiniteLossError as error:
        print(f"figkd {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except RunExistsError as error:
        print(f"figkd {args.command}: error: {error}", file=sys.stderr)
        return 2
    if main:
        for seed, s in zip(seeds, summaries, strict=True):
            final = s["final"].get("test", {})
            best = s.get("best") or {}
            shown = f"test top-1 {final.get('top1', float('nan')):.2f}"
            if best:
                shown += f" (best-val epoch {best['epoch']}: {best['test']['top1']:.2f})"
            print(f"{run_dir_for(cfg, seed)}: {shown}")
        if len(seeds) > 1:
            print(f"aggregate with: figkd report {Path(cfg.output_dir) / str(cfg.experiment)}")
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if LOSSES.get(cfg.loss.name).needs_teacher:
        raise ValueError(f"loss {cfg.loss.name!r} needs a teacher: use `figkd distill`")
    return launch(args, cfg)


COMMAND = Command(
    name="train",
    help="train a teacher or a plain student from a config (no teacher involved)",
    configure=configure_run,
    run=run,
    description=__doc__,
)
