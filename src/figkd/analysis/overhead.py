"""Forward+backward time of the FiGKD loss relative to the KD loss (``figkd bench``).

One implementation shared by ``figkd bench`` and ``benchmarks/loss_overhead.py``.

How it measures, and why:

- every configuration is warmed up (3 calls: builds cached band matrices), then calibrated to
  blocks of about 20 ms (at most 200 calls), so one block is long enough for the clock and
  short enough that the machine's state does not drift within it;
- the blocks run in interleaved rounds, every configuration once per round in a freshly
  shuffled order, so a noisy moment (another process, a frequency change) hits all
  configurations of that round alike;
- each configuration's time is divided by KD's time *in the same round* and the median of
  these paired ratios is reported: the noise common to a round cancels in the ratio, which a
  ratio of the median times would not do;
- on CUDA, blocks are bracketed by ``torch.cuda.synchronize()`` so they time the kernels,
  not their launches.

Both losses include their cross-entropy term; per-call input validation is off for all of
them (the trainer checks the loss value itself).
"""

from __future__ import annotations

import datetime as _dt
import functools
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from figkd.engine import run_dir
from figkd.engine.run_dir import cpu_model
from figkd.losses import CELoss, DistillationLoss, FiGKDLoss, KDLoss

#: the reference every ratio is taken to
KD_NAME = "KD (T=4)"
#: (batch, classes) timed by default: CIFAR-100-like, a mid size, ImageNet-like
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((64, 100), (128, 200), (256, 1000))
#: calls before calibrating (the first calls build and cache band matrices)
WARMUP_CALLS = 3
#: calls timed once to estimate a block's length
CALIBRATION_CALLS = 3
#: wanted length of one timed block, seconds
TARGET_BLOCK_SECONDS = 0.02
#: most calls in one block (fast configurations would otherwise need thousands)
MAX_BLOCK_ITERATIONS = 200
#: interleaved rounds per size unless asked otherwise
DEFAULT_ROUNDS = 15

Clock = Callable[[], float]


def _silent(_message: str) -> None:
    pass


def default_configurations() -> dict[str, DistillationLoss]:
    """KD, CE alone, and FiGKD 2d/1d x haar/db2 x levels 1-3, all with ``validate=False``."""
    configs: dict[str, DistillationLoss] = {
        KD_NAME: KDLoss(validate=False),
        "CE only": CELoss(validate=False),
    }
    for transform in ("2d", "1d"):
        for wavelet in ("haar", "db2"):
            for level in (1, 2, 3):
                configs[f"FiGKD {transform} {wavelet} L{level}"] = FiGKDLoss(
                    wavelet=wavelet, level=level, transform=transform, validate=False
                )
    return configs


def path_of(loss: DistillationLoss, num_classes: int, device: torch.device) -> str:
    """Which computation FiGKDLoss picks at this size (:meth:`FiGKDLoss.computation`); ``-``
    for any other loss.  The report shows it because the ratio jumps between paths."""
    if not isinstance(loss, FiGKDLoss):
        return "-"
    return loss.computation(num_classes, device.type)


def parse_size(text: str) -> tuple[int, int]:
    """``"64x100"`` -> ``(64, 100)``: a batch of at least 1 and at least 2 classes."""
    batch_text, sep, classes_text = text.strip().lower().partition("x")
    try:
        if not sep:
            raise ValueError
        batch, num_classes = int(batch_text), int(classes_text)
    except ValueError:
        raise ValueError(
            f"invalid size {text!r}: expected BATCHxCLASSES, e.g. 64x100"
        ) from None
    if batch < 1 or num_classes < 2:
        raise ValueError(
            f"invalid size {text!r}: need a batch >= 1 and >= 2 classes (BATCHxCLASSES, "
            "e.g. 64x100)"
        )
    return batch, num_classes


def time_block(
    fn: Callable[[], None], iterations: int, device: torch.device, clock: Clock = time.perf_counter
) -> float:
    """Seconds per call of ``fn`` over ``iterations`` back-to-back calls.

    On CUDA the block is synchronized on both sides, so queued kernels of earlier work are not
    charged to it and its own kernels are."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(iterations):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) / iterations


def calibrate(
    fn: Callable[[], None], device: torch.device, clock: Clock = time.perf_counter
) -> int:
    """Warm ``fn`` up, then the number of calls that makes a block of ~``TARGET_BLOCK_SECONDS``
    (1 to ``MAX_BLOCK_ITERATIONS``)."""
    for _ in range(WARMUP_CALLS):
        fn()
    per_call = max(time_block(fn, CALIBRATION_CALLS, device, clock), 1e-7)
    return max(1, min(MAX_BLOCK_ITERATIONS, int(TARGET_BLOCK_SECONDS / per_call)))


def measure_rounds(
    steps: Mapping[str, Callable[[], None]],
    iterations: Mapping[str, int],
    rounds: int,
    device: torch.device,
    rng: random.Random,
    clock: Clock = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of every step, one block each per round in a shuffled order:
    ``result[name][i]`` was measured in round ``i`` (so rounds can be paired)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        order = list(steps)
        rng.shuffle(order)
        for name in order:
            times[name].append(time_block(steps[name], iterations[name], device, clock))
    return times


def summarize(
    times: Mapping[str, Sequence[float]], reference: str = KD_NAME
) -> dict[str, tuple[float, float]]:
    """Per configuration: (median seconds, median over rounds of its time / the reference's
    time in the same round).

    Pairing by round is the point: noise that slows a whole round cancels in each ratio, while
    ``median(x) / median(reference)`` could mix a quiet round's numerator with a noisy
    round's denominator."""
    if reference not in times:
        raise ValueError(f"no {reference!r} times to take ratios to (have {sorted(times)})")
    base = list(times[reference])
    if not base:
        raise ValueError("no rounds measured")
    if min(base) <= 0:
        raise ValueError(f"{reference!r} times must be positive, got {base}")
    summary: dict[str, tuple[float, float]] = {}
    for name, seconds in times.items():
        if len(seconds) != len(base):
            raise ValueError(
                f"{name!r} has {len(seconds)} rounds, {reference!r} has {len(base)}: "
                "ratios are paired by round"
            )
        ratios = [value / ref for value, ref in zip(seconds, base)]
        summary[name] = (statistics.median(seconds), statistics.median(ratios))
    return summary


def _step(
    loss: DistillationLoss, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor
) -> None:
    total = sum(loss(student, teacher, targets).values())
    total.backward()


def _grid(num_classes: int) -> str:
    from figkd.wavelets import logit_grid_shape

    height, width = logit_grid_shape(num_classes)
    return f"{height}x{width}"


def benchmark(
    device: torch.device,
    sizes: Iterable[tuple[int, int]] = DEFAULT_SIZES,
    rounds: int = DEFAULT_ROUNDS,
    configs: Mapping[str, DistillationLoss] | None = None,
    seed: int = 0,
    say: Callable[[str], None] = _silent,
) -> list[str]:
    """Time every configuration on ``device`` at every (batch, classes) size; the report's
    Markdown lines for this device (a heading, then one table per size).

    ``configs`` must contain :data:`KD_NAME`, the reference of the ratios; ``say`` gets a
    progress line per size."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    configs = default_configurations() if configs is None else configs
    if KD_NAME not in configs:
        raise ValueError(f"configs must include {KD_NAME!r}, the reference of the ratios")
    name = device_name(device)
    lines = [f"### device: {name}", ""]
    rng = random.Random(seed)
    for batch, num_classes in sizes:
        say(f"{name}: batch {batch} x {num_classes} classes, {len(configs)} losses, "
            f"{rounds} round(s)")
        generator = torch.Generator().manual_seed(seed)
        student = torch.randn(batch, num_classes, generator=generator).mul(3).to(device)
        student.requires_grad_(True)
        teacher = torch.randn(batch, num_classes, generator=generator).mul(3).to(device)
        targets = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        steps: dict[str, Callable[[], None]] = {
            key: functools.partial(_step, loss, student, teacher, targets)
            for key, loss in configs.items()
        }
        with warnings.catch_warnings():
            # db2 at levels 2-3 on small logit maps warns (as pywt does); known, not news here
            warnings.simplefilter("ignore", UserWarning)
            iterations = {key: calibrate(fn, device) for key, fn in steps.items()}
            summary = summarize(measure_rounds(steps, iterations, rounds, device, rng))
        lines += [
            f"#### batch {batch} x {num_classes} classes (grid {_grid(num_classes)})",
            "",
            "| loss | computation | fwd+bwd (us, median) | ratio to KD (median of paired ratios) |",
            "|---|---|---:|---:|",
        ]
        for key, (seconds, ratio) in summary.items():
            lines.append(
                f"| {key} | {path_of(configs[key], num_classes, device)} | "
                f"{seconds * 1e6:.1f} | {ratio:.2f} |"
            )
        lines.append("")
    return lines


def resolve_devices(choice: str) -> list[torch.device]:
    """``auto``: the CPU, then CUDA too when present; ``cpu``; ``cuda`` (an error without it)."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {choice!r}: use auto, cpu or cuda")
    devices = [torch.device("cpu")] if choice in ("auto", "cpu") else []
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device cuda, but torch {torch.__version__} sees no CUDA GPU "
                "(torch.cuda.is_available() is False); use --device cpu or auto, or run on a "
                "machine with a GPU and a CUDA build of torch"
            )
        devices.append(torch.device("cuda"))
    return devices


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the torch thread count (both change the times)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads"


def git_commit() -> str:
    """Short commit of the figkd source (asked where the package lives, not in the cwd), with
    "+ local changes" when the tree differs from it."""
    found = run_dir.git_commit()
    if found is None:
        return "unknown"
    return found["commit"][:7] + (" (+ local changes)" if found["dirty"] else "")


def report_header(command: str) -> list[str]:
    """Title, then the command, date and machine, so a report says how to reproduce it."""
    return [
        "# FiGKD loss overhead relative to KD (forward + backward)",
        "",
        f"- command: `{command}`",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        (f"- machine: {platform.node()} ({platform.machine()}), {cpu_model()}, "
         f"torch {torch.__version__}, Python {platform.python_version()}, git {git_commit()}"),
        f"- GPU present: {torch.cuda.is_available()}",
        "",
    ]


def build_report(
    command: str,
    devices: Iterable[torch.device],
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    rounds: int = DEFAULT_ROUNDS,
    say: Callable[[str], None] = _silent,
) -> str:
    """The whole Markdown report: header, then every device's tables."""
    lines = report_header(command)
    for device in devices:
        lines += benchmark(device, sizes, rounds, say=say)
    return "\n".join(lines)


def write_report(report: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report + "\n")
