"""MLKD's training step: per-temperature loss loop vs one batched loss, live vs cached weak view.

MLKD was the slowest method of the short tier (docs/results/short_tier_progress.md): each
step runs the student on two views, the resnet32x4 teacher on two views, and a loss over
5 temperatures x 2 views x 3 levels.  This times, side by side and interleaved (shuffled
rounds, the first dropped), one ResNet32x4 -> ResNet8x4 step of:

  (a) KD with the teacher-logit cache, for scale;
  (b) MLKD as of stop 21: the loss as a Python loop over (view, temperature), the live
      teacher on both views;
  (c) MLKD with the batched loss (one (K, V, B, C) computation), the live teacher on both;
  (d) (c) with the weak view's teacher logits from the cache (``teacher.cache=auto`` now):
      one teacher forward per step.

Besides the time it counts the ATen operator calls of one step (forward, backward and
SGD; TorchDispatchMode), which on a GPU are roughly the kernel launches: the CPU-side
cost that bounds small models when 12 runs share one GPU.  Views are made before the
timed region; the cache lookup is inside it.

    python benchmarks/mlkd_step.py --out benchmarks/results/mlkd_step.md
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed_common import emit, header, median, sync

from figkd.data.batch_loader import BatchAugment, StrongBatchAugment
from figkd.distiller import Distiller
from figkd.engine.teacher_cache import CropFlipViews, ViewLogitCache
from figkd.losses import KDLoss, MLKDLoss
from figkd.losses.precision import full_precision
from figkd.models import create_model


class LoopMLKD(MLKDLoss):
    """The paper variant's arithmetic as stop 21 ran it: one small computation per
    (view, temperature), each level's softmax taken separately."""

    def _paper(
        self, s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor,
        sample_mask: Tensor, class_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        instance = batch = klass = s_weak.new_zeros(())
        for student, teacher in ((s_weak, t_weak), (s_strong, t_strong)):
            inst_s, inst_t = self._instance_inputs(student, teacher)
            for tau in self.temperatures:
                log_p_s = F.log_softmax(inst_s / tau, dim=1)
                log_p_t = F.log_softmax(inst_t / tau, dim=1)
                kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1) * tau**2
                instance = instance + (kl * sample_mask).mean()
                for transpose, mask, size in ((False, sample_mask, student.shape[0]),
                                              (True, class_mask, student.shape[1])):
                    p_s, p_t = F.softmax(student / tau, 1), F.softmax(teacher / tau, 1)
                    with full_precision(p_s):
                        gap = (p_t.T @ p_t - p_s.T @ p_s) if transpose else (p_t @ p_t.T - p_s @ p_s.T)
                    rows = gap.square().sum(1) / size
                    if transpose:
                        klass = klass + (rows * mask).sum()
                    else:
                        batch = batch + (rows * mask).sum()
        return instance, batch, klass


class OpCounter(TorchDispatchMode):
    """Counts ATen operator calls (views and copies included)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Callable[..., Any], types: Sequence[type],
                           args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


CONFIGS = {
    "KD, cached teacher": (KDLoss, "cache"),
    "MLKD stop 21: loss loop, live teacher x2": (LoopMLKD, "live"),
    "MLKD: batched loss, live teacher x2": (MLKDLoss, "live"),
    "MLKD: batched loss, weak view cached": (MLKDLoss, "cache"),
}


def make_step(distiller: Distiller, optimizer: torch.optim.Optimizer, amp: str,
              device: torch.device) -> Callable[[Any, Tensor, Tensor | None], None]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step(images: Any, targets: Tensor, cached: Tensor | None) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            _, terms = distiller(images, targets, teacher_logits=cached, epoch=30)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()

    return step


def loss_only(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[float, int]]:
    """(median us, ATen calls) of the two MLKD losses' forward + backward on fixed logits,
    one intra-op thread, interleaved."""
    gen = torch.Generator().manual_seed(1)
    sw, ss, tw, ts = (3 * torch.randn(args.batch_size, 100, generator=gen) for _ in range(4))
    y = torch.randint(0, 100, (args.batch_size,), generator=gen)
    sw, ss, tw, ts, y = (v.to(device) for v in (sw, ss, tw, ts, y))
    sw.requires_grad_(True), ss.requires_grad_(True)
    losses = {"loop (stop 21)": LoopMLKD(validate=False), "batched": MLKDLoss(validate=False)}

    def once(loss: MLKDLoss) -> None:
        sum(loss(sw, tw, y, student_logits_strong=ss, teacher_logits_strong=ts).values()).backward()
        sw.grad = ss.grad = None

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {k: [] for k in losses}
    for rep in range(args.loss_reps + 5):
        for label, loss in losses.items():
            sync(device)
            start = time.perf_counter()
            once(loss)
            sync(device)
            if rep >= 5:
                times[label].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    out = {}
    for label, loss in losses.items():
        with OpCounter() as counter:
            once(loss)
        out[label] = (1e6 * median(times[label]), counter.calls)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds (the first is warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--loss-reps", type=int, default=100, help="loss-only timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    teacher = create_model("resnet32x4", num_classes=100).to(device).eval()
    pool = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 100, (512,), device=device)
    weak_view, strong_view = BatchAugment("cifar", train=True), StrongBatchAugment("cifar")
    views = CropFlipViews.from_preset("cifar")
    if views is None:
        raise SystemExit("preset cifar has no finite crop/flip view space")
    table = ViewLogitCache(torch.randn(len(pool), len(views), 100, device=device).half(), views)
    gen = torch.Generator().manual_seed(args.seed)

    steps, counts = {}, {}
    for label, (loss_cls, _) in CONFIGS.items():
        torch.manual_seed(args.seed)  # every student starts from the same weights
        student = create_model("resnet8x4", num_classes=100).to(device)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        distiller = Distiller(student, loss_cls(validate=False), teacher).train()
        steps[label] = make_step(distiller, optimizer, args.amp, device)

    def batch(label: str) -> tuple[Any, Tensor, tuple[Tensor, dict[str, Tensor]]]:
        index = torch.randint(0, len(pool), (args.batch_size,), generator=gen)
        params = weak_view.sample(args.batch_size, gen)
        pixels = pool[index.to(device)]
        weak = weak_view.apply(pixels, params)
        images = weak if CONFIGS[label][0] is KDLoss else (weak, strong_view(pixels, gen))
        return images, targets[index.to(device)], (index, params)

    times: dict[str, list[float]] = {label: [] for label in CONFIGS}
    per_round: dict[str, list[float]] = {label: [] for label in CONFIGS}
    order, rng = list(CONFIGS), random.Random(args.seed)
    for rnd in range(args.rounds):
        rng.shuffle(order)
        for label in order:
            took = []
            for _ in range(args.steps):
                images, y, (index, params) = batch(label)
                sync(device)
                start = time.perf_counter()
                cached = table.lookup(index, params, device) if CONFIGS[label][1] == "cache" else None
                steps[label](images, y, cached)
                sync(device)
                took.append(time.perf_counter() - start)
            if rnd > 0:
                times[label] += took
                per_round[label].append(median(took))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for label in CONFIGS:
        images, y, (index, params) = batch(label)
        with OpCounter() as counter:
            cached = table.lookup(index, params, device) if CONFIGS[label][1] == "cache" else None
            steps[label](images, y, cached)
        counts[label] = counter.calls

    base = "MLKD stop 21: loss loop, live teacher x2"
    lines = header("MLKD training step: loss loop vs batched loss, live vs cached weak view",
                   __file__, device)
    lines += [
        (f"ResNet32x4 -> ResNet8x4, batch {args.batch_size} (x2 views for MLKD), 100 classes, "
         f"32x32, amp={args.amp}; one step = cache lookup (where cached) + teacher forward(s) + "
         "student fwd/bwd on each view + loss + SGD; views made before the clock starts. "
         f"Median over {(args.rounds - 1) * args.steps} steps per configuration (shuffled "
         "rounds, first dropped); paired = median over rounds of this round's median / the "
         "stop-21 MLKD step's."),
        "",
        "| configuration | step (ms) | paired vs stop-21 MLKD | ATen calls per step |",
        "|---|---:|---:|---:|",
    ]
    for label in CONFIGS:
        paired = median([a / b for a, b in zip(per_round[label], per_round[base])])
        lines.append(f"| {label} | {1e3 * median(times[label]):.1f} | {paired:.3f} | "
                     f"{counts[label]} |")
    lines.append("")
    alone = loss_only(args, device)
    lines += [
        (f"The MLKD loss alone (paper variant, 5 temperatures, forward + backward on fixed "
         f"{args.batch_size} x 100 logits of both views, one intra-op thread, median of "
         f"{args.loss_reps} interleaved calls):"),
        "",
        "| loss | fwd+bwd (us) | ATen calls |",
        "|---|---:|---:|",
    ]
    for label, (us, calls) in alone.items():
        lines.append(f"| {label} | {us:.0f} | {calls} |")
    loop_us, loop_calls = alone["loop (stop 21)"]
    new_us, new_calls = alone["batched"]
    lines += ["", (f"- batched vs loop: {loop_us / new_us:.1f}x faster, "
                   f"{loop_calls / new_calls:.1f}x fewer ATen calls (tests/test_losses_mlkd.py "
                   "checks the values against NumPy).")]
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
