"""One-shot GPU timing of the paper's 240-epoch recipe on 50,000 32x32 images (speed issue).

Runs on the device machine through tools/device/throughput.sh; also runs on a CPU with tiny
settings (--images 512 --epochs 2) to check the logic.  Steps, each an ordinary engine run
(`figkd train` / `figkd distill`, so the fast path, teacher cache and step switches are the
ones the study uses):

  1. 50,000 random 32x32 images in 100 classes packed as uint8 shards (speed does not depend
     on the pixels; random pixels are the worst case for nothing here), val_fraction 0;
  2. teacher: resnet32x4, 1 epoch (bf16, channels_last), to time a teacher epoch and get
     a checkpoint;
  3. KD student resnet8x4 from it, the paper's recipe (SGD 0.05, batch 64, milestones
     150/180/210 of 240) for --epochs epochs, per variant:
       fast:     uint8 fast path + teacher.cache=auto + bf16 + channels_last
       compiled: the same + train.compile=true
  nvidia-smi is sampled every 0.5 s; the report gives per-epoch seconds (epoch 1 alone,
  since it builds the teacher cache and compiles, and the median of the others), the
  projected 240-epoch time (epoch 1 + 239 x steady epoch) and the mean GPU utilisation of
  each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from figkd.data.shards import write_shards


def sample_gpu(path: Path) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(
            ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", "-lms", "500"],
            stdout=open(path, "w"), stderr=subprocess.DEVNULL)
    except OSError:
        return None


def gpu_util(path: Path, start: float, stop: float) -> float | None:
    values = []
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            stamp = time.mktime(time.strptime(parts[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
            util = float(parts[1])
        except ValueError:
            continue
        if start - 1 <= stamp <= stop + 1:
            values.append(util)
    return statistics.mean(values) if values else None


def config(
    out: Path, root: Path, *, model: str, epochs: int, extra: dict[str, Any]
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "model": {"name": model},
        "data": {"dataset": "uint8-shards", "root": str(root), "preset": "tiny-imagenet-32",
                 "val_fraction": 0.0, "batch_size": 64, "num_workers": 0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
        "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1},
        "train": {"epochs": epochs, "amp": "bf16", "channels_last": True, "progress": "none",
                  "eval_teacher": False},
    }
    for key, value in extra.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def run(kind: str, cfg: dict[str, Any], path: Path, log: IO[str]) -> tuple[float, float, Path]:
    path.write_text(yaml.safe_dump(cfg))
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "figkd", kind, str(path), "--seeds", "0"],
                          stdout=log, stderr=subprocess.STDOUT, check=False)
    stop = time.time()
    if proc.returncode:
        raise SystemExit(f"{kind} {path} failed (exit {proc.returncode}); see the log")
    run_dir = Path(cfg["output_dir"]) / str(cfg["experiment"]) / "seed0"
    return start, stop, run_dir


def epochs_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=".device/throughput", help="scratch folder")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="report folder")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=4, help="student epochs per variant")
    parser.add_argument("--variants", nargs="+", default=["fast", "compiled"],
                        choices=["fast", "compiled"])
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    smi = out / "nvidia_smi.csv"
    sampler = sample_gpu(smi)
    with open(out / "throughput.log", "a") as log:
        rows = time_runs(args, work, smi, log)
    builds = [line for line in (out / "throughput.log").read_text().splitlines()
              if line.startswith("teacher cache (built)")]
    if sampler is not None:
        sampler.terminate()
    lines = [
        f"# 240-epoch recipe timing: {args.images} images 32x32, batch 64, "
        f"{args.epochs} student epochs per variant",
        "",
        f"- device: {torch_device()}",
        "- time_s is the engine's per-epoch time (train + evaluation) from metrics.jsonl",
        "",
        "| run | epoch 1 (s) | steady epoch (s) | projected 240 epochs | wall of the run (s) "
        "| mean GPU util (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, first, steady, wall, util in rows:
        projected = (first + 239 * steady) / 60 if steady is not None and first else None
        lines.append(
            f"| {name} | {fmt(first)} | {fmt(steady)} | "
            f"{fmt(projected) + ' min' if projected is not None else ''} | {wall:.0f} | "
            f"{fmt(util)} |"
        )
    for line in builds:  # "..., N teacher forwards now, ..., X s"
        try:
            forwards = int(line.split(" teacher forwards now")[0].rsplit(", ", 1)[1])
            seconds = float(line.rsplit(", ", 1)[1].rstrip(" s"))
        except (IndexError, ValueError):
            continue
        # 240 epochs draw ~1 - (1 - 1/162)^240 = 77 % of the 162 crop/flip views of each image
        full = (1 - (1 - 1 / 162) ** 240) * 162 * args.images
        lines += ["", f"- teacher-logit cache build (one-off, shared by every student of a "
                  f"teacher): {forwards} forwards in {seconds:.1f} s; a 240-epoch run needs "
                  f"~{full:,.0f} -> ~{seconds * full / max(forwards, 1) / 60:.1f} min once"]
    report = "\n".join(lines) + "\n"
    (out / "throughput.md").write_text(report)
    print(report)
    return 0


#: (run, epoch 1 s, steady epoch s, wall s, mean GPU util %)
Row = tuple[str, float | None, float | None, float, float | None]


def time_runs(args: argparse.Namespace, work: Path, smi: Path, log: IO[str]) -> list[Row]:
    """Train the teacher for one epoch, then each student variant; one row per run."""
    root = work / f"random{args.images}"
    if not (root / "train-00000-of-00001.npz").is_file():
        rng = np.random.default_rng(0)
        for split, n in (("train", args.images), ("test", max(100, args.images // 10))):
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = np.arange(n) % 100
            write_shards(root, split, images, labels, [f"c{i:03d}" for i in range(100)],
                         codec="raw", max_mib=10_000, block=10**9)
    rows: list[Row] = []
    teacher_cfg = config(work, root, model="resnet32x4", epochs=1, extra={})
    teacher_cfg["experiment"] = "teacher"
    t0, t1, teacher_dir = run("train", teacher_cfg, work / "teacher.yaml", log)
    teacher_epochs = epochs_of(teacher_dir)
    rows.append(("teacher resnet32x4, 1 epoch (bf16, channels_last)",
                 teacher_epochs[0].get("time_s"), None, t1 - t0, gpu_util(smi, t0, t1)))
    checkpoint = teacher_dir / "checkpoints" / "last.pt"
    extras: dict[str, dict[str, Any]] = {
        "fast": {"teacher.cache": "auto"},
        "compiled": {"teacher.cache": "auto", "train.compile": True},
    }
    for variant in args.variants:
        cfg = config(work, root, model="resnet8x4", epochs=args.epochs, extra={
            "teacher.name": "resnet32x4", "teacher.checkpoint": str(checkpoint),
            "loss.name": "kd", "teacher.cache_dir": str(work / "teacher_logits"),
            **extras[variant]})
        cfg["experiment"] = f"kd-{variant}"
        t0, t1, run_dir = run("distill", cfg, work / f"kd-{variant}.yaml", log)
        times = [e.get("time_s") for e in epochs_of(run_dir)]
        first, rest = times[0], [t for t in times[1:] if t is not None]
        steady = statistics.median(rest) if rest else first
        rows.append((f"KD resnet32x4 -> resnet8x4, {variant}", first, steady, t1 - t0,
                     gpu_util(smi, t0, t1)))
    return rows


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


if __name__ == "__main__":
    raise SystemExit(main())
