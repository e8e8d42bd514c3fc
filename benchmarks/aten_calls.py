"""Operations a training step issues, per model and batch size (why the study's teacher is host-bound).

On a GPU every ATen call costs the host a few microseconds to issue; a small model's step is
bound by that count, not by its arithmetic.  This counts, on the CPU, the top-level ATen calls
(those not issued by another ATen call) of one bf16-autocast, channels-last training step -
forward, cross-entropy, backward, SGD with momentum - after a warm-up step.  The count does not
depend on the batch size, while the work does: that ratio is what a bigger teacher batch buys.

    python benchmarks/aten_calls.py --out benchmarks/results/aten_calls.md
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from _speed_common import emit, header
from torch.profiler import ProfilerActivity, profile

from figkd.models import create_model


def count_calls(model_name: str, batch: int, classes: int = 100) -> tuple[int, int]:
    """(top-level, all) ATen calls of one training step."""
    model = create_model(model_name, num_classes=classes).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                                foreach=True)  # what a CUDA run uses by default
    images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, classes, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # momentum buffers exist from here on
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    calls = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in calls if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return len(top), len(calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8x4", "resnet32x4"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    lines = header("ATen calls per training step", __file__, torch.device("cpu"))
    what = (
        "One training step, bf16 autocast, channels_last, 32x32 inputs, 100 classes, "
        "cross-entropy, SGD (momentum 0.9, foreach), after one warm-up step; counted with "
        "`torch.profiler` on the CPU.  Top-level: calls not issued by another ATen call."
    )
    lines += [
        what,
        "",
        "| model | batch | top-level ATen calls | all ATen calls | top-level per image |",
        "|---|---:|---:|---:|---:|",
    ]
    counts = {}
    for name in args.models:
        for batch in args.batches:
            top, every = count_calls(name, batch)
            counts[name, batch] = top
            lines.append(f"| {name} | {batch} | {top:,} | {every:,} | {top / batch:.2f} |")
    if ("resnet8x4", 64) in counts and ("resnet32x4", 64) in counts:
        ratio = counts["resnet32x4", 64] / counts["resnet8x4", 64]
        lines += ["", f"- resnet32x4 / resnet8x4 at batch 64: {ratio:.2f}x the calls per step."]
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
