"""``figkd eval``: top-1, top-5 and CE loss of a checkpoint on a dataset split.

    figkd eval runs/cifar100/figkd/resnet32x4_resnet8x4/seed0/checkpoints/best.pt
    figkd eval ~/teachers/resnet32x4_vanilla/ckpt_epoch_240.pth \\
        data.root=~/data/cifar-100-python --model resnet32x4 --dataset cifar100

Checkpoints written by figkd carry their config, so nothing else is needed;
for other files name the architecture (``--model``) and the dataset.  Extra
``key=value`` overrides (or a config file) adjust the data settings.  A
checkpoint whose config holds no data folder (a study's ``teacher.pt`` keeps no
paths, so that its bytes do not depend on where it was trained) takes it from
the ``config.yaml`` of the run folder it sits in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from figkd.cli import Command
from figkd.commands.train import HelpFormatter, split_items
from figkd.config import (
    apply_overrides,
    config_from_dict,
    deep_merge,
    read_yaml_with_bases,
    validate_config,
)
from figkd.engine import distributed as dist_utils
from figkd.engine.checkpoint import load_teacher, load_weights_only
from figkd.engine.data import build_data
from figkd.engine.trainer import evaluate_model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument("checkpoint", help="checkpoint file (last.pt, best.pt or a state dict)")
    parser.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG_OR_KEY=VALUE",
        help="optional config file and key=value overrides (data.*, train.device, ...)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="which split to score (val is carved from train by data.val_fraction)",
    )
    parser.add_argument(
        "--model", help="architecture, for checkpoints that do not record their config"
    )
    parser.add_argument("--dataset", help="dataset name (data.dataset)")
    parser.add_argument("--data-root", help="dataset folder (data.root)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    raw = load_weights_only(args.checkpoint)
    path, overrides = split_items(args.items)
    recorded = raw.get("config")
    data: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    if path is not None:
        data = deep_merge(data, read_yaml_with_bases(path))
    shortcuts = [f"model.name={args.model}"] if args.model else []
    shortcuts += [f"data.dataset={args.dataset}"] if args.dataset else []
    shortcuts += [f"data.root={args.data_root}"] if args.data_root else []
    shortcuts += [f"train.device={args.device}"] if args.device else []
    data = apply_overrides(data, [*overrides, *shortcuts])
    data = _with_run_data_root(data, Path(args.checkpoint))
    if "model" not in data and not args.model:
        raise ValueError(
            f"{args.checkpoint} records no config: name the architecture with --model "
            "and the dataset with --dataset"
        )
    cfg = config_from_dict(data)
    validate_config(cfg)
    if args.split == "val" and cfg.data.val_fraction == 0:
        raise ValueError("--split val needs data.val_fraction > 0")

    ctx = dist_utils.DistContext()
    device = dist_utils.resolve_device(cfg.train.device, ctx)
    bundle = build_data(cfg, ctx, device)
    model, record = load_teacher(
        cfg.model.name,
        args.checkpoint,
        bundle.num_classes,
        in_channels=bundle.in_channels,
        args=cfg.model.args,
        config_key="model",
    )
    model.to(device)
    source = {"test": bundle.test, "val": bundle.val, "train": bundle.train_eval}[args.split]
    if source is None:
        raise ValueError(f"split {args.split!r} is not available for this dataset and preset")
    metrics = evaluate_model(model, source, device=device, amp=cfg.train.amp)
    result = {
        "checkpoint": record["checkpoint"],
        "sha256": record["sha256"],
        "model": record["arch"],
        "dataset": cfg.data.dataset,
        "split": args.split,
        **metrics,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{record['arch']} on {cfg.data.dataset} {args.split}: top-1 {metrics['top1']:.2f}  "
            f"top-5 {metrics['top5']:.2f}  loss {metrics['loss']:.4f}"
        )
    return 0


def _with_run_data_root(data: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """``data`` with ``data.root`` from the run folder's ``config.yaml`` when the checkpoint
    (``<run>/checkpoints/<file>``) names no folder and the run trained on the same dataset."""
    section = data.get("data")
    if not isinstance(section, dict) or section.get("root") is not None:
        return data
    run_config = checkpoint.resolve().parent.parent / "config.yaml"
    if checkpoint.resolve().parent.name != "checkpoints" or not run_config.is_file():
        return data
    recorded = (yaml.safe_load(run_config.read_text()) or {}).get("data") or {}
    root = recorded.get("root")
    if root is None or recorded.get("dataset") != section.get("dataset"):
        return data
    print(f"figkd eval: data.root={root} (from {run_config})", file=sys.stderr)
    return {**data, "data": {**section, "root": root}}


COMMAND = Command(
    name="eval",
    help="evaluate a checkpoint (top-1, top-5, loss) on a dataset split",
    configure=configure,
    run=run,
    description=__doc__,
)
