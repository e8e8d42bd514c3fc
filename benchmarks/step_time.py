"""Time per training batch: ResNet32x4 -> ResNet8x4, CE / KD / FiGKD L1-L3, live vs cached teacher.

The paper's Table 14 setting: batch 64, 100 classes, 32x32 inputs.  Each
configuration is one full training step as the trainer runs it (teacher forward
without gradients or a teacher-logit cache lookup, student forward, loss terms,
backward, SGD with momentum and weight decay).  Configurations are interleaved in
rounds (a shuffled order per round) so machine noise hits all of them alike, the
first round is a warm-up, and the table reports medians of the remaining steps,
with ratios to KD of the same teacher mode.

The cache column uses figkd's ViewLogitCache lookup (fp16 table over the 162 crop/flip
views, indexed by the batch's sample ids and augmentation parameters), i.e. the exact
per-step work of ``teacher.cache``; the one-off build is benchmarks/throughput.py's.

    python benchmarks/step_time.py --out benchmarks/results/step_time.md
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed_common import emit, header, make_step, median, sync

from figkd.data import BatchAugment
from figkd.engine.teacher_cache import CropFlipViews, ViewLogitCache
from figkd.losses import build_loss
from figkd.models import create_model

METHODS = {
    "CE only": ("ce", {}),
    "KD": ("kd", {}),
    "FiGKD L1": ("figkd", {"level": 1}),
    "FiGKD L2": ("figkd", {"level": 2}),
    "FiGKD L3": ("figkd", {"level": 3}),
}


def loss_costs(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median microseconds of each method's loss forward + backward, interleaved.

    On one intra-op thread: ops this small gain nothing from two, and on shared cores
    a two-thread parallel region waits for a descheduled thread (tens of ms).
    """
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(args.batch_size, 100, generator=gen).to(device).requires_grad_(True)
    t = torch.randn(args.batch_size, 100, generator=gen).to(device)
    y = torch.randint(0, 100, (args.batch_size,), generator=gen).to(device)
    losses = {label: build_loss(name, **kw).to(device) for label, (name, kw) in METHODS.items()}
    out: dict[str, list[float]] = {label: [] for label in METHODS}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for rep in range(args.loss_reps + 10):
        for label, loss in losses.items():
            sync(device)
            start = time.perf_counter()
            sum(loss(s, t, y).values()).backward()
            s.grad = None
            sync(device)
            if rep >= 10:
                out[label].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return {label: 1e6 * median(v) for label, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds (the first is warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-reps", type=int, default=300, help="loss-only timings")
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    fmt = torch.channels_last if args.channels_last else torch.preserve_format

    teacher = create_model("resnet32x4", num_classes=100).to(device).to(memory_format=fmt).eval()
    teacher.requires_grad_(False)
    # data: one fixed pool of uint8 images, augmented per step by the fast path's own code
    pool = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 100, (512,), device=device)
    augment = BatchAugment("cifar", train=True)
    views = CropFlipViews.from_preset("cifar")
    if views is None:
        raise SystemExit("preset cifar has no finite crop/flip view space")
    table = ViewLogitCache(
        torch.randn(len(pool), len(views), 100, device=device).half(), views
    )
    gen = torch.Generator().manual_seed(args.seed)

    configs: list[tuple[str, str]] = []
    steps = {}
    for label, (name, kw) in METHODS.items():
        for mode in ("live", "cache") if name != "ce" else ("live",):
            torch.manual_seed(args.seed)  # every student starts from the same weights
            student = create_model("resnet8x4", num_classes=100).to(device).to(memory_format=fmt)
            loss = build_loss(name, **kw).to(device)
            opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            steps[(label, mode)] = (make_step(student, teacher, loss, opt, amp=args.amp,
                                              device=device), name != "ce")
            configs.append((label, mode))

    times: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    per_round: dict[tuple[str, str], list[float]] = {c: [] for c in configs}  # round medians
    order = list(configs)
    rng = random.Random(args.seed)
    for rnd in range(args.rounds):
        rng.shuffle(order)
        for config in order:
            step, uses_teacher = steps[config]
            took = []
            for _ in range(args.steps):
                index = torch.randint(0, len(pool), (args.batch_size,), generator=gen)
                params = augment.sample(args.batch_size, gen)
                sync(device)
                start = time.perf_counter()
                x = augment.apply(pool[index.to(device)], params).contiguous(memory_format=fmt)
                y = targets[index.to(device)]
                cached = (table.lookup(index, params, device)
                          if config[1] == "cache" and uses_teacher else None)
                step(x, y, cached)
                sync(device)
                took.append(time.perf_counter() - start)
            if rnd > 0:
                times[config] += took
                per_round[config].append(median(took))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    def ms(label: str, mode: str) -> float:
        return 1e3 * median(times[(label, mode if (label, mode) in times else "live")])

    lines = header("Time per training batch: ResNet32x4 -> ResNet8x4 (paper Table 14)",
                   __file__, device)
    lines += [
        f"batch {args.batch_size}, 100 classes, 32x32, amp={args.amp}, channels_last="
        f"{args.channels_last}; one step = data augmentation + teacher (live) or cache lookup + "
        "student fwd/bwd + SGD. Median over "
        f"{(args.rounds - 1) * args.steps} steps per configuration (rounds interleaved, "
        "shuffled, first round dropped).",
        "",
        "| method | live teacher (ms) | vs KD live | teacher cache (ms) | vs KD cache | "
        "cache speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    kd_live, kd_cache = ms("KD", "live"), ms("KD", "cache")
    for label in METHODS:
        live, cache = ms(label, "live"), ms(label, "cache")
        lines.append(f"| {label} | {live:.1f} | {live / kd_live:.3f} | {cache:.1f} | "
                     f"{cache / kd_cache:.3f} | {live / cache:.2f}x |")
    lines.append("")

    def paired(label: str, mode: str) -> float:
        """Median over rounds of (this config's round median / KD's round median)."""
        mine = per_round[(label, mode if (label, mode) in per_round else "live")]
        return median([a / b for a, b in zip(mine, per_round[("KD", mode)])])

    lines.append("Paired ratios to KD (median over rounds of the per-round ratio; robust to "
                 "slow drifts of the machine's load): " + "; ".join(
                     f"{label} {paired(label, 'live'):.3f} live / {paired(label, 'cache'):.3f} "
                     "cache" for label in METHODS))
    lines.append("")
    loss_us = loss_costs(args, device)
    step_kd = {"live": kd_live, "cache": kd_cache}
    lines.append("Loss alone (forward + backward on fixed 64 x 100 logits, one thread, median "
                 f"of {args.loss_reps} interleaved calls), and what it adds to a KD step:")
    lines.append("")
    lines.append("| method | loss fwd+bwd (us) | extra vs KD loss (us) | share of KD step, live | "
                 "share of KD step, cache |")
    lines.append("|---|---:|---:|---:|---:|")
    for label in METHODS:
        extra = loss_us[label] - loss_us["KD"]
        live_pct, cache_pct = extra / 10 / step_kd["live"], extra / 10 / step_kd["cache"]
        lines.append(f"| {label} | {loss_us[label]:.0f} | {extra:+.0f} | {live_pct:+.3f} % | "
                     f"{cache_pct:+.3f} % |")
    lines.append("")
    for level, target, paper in ((1, 1.0, 2.0), (3, 3.0, 30.1)):
        for mode, kd in (("live", kd_live), ("cache", kd_cache)):
            extra = 100 * (ms(f"FiGKD L{level}", mode) / kd - 1)
            lines.append(f"- FiGKD level {level} vs KD ({mode} teacher): {extra:+.1f} % "
                         f"(target <= {target:.0f} %, paper +{paper} %)")
    lines.append("- CE only has no teacher: its cache column repeats the live one.")
    spread = {f"{k[0]} {k[1]}": (1e3 * min(v), 1e3 * max(v)) for k, v in times.items()}
    lines.append("- min / max step (ms): " + "; ".join(
        f"{k} {lo:.0f}/{hi:.0f}" for k, (lo, hi) in spread.items()))
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
