"""End-to-end images/s of a distillation epoch: a plain PyTorch loop vs figkd's fast configuration.

ResNet32x4 -> ResNet8x4 with KD (T=4), batch 64, SGD (0.05, momentum 0.9, wd 5e-4), on a
class-balanced subset of the real Tiny-ImageNet-100 training images (../shared/data)
resized to 32x32 and augmented with RandomCrop(32, padding=4) + flip:

  (a) plain loop, the common style, written here: torchvision ImageFolder + PIL
      transforms (Resize, RandomCrop, flip, ToTensor, Normalize) in a DataLoader with
      --workers processes, live teacher, fp32;
  (b) figkd: decode-once uint8 cache + batch augmentation (GPUBatchLoader), the
      teacher-logit cache (teacher.cache, fp16 table over the 162 crop/flip views)
      and the student-step switches given by --student (channels_last, bf16, compile).

Also timed for attribution: (b0) the fast data path with the live teacher.  Epochs of
(a), (b0) and (b) alternate in rounds; each reports the median images/s.  The one-off
costs (JPEG decode into the uint8 cache, teacher-cache build) are reported separately,
with the number of runs after which the cache has paid for itself.  A student-step
table (KD with cached logits, no data) measures each switch on its own, with the loss
after a few steps beside fp32 eager's (same init, same batches) as the accuracy check.

    python benchmarks/throughput.py --out benchmarks/results/throughput.md
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import torch
import torchvision
import torchvision.transforms as T
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speed_common import REPO, emit, header, median

from figkd import data
from figkd.data.cache import decode_to_uint8
from figkd.distiller import Distiller
from figkd.engine.teacher_cache import CropFlipViews, ViewLogitCache, used_views
from figkd.losses import build_loss
from figkd.models import create_model

PRESET = "tiny-imagenet-32"


def find_root() -> Path:
    shared = REPO.parent / "shared" / "data"
    if (shared / "tiny-imagenet-100a" / "wnids.txt").is_file():
        return shared / "tiny-imagenet-100a"
    if (shared / "tiny-imagenet-100a.tar").is_file():
        return data.extract_tiny_imagenet_tar(shared / "tiny-imagenet-100a.tar", REPO / ".cache")
    found = data.resolve_root("tiny-imagenet")
    if found is None:  # only datasets that need no files resolve to None
        raise SystemExit("tiny-imagenet resolved to no dataset folder")
    return found


def balanced(targets: list[int], per_class: int) -> list[int]:
    seen: dict[int, int] = defaultdict(int)
    keep = []
    for i, t in enumerate(targets):
        if seen[t] < per_class:
            seen[t] += 1
            keep.append(i)
    return keep


def models(
    seed: int, fmt: torch.memory_format = torch.preserve_format
) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher = create_model("resnet32x4", num_classes=100).to(memory_format=fmt).eval()
    teacher.requires_grad_(False)
    torch.manual_seed(seed + 1)
    student = create_model("resnet8x4", num_classes=100).to(memory_format=fmt)
    return teacher, student


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


# --------------------------------------------------------------------------- (a) plain loop


def plain_epoch(loader: Iterable[tuple[Tensor, Tensor]], teacher: torch.nn.Module,
                student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                kd: torch.nn.Module) -> tuple[int, float]:
    """The usual loop: DataLoader batches, live teacher, fp32 student step."""
    student.train()
    seen, start = 0, time.perf_counter()
    for images, targets in loader:
        with torch.no_grad():
            t_logits = teacher(images)
        s_logits = student(images)
        loss = sum(kd(s_logits, t_logits, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(targets)
    return seen, time.perf_counter() - start


# --------------------------------------------------------------------------- (b) figkd


def figkd_epoch(loader: data.GPUBatchLoader, labels: Tensor, distiller: Distiller,
                optimizer: torch.optim.Optimizer, table: ViewLogitCache | None, epoch: int,
                amp: str, fmt: torch.memory_format) -> tuple[int, float]:
    """The trainer's step on the fast path; ``table`` None means the live teacher.

    ``loader`` is built over a cache whose targets are the sample indices, so it yields
    ``(images, index, params)``; ``labels[index]`` are the class labels."""
    distiller.train()
    loader.set_epoch(epoch)
    loader.return_params = True
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16"
                else torch.autocast("cpu", enabled=False))
    seen, start = 0, time.perf_counter()
    for images, index, params in loader:
        targets = labels[index]
        images = images.contiguous(memory_format=fmt)
        cached = table.lookup(index, params) if table is not None else None
        with autocast:
            _, terms = distiller(images, targets, teacher_logits=cached)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(targets)
    took = time.perf_counter() - start
    if not torch.isfinite(loss):  # e.g. a cache entry that was never filled (NaN)
        raise FloatingPointError(f"non-finite loss {float(loss)} in a figkd epoch")
    return seen, took


def student_switches(args: argparse.Namespace, pool: Tensor, targets: Tensor,
                     table: ViewLogitCache, views: CropFlipViews) -> list[str]:
    """Student step alone (KD, cached logits) under each switch, with an accuracy check."""
    settings = [("fp32 eager", "none", False, False), ("channels_last", "none", True, False),
                ("bf16 autocast", "bf16", False, False),
                ("bf16 + channels_last", "bf16", True, False)]
    if args.compile:
        settings += [("torch.compile", "none", False, True),
                     ("torch.compile + channels_last", "none", True, True)]
    gen = torch.Generator().manual_seed(0)
    augment = data.BatchAugment(PRESET, train=True)
    batches = []
    for _ in range(args.switch_steps):
        index = torch.randint(0, len(pool), (args.batch_size,), generator=gen)
        params = augment.sample(args.batch_size, gen)
        batches.append((augment.apply(pool[index], params), targets[index],
                        table.lookup(index, params)))
    kd = build_loss("kd")
    rows, results = [], {}
    steps = {}
    for name, amp, cl, comp in settings:
        fmt = torch.channels_last if cl else torch.preserve_format
        torch.manual_seed(1)
        student = create_model("resnet8x4", num_classes=100).to(memory_format=fmt)
        opt = sgd(student)
        # torch.compile's stubs return a callable; on a Module it returns a Module
        run = cast(torch.nn.Module, torch.compile(student)) if comp else student
        steps[name] = (run, opt, amp, fmt)
    times: dict[str, list[float]] = defaultdict(list)
    losses: dict[str, list[float]] = defaultdict(list)
    compile_s: dict[str, float] = {}
    order = [s[0] for s in settings]
    for rnd in range(args.switch_rounds + 1):  # round 0: warm-up (compiles), losses recorded
        random.Random(rnd).shuffle(order)
        for name in order:
            run, opt, amp, fmt = steps[name]
            batch_list = batches if rnd == 0 else batches[: args.switch_timed]
            for x, y, t in batch_list:
                start = time.perf_counter()
                x = x.contiguous(memory_format=fmt)
                ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16"
                       else torch.autocast("cpu", enabled=False))
                with ctx:
                    loss = sum(kd(run(x), t, y).values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                took = time.perf_counter() - start
                if rnd == 0:
                    losses[name].append(float(loss.detach()))
                    compile_s[name] = compile_s.get(name, 0.0) + took
                else:
                    times[name].append(took)
    base = losses["fp32 eager"]
    base_rate = args.batch_size / median(times["fp32 eager"])
    rows.append("| student step (KD, cached logits) | img/s (median) | vs fp32 eager | "
                f"loss after {len(base)} steps (fp32 eager {base[-1]:.5f}) | max rel. loss diff |")
    rows.append("|---|---:|---:|---:|---:|")
    for name in steps:
        rate = args.batch_size / median(times[name])
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses[name], base))
        rows.append(f"| {name} | {rate:.1f} | {rate / base_rate:.2f}x | {losses[name][-1]:.5f} | "
                    f"{diff:.1e} |")
        results[name] = rate
    warm = {k: v for k, v in compile_s.items() if "compile" in k}
    if warm:
        rows.append("")
        rows.append("- first-round time incl. compilation (s): " +
                    ", ".join(f"{k} {v:.0f}" for k, v in warm.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=20, help="images per class (100 classes)")
    parser.add_argument("--rounds", type=int, default=2, help="epochs of each pipeline")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="(a)'s DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--student", default="fp32",
                        choices=["fp32", "channels_last", "bf16", "bf16+channels_last",
                                 "compile", "compile+channels_last"],
                        help="(b)'s student-step switches")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--switch-steps", type=int, default=6, help="steps checked per switch")
    parser.add_argument("--switch-timed", type=int, default=3, help="steps timed per round")
    parser.add_argument("--switch-rounds", type=int, default=3)
    parser.add_argument("--skip-switches", action="store_true")
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    root = find_root()
    spec = data.get_preset(PRESET)

    # ---- the subset, once as files for (a) and once decoded for (b)
    folder = torchvision.datasets.ImageFolder(str(root / "train"))
    keep = balanced(folder.targets, args.per_class)
    plain_tf = T.Compose([T.Resize((32, 32)), T.RandomCrop(32, padding=4),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    folder.transform = plain_tf
    plain_set = torch.utils.data.Subset(folder, keep)
    figkd_set = data.load_dataset("tiny-imagenet", root=root, split="train")
    keep_f = balanced(list(figkd_set.targets), args.per_class)
    start = time.perf_counter()
    images = decode_to_uint8(data.DatasetSubset(figkd_set, keep_f, "train"), size=32,
                             num_workers=args.workers)
    decode_s = time.perf_counter() - start
    cache = data.TensorImageCache(images, torch.arange(len(images)), list(figkd_set.classes))
    labels = torch.as_tensor([figkd_set.targets[i] for i in keep_f])
    n = len(images)

    # ---- models: identical initial weights for every pipeline
    teacher, _ = models(0)
    kd = build_loss("kd")
    fmt = torch.channels_last if "channels_last" in args.student else torch.preserve_format
    amp = "bf16" if "bf16" in args.student else "none"

    loader = data.GPUBatchLoader(cache, args.batch_size, PRESET, train=True, device=device)
    views = CropFlipViews.from_preset(PRESET)
    if views is None:
        raise SystemExit(f"preset {PRESET} has no finite crop/flip view space")

    # ---- teacher-cache build: the views the timed epochs draw ("used"), timed
    epochs = list(range(1, args.rounds + 1))
    needed = used_views(loader, views, n, epochs)
    probe = teacher(data.BatchAugment(PRESET, False).apply(images[:1], {}))
    table = ViewLogitCache.empty(n, probe.shape[1], views)
    start = time.perf_counter()
    built = table.fill(teacher, images, PRESET, needed, batch_size=256)
    build_s = time.perf_counter() - start
    build_rate = built / build_s

    # ---- rounds: (a), (b0), (b) alternate; each a full epoch
    runs: dict[str, list[float]] = defaultdict(list)
    _, plain_student = models(0)
    plain_opt = sgd(plain_student)
    _, live_student = models(0)
    live = Distiller(live_student, build_loss("kd"), teacher)
    live_opt = sgd(live_student)
    _, fast_student = models(0, fmt)
    fast_teacher = copy.deepcopy(teacher).to(memory_format=fmt)
    # torch.compile's stubs return a callable; on a Module it returns a Module
    compiled = (cast(torch.nn.Module, torch.compile(fast_student)) if "compile" in args.student
                else fast_student)
    fast = Distiller(compiled, build_loss("kd"), fast_teacher)
    fast_opt = sgd(fast_student)
    if "compile" in args.student:  # compile outside the timed epochs (one-off, reported)
        start = time.perf_counter()
        warm = data.GPUBatchLoader(cache, args.batch_size, PRESET, train=True, device=device)
        warm.return_params = True
        x, index, params = next(iter(warm))
        cached = table_full_for_switches(table, needed).lookup(index, params)
        terms = fast(x.contiguous(memory_format=fmt), labels[index], teacher_logits=cached)[1]
        sum(terms.values()).backward()
        fast_opt.zero_grad(set_to_none=True)
        compile_s = time.perf_counter() - start
    for rnd, epoch in enumerate(epochs):
        g = torch.Generator().manual_seed(epoch)
        plain_loader = torch.utils.data.DataLoader(
            plain_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
            num_workers=args.workers, generator=g, persistent_workers=False)
        jobs = [
            ("a", lambda: plain_epoch(plain_loader, teacher, plain_student, plain_opt, kd)),
            ("b0", lambda: figkd_epoch(loader, labels, live, live_opt, None, epoch, "none",
                                       torch.preserve_format)),
            ("b", lambda: figkd_epoch(loader, labels, fast, fast_opt, table, epoch, amp, fmt)),
        ]
        random.Random(rnd).shuffle(jobs)
        for key, job in jobs:
            seen, took = job()
            runs[key].append(seen / took)
            print(f"round {rnd + 1}: {key} {seen / took:.1f} img/s", file=sys.stderr, flush=True)

    a, b0, b = (median(runs[k]) for k in ("a", "b0", "b"))
    epoch_imgs = len(loader) * args.batch_size
    lines = header("End-to-end distillation throughput: plain PyTorch loop vs figkd", __file__,
                   device)
    lines += [
        f"ResNet32x4 -> ResNet8x4, KD (T=4), batch {args.batch_size}, SGD; {n} real "
        f"Tiny-ImageNet-100 training images ({args.per_class} per class, {root.name}) resized "
        f"to 32x32, RandomCrop(32, pad 4) + flip; {epoch_imgs} images per epoch (drop_last). "
        f"Median of {args.rounds} interleaved epochs per pipeline. Randomly initialised "
        "teacher (speed does not depend on its weights). No GPU in this session: CPU only.",
        "",
        "| pipeline | img/s | vs (a) |",
        "|---|---:|---:|",
        f"| (a) plain loop: ImageFolder + PIL transforms, DataLoader ({args.workers} workers), "
        f"live teacher, fp32 | {a:.1f} | 1.00x |",
        f"| (b0) figkd fast data path (uint8 cache + batch augmentation), live teacher, fp32 | "
        f"{b0:.1f} | {b0 / a:.2f}x |",
        f"| (b) figkd fast data path + teacher-logit cache, student {args.student} | {b:.1f} | "
        f"**{b / a:.2f}x** |",
        "",
        f"**(b)/(a) = {b / a:.2f}** (target >= 2.3).",
        "",
        "One-off costs (amortised over methods, students and seeds):",
        "",
        *([f"- torch.compile of the student step: {compile_s:.0f} s (first call, outside the "
           "timed epochs; once per process)"] if "compile" in args.student else []),
        f"- JPEG decode + resize into the uint8 cache: {decode_s:.1f} s for {n} images "
        "(once per dataset and size; (a) pays the decode every epoch).",
        f"- teacher cache, views these {args.rounds} epochs draw (teacher.cache_views=used): "
        f"{built} teacher forwards in {build_s:.1f} s ({build_rate:.0f} img/s at batch 256, "
        "no autograd).",
    ]
    # break-even: a run of E epochs saves E * (epoch time live - epoch time cached)
    saved_per_epoch = epoch_imgs / b0 - epoch_imgs / b
    if saved_per_epoch > 0:
        pay = build_s / saved_per_epoch
        lines.append(
            f"- an epoch with the cache takes {saved_per_epoch:.1f} s less than (b0); the build "
            f"pays for itself after {pay:.2f} cached epochs, i.e. after "
            f"{math.ceil(pay / args.rounds)} run(s) of this length reusing it (other methods, "
            "students; the used-views table is per seed)")
        all_s = n * len(views) / build_rate
        lines.append(
            f"- the full table (teacher.cache_views=all, {len(views)} views x {n} images) would "
            f"take {all_s / 60:.1f} min at that rate = {all_s / saved_per_epoch:.0f} epochs of "
            f"savings: it pays off within one 240-epoch run ({len(views)} < 240 teacher passes "
            "per image) and is then free for every further method, student and seed")
    lines += ["", "Per-epoch img/s runs: " + "; ".join(
        f"{k}: " + ", ".join(f"{v:.1f}" for v in vals) for k, vals in runs.items()), ""]
    print("\n".join(lines), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if not args.skip_switches:
        lines += ["## Student-step switches (CPU)", ""]
        lines += student_switches(args, images, labels, table_full_for_switches(table, needed),
                                  views)
    lines.append("")
    lines.append(f"- load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return emit(lines, args.out)


def table_full_for_switches(table: ViewLogitCache, needed: torch.Tensor) -> ViewLogitCache:
    """The switch table samples arbitrary views: fill unfilled entries with noise logits."""
    logits = table.logits.clone()
    missing = logits.isnan()
    logits[missing] = torch.randn(int(missing.sum())).half()
    return ViewLogitCache(logits, table.views)


if __name__ == "__main__":
    raise SystemExit(main())
