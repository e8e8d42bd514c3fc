"""``figkd demo``: the whole pipeline on scikit-learn's bundled digits, no files needed.

Trains a small teacher (``tiny_cnn``, width 64) with cross-entropy, then a
narrow student (width 4) three ways -- plain CE, KD and FiGKD -- over three
seeds, with the same engine, configs and run layout as real experiments.
Prints the mean ± std test accuracy, and writes under ``runs/demo``:
``report.md`` / ``report.csv`` (the table), ``curves.png`` (test accuracy and
loss per epoch) and every run's folder (config, metrics.jsonl, TensorBoard,
checkpoints, summary.json).  It ends by checking the FiGKD detail loss on the
trained models' logits against PyWavelets.  A few minutes at most on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from figkd.cli import Command
from figkd.commands.train import HelpFormatter
from figkd.config import Config, config_from_dict, validate_config
from figkd.engine.launch import run_seeds
from figkd.engine.optim import scale_milestones
from figkd.engine.progress import choose_mode
from figkd.engine.report import aggregate, find_summaries, write_report
from figkd.engine.trainer import EpochRecord

METHODS = ("ce", "kd", "figkd")


def demo_configs(
    out: Path,
    *,
    teacher_epochs: int,
    epochs: int,
    teacher_width: int,
    student_width: int,
    device: str,
) -> tuple[Config, dict[str, Config]]:
    """The teacher config and one student config per method (all on digits)."""

    common: dict[str, Any] = {
        "output_dir": str(out),
        "data": {"dataset": "digits", "val_fraction": 0.1, "batch_size": 64, "num_workers": 0},
        "train": {"device": device, "progress": "none", "num_threads": 1, "eval_teacher": True},
    }
    teacher = config_from_dict(
        {
            **common,
            "experiment": "teacher",
            "model": {"name": "tiny_cnn", "args": {"width": teacher_width}},
            "schedule": {"milestones": scale_milestones(teacher_epochs)},
            "train": {**common["train"], "epochs": teacher_epochs},
        }
    )
    students = {}
    for method in METHODS:
        cfg = config_from_dict(
            {
                **common,
                "experiment": method,
                "model": {"name": "tiny_cnn", "args": {"width": student_width}},
                "loss": {"name": method},
                "schedule": {"milestones": scale_milestones(epochs)},
                "train": {**common["train"], "epochs": epochs},
            }
        )
        if method != "ce":
            cfg.teacher.name = "tiny_cnn"
            cfg.teacher.args = {"width": teacher_width}
            cfg.teacher.checkpoint = str(out / "teacher" / "seed0" / "checkpoints" / "last.pt")
            cfg.teacher.cache_logits = True  # digits are not augmented: logits are fixed
        students[method] = cfg
    for cfg in (teacher, *students.values()):
        validate_config(cfg)
    return teacher, students


class DemoProgress:
    """One bar for the whole demo on a terminal; a line per finished run otherwise."""

    def __init__(self, total: int, mode: str) -> None:
        self.mode = choose_mode(mode)
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="demo", unit="epoch", dynamic_ncols=True)

    def callback(self, label: str) -> Callable[[int, EpochRecord], None]:
        def update(seed: int, record: EpochRecord) -> None:
            test = record.data.get("test", {}).get("top1")
            if self.bar is not None:
                self.bar.set_postfix_str(
                    f"{label} seed {seed}: test top-1 {test:.1f}", refresh=False
                )
                self.bar.update(1)
            elif self.mode == "lines" and record.epoch == record.epochs:
                print(
                    f"  {label:<8} seed {seed}: {record.epochs} epochs, test top-1 {test:.2f}",
                    flush=True,
                )

        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _curves(out: Path, labels: dict[str, str]) -> Path:
    """Test accuracy and test loss per epoch, mean over seeds with min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from figkd.engine.run_dir import RunDir

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in labels.items():
        runs = [RunDir(p).read_metrics() for p in sorted((out / name).glob("seed*"))]
        runs = [r for r in runs if r]
        if not runs:
            continue
        length = min(len(r) for r in runs)
        epochs = [r["epoch"] for r in runs[0][:length]]
        for ax, key in zip(axes, ("top1", "loss"), strict=True):
            values = np.array([[e["test"][key] for e in r[:length]] for r in runs])
            ax.plot(epochs, values.mean(0), label=label)
            if len(runs) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="test top-1 (%)", title="digits: test accuracy")
    axes[1].set(
        xlabel="epoch", ylabel="test cross-entropy", title="digits: test loss", yscale="log"
    )
    axes[0].legend()
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _reference_detail(student: np.ndarray, teacher: np.ndarray) -> float:
    """Detail loss straight from PyWavelets: mean squared band difference, summed over bands."""
    import pywt

    from figkd.wavelets import logit_grid_shape

    h, w = logit_grid_shape(student.shape[1])
    pad = ((0, 0), (0, h * w - student.shape[1]))
    _, s_bands = pywt.dwt2(np.pad(student, pad).reshape(-1, h, w), "haar", mode="zero")
    _, t_bands = pywt.dwt2(np.pad(teacher, pad).reshape(-1, h, w), "haar", mode="zero")
    return float(sum(((s - t) ** 2).mean() for s, t in zip(s_bands, t_bands, strict=True)))


def _pywavelets_check(
    teacher_cfg: Config, student_cfg: Config, out: Path
) -> tuple[float, float, bool]:
    """FiGKD's detail loss on the trained models' test logits, against PyWavelets."""
    from figkd.data import build_transforms, load_dataset
    from figkd.engine.checkpoint import load_teacher
    from figkd.losses import FiGKDLoss

    test = load_dataset("digits", split="test", transform=build_transforms("digits", train=False))
    images = torch.stack([test[i][0] for i in range(len(test))]).double()
    logits = []
    for cfg, folder in ((student_cfg, "figkd"), (teacher_cfg, "teacher")):
        model, _ = load_teacher(
            "tiny_cnn",
            out / folder / "seed0" / "checkpoints" / "last.pt",
            10,
            in_channels=1,
            args=cfg.model.args,
        )
        with torch.no_grad():
            logits.append(model.double()(images))
    ours = FiGKDLoss().detail_loss(logits[0], logits[1]).item()
    reference = _reference_detail(logits[0].numpy(), logits[1].numpy())
    return ours, reference, abs(ours - reference) <= 1e-9 * max(1.0, abs(reference))


def _table(rows: list[dict[str, Any]], order: list[str], widths: dict[str, str]) -> str:
    by_name = {r["experiment"]: r for r in rows}
    ce_mean = by_name["ce"]["top1_last_mean"] if "ce" in by_name else None
    lines = [
        "| run | model | seeds | test top-1 (last) | test top-1 (best val) | vs CE |",
        "|---|---|---|---|---|---|",
    ]
    for name in order:
        r = by_name.get(name)
        if r is None:
            continue

        def pm(mean: float | None, std: float | None) -> str:
            if mean is None:
                return "–"
            return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"

        delta = (
            ""
            if name in ("teacher", "ce") or ce_mean is None
            else f"{r['top1_last_mean'] - ce_mean:+.2f}"
        )
        lines.append(
            f"| {name} | {widths[name]} | {r['n']} | {pm(r['top1_last_mean'], r['top1_last_std'])} "
            f"| {pm(r['top1_best_mean'], r['top1_best_std'])} | {delta} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    teacher_cfg, students = demo_configs(
        out,
        teacher_epochs=args.teacher_epochs,
        epochs=args.epochs,
        teacher_width=args.teacher_width,
        student_width=args.student_width,
        device=args.device,
    )
    seeds = list(args.seeds)
    for name in ("teacher", *METHODS):  # a re-run replaces the previous demo's runs entirely
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    print(
        f"figkd demo: digits (1,797 8x8 images, 10 classes; sklearn), tiny_cnn teacher "
        f"(width {args.teacher_width}) -> student (width {args.student_width}); "
        f"CE, KD and FiGKD over seeds {' '.join(map(str, seeds))}; runs in {out}/",
        flush=True,
    )
    progress = DemoProgress(
        args.teacher_epochs + len(METHODS) * len(seeds) * args.epochs, args.progress
    )
    try:
        run_seeds(teacher_cfg, [0], overwrite=True, on_epoch_end=progress.callback("teacher"))
        for method, cfg in students.items():
            run_seeds(
                copy.deepcopy(cfg), seeds, overwrite=True, on_epoch_end=progress.callback(method)
            )
    finally:
        progress.close()

    rows = aggregate(find_summaries([out / name for name in ("teacher", *METHODS)]))
    md, csv_path = write_report(rows, out)
    widths = {
        "teacher": f"tiny_cnn w{args.teacher_width}",
        **{m: f"tiny_cnn w{args.student_width}" for m in METHODS},
    }
    table = _table(rows, ["teacher", *METHODS], widths)
    print()
    print(table)
    from figkd.data import load_dataset

    held_out = len(load_dataset("digits", split="test"))
    print(f"test accuracy (%) on the {held_out} held-out digits, mean ± sample std over seeds")
    curves = _curves(out, {"teacher": "teacher", "ce": "CE", "kd": "KD", "figkd": "FiGKD"})
    ours, reference, ok = _pywavelets_check(teacher_cfg, students["figkd"], out)
    print(
        f"FiGKD detail loss on the trained models' test logits: {ours:.10f}, "
        f"PyWavelets: {reference:.10f} -> {'OK' if ok else 'MISMATCH'}"
    )
    print(
        f"wrote {md}, {csv_path}, {curves} and the run folders; "
        f"finished in {time.perf_counter() - start:.0f} s"
    )
    return 0 if ok else 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument(
        "--out", default="runs/demo", help="output folder (re-running overwrites it)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    parser.add_argument("--epochs", type=int, default=30, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=20, help="teacher epochs")
    parser.add_argument("--teacher-width", type=int, default=64, help="teacher tiny_cnn width")
    parser.add_argument("--student-width", type=int, default=4, help="student tiny_cnn width")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="a bar on a terminal, a line per run otherwise",
    )


COMMAND = Command(
    name="demo",
    help="train a teacher, then CE, KD and FiGKD students on bundled digits (no files needed)",
    configure=configure,
    run=run,
    description=__doc__,
)
