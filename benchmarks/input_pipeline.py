"""Images per second delivered to the model: per-image DataLoader vs the uint8 fast path.

Tiny-ImageNet (the 100-class subset in ../shared/data, or --root) at 32x32 and 64x64,
training augmentation on (presets tiny-imagenet-32 and tiny-imagenet-64), batch 64:

  (a) torch DataLoader over load_dataset(..., transform=build_transforms(preset)), i.e.
      JPEG decode + PIL transforms + ToTensor + Normalize per image, shuffled, with
      0 and with --workers worker processes;
  (b) GPUBatchLoader over build_uint8_cache(...): decode once, then gather + crop /
      rotate / flip + normalise on whole batches on --device.

If figkd.models is importable, a ResNet8x4 training step (forward, backward, SGD) at the
same size and batch is timed too, to show whether the input path would be the bottleneck.

    python benchmarks/input_pipeline.py --out benchmarks/results/input_pipeline.txt
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from figkd import data
from figkd.engine.run_dir import cpu_model

REPO = Path(__file__).resolve().parents[1]


def find_root(root: str | None) -> Path:
    if root:
        return Path(root)
    shared = REPO.parent / "shared" / "data"
    if (shared / "tiny-imagenet-100a" / "wnids.txt").is_file():
        return shared / "tiny-imagenet-100a"
    if (shared / "tiny-imagenet-100a.tar").is_file():
        return data.extract_tiny_imagenet_tar(shared / "tiny-imagenet-100a.tar", REPO / ".cache")
    found = data.resolve_root("tiny-imagenet")  # $FIGKD_DATA, ./data; raises with the layout
    if found is None:  # only datasets that need no files resolve to None
        raise SystemExit("tiny-imagenet resolved to no dataset folder")
    return found


def rate(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], images: int, warmup: int,
         device: torch.device) -> float:
    """Steady-state images/s: skip ``warmup`` batches, then time until ``images`` have arrived."""
    iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(batches)
    for _ in range(warmup):
        next(iterator)
    seen, start = 0, time.perf_counter()
    for x, y in iterator:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
        if seen >= images:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def step_rate(size: int, batch: int, steps: int, device: torch.device) -> float | None:
    try:
        from figkd.models import create_model
    except ImportError:
        return None
    model = create_model("resnet8x4", num_classes=100).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        torch.nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / min(times)  # best step, like the best-of-N input rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="Tiny-ImageNet folder (default: ../shared/data subset)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=6400, help="images timed per DataLoader run")
    parser.add_argument("--fast-images", type=int, default=50_000, help="images timed, fast path")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the 2nd run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="ResNet8x4 steps timed")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "figkd"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], choices=[32, 64])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best)")
    parser.add_argument("--rebuild", action="store_true", help="decode the cache again (time it)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    root = find_root(args.root)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    argv_shown = [os.path.relpath(__file__, REPO), *sys.argv[1:]]
    command = "python " + " ".join(shlex.quote(a) for a in argv_shown)
    now = datetime.datetime.now().astimezone()
    say(f"# figkd input pipeline benchmark, {now:%Y-%m-%d %H:%M %Z}")
    say(f"command: {command}")
    nproc = len(os.sched_getaffinity(0))
    say(f"machine: nproc={nproc}, cpu={cpu_model()}, torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}), device={device}, python {platform.python_version()}")
    say(f"data: {root} (Tiny-ImageNet, train split), batch {args.batch_size}, augmentation on "
        f"(presets tiny-imagenet-32 / -64); img/s = best of {args.repeats} interleaved runs")
    say(f"load average before the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
        "(the 2 cores are shared with other jobs; best-of-N filters their interference)")
    say()
    header = f"{'size':>5} | {'pipeline':<44} | {'img/s':>9} | {'vs best (a)':>11}"
    say(header)
    say("-" * len(header))
    notes = []
    for size in args.sizes:
        preset = f"tiny-imagenet-{size}"
        dataset = data.load_dataset("tiny-imagenet", root=root, split="train",
                                    transform=data.build_transforms(preset, train=True))
        start = time.perf_counter()
        cache = data.build_uint8_cache("tiny-imagenet", root=root, split="train",
                                       size=size if size != 64 else None, cache_dir=args.cache_dir,
                                       num_workers=args.workers, rebuild=args.rebuild)
        build = time.perf_counter() - start
        fast = data.GPUBatchLoader(cache, args.batch_size, preset, train=True, device=device,
                                   seed=0)
        fast_images = min(args.fast_images, (len(fast) - 3) * args.batch_size)
        # Interleave the runs and keep the best: the machine's cores are shared.
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for workers in sorted({0, args.workers}):
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                    drop_last=True, pin_memory=device.type == "cuda")
                runs.setdefault(f"a{workers}", []).append(rate(loader, args.images, 3, device))
                del loader
            runs.setdefault("b", []).append(rate(fast, fast_images, 3, device))
        top = {key: max(values) for key, values in runs.items()}
        best = max(v for k, v in top.items() if k != "b")
        for workers in sorted({0, args.workers}):
            value = top[f"a{workers}"]
            say(f"{size:>5} | {f'(a) DataLoader + PIL transforms, {workers} workers':<44} | "
                f"{value:>9,.0f} | {value / best:>10.2f}x")
        fast_rate = top["b"]
        say(f"{size:>5} | {'(b) uint8 cache + GPUBatchLoader (' + str(device) + ')':<44} | "
            f"{fast_rate:>9,.0f} | {fast_rate / best:>10.2f}x")
        step = step_rate(size, args.batch_size, args.steps, device)
        if step is None:
            notes.append(f"{size}px: figkd.models not importable; ResNet8x4 step not timed")
        else:
            say(f"{size:>5} | {'ResNet8x4 train step (fwd+bwd+SGD, best)':<44} | {step:>9,.1f} | "
                f"{'':>11}")
            notes.append(
                f"{size}px: the fast path takes {1e3 * args.batch_size / fast_rate:.2f} ms per "
                f"batch of {args.batch_size}, a ResNet8x4 step "
                f"{1e3 * args.batch_size / step:.0f} ms: input is "
                f"{100 * step / fast_rate:.2f} % of the step time "
                f"({'not the bottleneck' if fast_rate > step else 'BOTTLENECK'})")
        how = f"decoded with {args.workers} workers" if build > 3 else "loaded from disk"
        shown = "; ".join(
            f"{k}: " + ", ".join(f"{v:,.0f}" for v in vals) for k, vals in runs.items())
        notes.append(f"{size}px: cache {tuple(cache.images.shape)} uint8, "
                     f"{cache.images.numel() / 2**20:.0f} MiB, ready in {build:.1f} s ({how}); "
                     f"img/s runs: {shown}")
        say("-" * len(header))
    say()
    for note in notes:
        say(f"- {note}")
    say("- (a) includes JPEG decoding every epoch; (b) decodes once per dataset and size.")
    say(f"- load average after the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
