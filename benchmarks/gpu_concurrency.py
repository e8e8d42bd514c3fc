"""How many small-model training runs one GPU can carry, and what slows them (GPU only).

Issue 9's study trains 21 resnet8x4 students and a resnet32x4 teacher at batch 64, a size
that leaves an H200 mostly idle, so the study runs several processes at once.  This script
measures, side by side in one call, the training steps per second of:

* one process, with and without a host sync per step (the trainer's ``.item()`` NaN check
  before ``backward`` makes the CPU wait for every forward);
* N processes at once, without and with NVIDIA MPS (without MPS, kernels of different
  processes take turns on the GPU instead of running side by side);
* one process replaying the whole step as a CUDA graph (no per-kernel launch cost).

The data are random tensors already on the GPU: only the step is timed.  Every case runs in
fresh processes that start timing together, so the aggregate rate of N processes is
comparable with one's.  Results: one JSON line per case in ``--out``/concurrency.jsonl and a
table at the end (ratios against the single synced process, today's trainer).

    python benchmarks/gpu_concurrency.py --seconds 6 --out /tmp/conc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One process: warm up, wait for the shared start time, count steps for ``seconds``."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import torch.nn.functional as F

    from figkd.models import create_model

    torch.set_num_threads(2)  # the trainer's train.num_threads
    torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    model = create_model(args.model, num_classes=100).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last
    )
    targets = torch.randint(0, 100, (args.batch,), device=device)

    def eager_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), targets)
        if args.sync:  # the trainer's per-step finiteness check
            bool(torch.isfinite(loss).all().item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = eager_step
    if args.graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                eager_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                loss = F.cross_entropy(model(images).float(), targets)
            loss.backward()
            optimizer.step()
        step = graph.replay

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(20):
        step()
    synchronize()
    while time.time() < args.start_at:
        time.sleep(0.005)
    steps, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < args.seconds:
        step()
        steps += 1
        if steps % 25 == 0:
            synchronize()
    synchronize()
    elapsed = time.perf_counter() - begin
    print(json.dumps({"steps": steps, "seconds": elapsed}), flush=True)


def run_case(
    name: str,
    args: argparse.Namespace,
    *,
    model: str,
    procs: int,
    sync: bool,
    graph: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start ``procs`` workers that time the same window; returns the aggregate rate."""
    start_at = time.time() + args.startup
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--device",
        args.device,
        "--model",
        model,
        "--batch",
        str(args.batch),
        "--seconds",
        str(args.seconds),
        "--start-at",
        str(start_at),
    ]
    cmd += ["--sync"] if sync else []
    cmd += ["--graph"] if graph else []
    children = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for _ in range(procs)
    ]
    rates, errors = [], []
    for child in children:
        try:
            out, err = child.communicate(timeout=args.startup + args.seconds + 20)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            err += "\ntimed out"
        try:
            record = json.loads(out.strip().splitlines()[-1])
            rates.append(record["steps"] / record["seconds"])
        except (IndexError, ValueError, KeyError):
            errors.append(err.strip().splitlines()[-1] if err.strip() else f"rc {child.returncode}")
    result = {
        "case": name,
        "model": model,
        "procs": procs,
        "sync": sync,
        "graph": graph,
        "mps": bool(env),
        "steps_per_s": sum(rates),
        "per_proc": rates,
        "errors": errors,
    }
    with open(Path(args.out) / "concurrency.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(
        f"{name:<34} {sum(rates):8.1f} steps/s  ({len(rates)}/{procs} ok){' ' + errors[0] if errors else ''}",
        flush=True,
    )
    return result


def start_mps() -> dict[str, str] | None:
    """Start the MPS control daemon; ``None`` (and the daemon stopped) if a client cannot use it."""
    if shutil.which("nvidia-cuda-mps-control") is None:
        print("MPS: nvidia-cuda-mps-control not found", flush=True)
        return None
    env = {
        "CUDA_MPS_PIPE_DIRECTORY": "/tmp/figkd-mps/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/tmp/figkd-mps/log",
    }
    for folder in env.values():
        os.makedirs(folder, exist_ok=True)
    full = {**os.environ, **env}
    started = subprocess.run(
        ["nvidia-cuda-mps-control", "-d"], env=full, capture_output=True, text=True, check=False
    )
    probe = "import torch; print(torch.ones(1, device='cuda').add(1).item())"
    try:
        ok = (
            subprocess.run(
                [sys.executable, "-c", probe],
                env=full,
                capture_output=True,
                text=True,
                timeout=40,
                check=False,
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        ok = False
    if not ok:
        print(
            f"MPS: not usable (daemon rc {started.returncode} {started.stderr.strip()[:200]})",
            flush=True,
        )
        stop_mps(env)
        return None
    print("MPS: on", flush=True)
    return env


def stop_mps(env: dict[str, str]) -> None:
    subprocess.run(
        ["nvidia-cuda-mps-control"],
        input="quit\n",
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet8x4")
    parser.add_argument("--device", default="cuda", help="cpu only checks the harness")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--startup", type=float, default=9.0, help="seconds for workers to get ready"
    )
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--graph", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/concurrency")
    parser.add_argument("--many", type=int, default=12, help="the larger process count")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    student, teacher = "resnet8x4", "resnet32x4"
    base = run_case("r8x4 x1 sync (trainer today)", args, model=student, procs=1, sync=True)
    rows = [
        base,
        run_case("r8x4 x1 no sync", args, model=student, procs=1, sync=False),
        run_case("r8x4 x6 sync (study today)", args, model=student, procs=6, sync=True),
        run_case("r8x4 x6 no sync", args, model=student, procs=6, sync=False),
    ]
    env = start_mps() if args.device == "cuda" else None
    if env:
        rows += [
            run_case("MPS r8x4 x6 no sync", args, model=student, procs=6, sync=False, env=env),
            run_case(
                f"MPS r8x4 x{args.many} no sync",
                args,
                model=student,
                procs=args.many,
                sync=False,
                env=env,
            ),
            run_case(
                f"MPS r8x4 x{args.many} CUDA graph",
                args,
                model=student,
                procs=args.many,
                sync=False,
                graph=True,
                env=env,
            ),
        ]
        stop_mps(env)
    rows += [
        run_case(f"r8x4 x{args.many} no sync", args, model=student, procs=args.many, sync=False)
    ]
    if args.device == "cuda":
        rows += [
            run_case("r8x4 x1 CUDA graph", args, model=student, procs=1, sync=False, graph=True)
        ]
    rows += [
        run_case("r32x4 x1 sync", args, model=teacher, procs=1, sync=True),
        run_case("r32x4 x1 no sync", args, model=teacher, procs=1, sync=False),
    ]
    print("\n| case | steps/s (all processes) | vs r8x4 x1 sync |\n|---|---:|---:|")
    for row in rows:
        ratio = row["steps_per_s"] / base["steps_per_s"] if base["steps_per_s"] else float("nan")
        print(f"| {row['case']} | {row['steps_per_s']:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
