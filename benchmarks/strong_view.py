"""MLKD's (weak, strong) input pairs per second: per-image transforms vs the batched fast path.

On the device, MLKD ran at 1,620 img/s against KD's 7,700 (docs/results/short_tier_progress.md,
session 2): its strong view (RandAugment + Cutout) was drawn per image in DataLoader workers.
This times, on the same decoded 32x32 Tiny-ImageNet images (../shared/data subset, or --root),
side by side and interleaved (best of --repeats):

  (a) per image: build_paired_transforms(preset) on each PIL image, as the DataLoader path
      does in its workers (0 workers here: the rate of one worker process);
  (b) the fast path: GPUBatchLoader(views=2), both views made batch-wise on --device;
  (c) the fast path with one view (KD's input), for scale.

    python benchmarks/strong_view.py --out benchmarks/results/strong_view.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from figkd import data
from figkd.data.paired import build_paired_transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed_common import emit, header
from input_pipeline import find_root


def per_image_pairs(cache: data.TensorImageCache, preset: str, batch: int,
                    generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (weak, strong) views made image by image from PIL images (path (a))."""
    pair = build_paired_transforms(preset)
    pictures = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in cache.images]
    while True:
        order = torch.randperm(len(pictures), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            views = [pair(pictures[int(i)]) for i in order[start : start + batch]]
            yield torch.stack([w for w, _ in views]), torch.stack([s for _, s in views])


def rate(
    batches: Iterator[tuple[Any, ...]], images: int, batch: int, device: torch.device
) -> float:
    """Images per second over ``images`` images, after one warm-up batch."""
    next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, seen = time.perf_counter(), 0
    while seen < images:
        next(batches)
        seen += batch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def endless(loader: data.GPUBatchLoader) -> Iterator[tuple[Any, ...]]:
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="Tiny-ImageNet folder (default: ../shared/data subset)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=3200, help="images timed, path (a)")
    parser.add_argument("--fast-images", type=int, default=32000, help="images timed, (b) (c)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: one DataLoader worker's share)")
    parser.add_argument("--out", help="also write the report (Markdown) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = "tiny-imagenet-32"
    root = find_root(args.root)
    cache = data.build_uint8_cache("tiny-imagenet", root=root, split="train", size=32)
    generator = torch.Generator().manual_seed(0)
    paths = {
        "(a) per image, PairedViews (PIL), 1 process": lambda: (
            per_image_pairs(cache, preset, args.batch_size, generator), args.images),
        "(b) GPUBatchLoader(views=2), weak + strong": lambda: (
            endless(data.GPUBatchLoader(cache, args.batch_size, preset, device=device,
                                        views=2)), args.fast_images),
        "(c) GPUBatchLoader, weak view only (KD)": lambda: (
            endless(data.GPUBatchLoader(cache, args.batch_size, preset, device=device)),
            args.fast_images),
    }
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, make in paths.items():
            batches, images = make()
            runs[name].append(rate(batches, images, args.batch_size, device))
    lines = header("MLKD input pairs: per-image strong view vs the batched fast path",
                   __file__, device)
    lines += [
        f"- data: {root}, train split decoded once to uint8 at 32x32 ({len(cache)} images), "
        f"preset {preset}, batch {args.batch_size}, torch threads {args.threads}; img/s = best "
        f"of {args.repeats} interleaved runs",
        "",
        "| path | img/s (pairs for a, b) | vs (a) | runs |",
        "|---|---:|---:|---|",
    ]
    base = max(runs["(a) per image, PairedViews (PIL), 1 process"])
    for name, values in runs.items():
        best = max(values)
        shown = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {name} | {best:,.0f} | {best / base:.1f}x | {shown} |")
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
