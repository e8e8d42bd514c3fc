"""Forward+backward time of the FiGKD loss relative to the KD loss, side by side.

Every configuration is timed in interleaved rounds (shuffled order each round)
so that machine noise hits all of them alike; the reported ratio is the median
over rounds of (config time / KD time) measured in the same round.

    python benchmarks/loss_overhead.py                      # CPU, and GPU if present
    python benchmarks/loss_overhead.py --output benchmarks/results/loss_overhead.md

Both losses include their cross-entropy term; per-call input validation is off
for all of them (the trainer checks the loss value itself).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from figkd.losses import CELoss, DistillationLoss, FiGKDLoss, KDLoss

SIZES = [(64, 100), (128, 200), (256, 1000)]


def configurations() -> dict[str, DistillationLoss]:
    configs: dict[str, DistillationLoss] = {"KD (T=4)": KDLoss(validate=False), "CE only": CELoss(validate=False)}
    for transform in ("2d", "1d"):
        for wavelet in ("haar", "db2"):
            for level in (1, 2, 3):
                name = f"FiGKD {transform} {wavelet} L{level}"
                configs[name] = FiGKDLoss(wavelet=wavelet, level=level, transform=transform, validate=False)
    return configs


def path_of(loss: DistillationLoss, num_classes: int, device: torch.device) -> str:
    """Which computation FiGKDLoss picks for this size (see figkd.losses.figkd_loss)."""
    from figkd.losses import figkd_loss

    if not isinstance(loss, FiGKDLoss):
        return "-"
    if num_classes <= figkd_loss.BAND_MATRIX_MAX_CLASSES.get(device.type, 0):
        return "band matrix"
    if loss.transform == "2d" and loss.wavelet == "haar" and loss.mode == "zero":
        return "fused Haar"
    return "band path"


def _step(loss: DistillationLoss, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> None:
    total = sum(loss(student, teacher, targets).values())
    total.backward()


def time_block(fn: Callable[[], None], iterations: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def benchmark(device: torch.device, rounds: int, seed: int = 0) -> list[str]:
    lines = [f"### device: {device_name(device)}", ""]
    configs = configurations()
    rng = random.Random(seed)
    for batch, num_classes in SIZES:
        generator = torch.Generator().manual_seed(seed)
        student = torch.randn(batch, num_classes, generator=generator).mul(3).to(device).requires_grad_(True)
        teacher = torch.randn(batch, num_classes, generator=generator).mul(3).to(device)
        targets = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        steps = {name: (lambda loss=loss: _step(loss, student, teacher, targets)) for name, loss in configs.items()}
        iterations = {}
        for name, fn in steps.items():  # warm up (builds cached matrices) and calibrate to ~20 ms blocks
            for _ in range(3):
                fn()
            iterations[name] = max(1, min(200, int(0.02 / max(time_block(fn, 3, device), 1e-7))))
        times: dict[str, list[float]] = {name: [] for name in steps}
        ratios: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            order = list(steps)
            rng.shuffle(order)
            measured = {name: time_block(steps[name], iterations[name], device) for name in order}
            for name, seconds in measured.items():
                times[name].append(seconds)
                ratios[name].append(seconds / measured["KD (T=4)"])
        lines += [
            f"#### batch {batch} x {num_classes} classes (grid {_grid(num_classes)})",
            "",
            "| loss | computation | fwd+bwd (us, median) | ratio to KD (median of paired ratios) |",
            "|---|---|---:|---:|",
        ]
        for name in steps:
            lines.append(
                f"| {name} | {path_of(configs[name], num_classes, device)} | "
                f"{statistics.median(times[name]) * 1e6:.1f} | {statistics.median(ratios[name]):.2f} |"
            )
        lines.append("")
    return lines


def _grid(num_classes: int) -> str:
    from figkd.wavelets import logit_grid_shape

    h, w = logit_grid_shape(num_classes)
    return f"{h}x{w}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = CPU, then CUDA too when present")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # db2 at levels 2-3 on small maps warns, as pywt does

    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    header = [
        "# FiGKD loss overhead relative to KD (forward + backward)",
        "",
        f"- command: `python {' '.join(['benchmarks/loss_overhead.py', *(argv if argv is not None else sys.argv[1:])])}`",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()} ({platform.machine()}), {cpu_model()}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, git {git_commit()}",
        f"- GPU present: {torch.cuda.is_available()}",
        "",
    ]
    lines = header
    for device in devices:
        lines += benchmark(device, args.rounds)
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
