"""``figkd distill``: train a student from a frozen teacher with a distillation method.

    figkd distill configs/cifar100/figkd/resnet32x4_resnet8x4.yaml --seeds 0 1 2
    figkd distill configs/cifar100/kd/resnet32x4_resnet8x4.yaml data.root=~/data/cifar-100-python \\
        --teacher ~/teachers/resnet32x4_vanilla/ckpt_epoch_240.pth --seeds 0 1 2

The teacher checkpoint (``teacher.checkpoint`` or ``--teacher``) may be any
checkpoint ``figkd train`` wrote (last.pt or best.pt) or a plain state dict
(also under a "model" or "state_dict" key).  It is loaded with
``weights_only=True``; its class count and architecture must match the config,
and its SHA-256 is recorded in summary.json.  Write ``key=value`` overrides
before the ``--`` options.
"""

from __future__ import annotations

import argparse

from figkd.cli import Command
from figkd.commands.train import config_from_args, configure_run, launch
from figkd.losses import LOSSES


def configure(parser: argparse.ArgumentParser) -> None:
    configure_run(parser)
    parser.add_argument(
        "--teacher",
        metavar="CHECKPOINT",
        help="teacher weights; shortcut for teacher.checkpoint=<file>",
    )


def run(args: argparse.Namespace) -> int:
    extra = [f"teacher.checkpoint={args.teacher}"] if args.teacher else []
    cfg = config_from_args(args, extra)
    method = LOSSES.canonical(cfg.loss.name)
    if method == "ce":
        raise ValueError(
            "loss 'ce' trains without distillation: use `figkd train`, or choose a "
            "distillation method with loss.name=<kd|figkd|...>"
        )
    # Mutual learning (DML) distils between peers trained together: no frozen teacher.
    if LOSSES.get(method).needs_teacher and cfg.teacher.name is None:
        raise ValueError("distillation needs teacher.name (and teacher.checkpoint)")
    return launch(args, cfg)


COMMAND = Command(
    name="distill",
    help="distil a student from a frozen teacher (KD, FiGKD, ...) from a config",
    configure=configure,
    run=run,
    description=__doc__,
)
