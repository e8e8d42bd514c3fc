"""Can this GPU retrain the study's teacher bit for bit?

The study's checkpoints live only in the checkout that ran it (weights are never committed),
and a later session may start in a new one (stop 23).  Finished students' text records would
still count there if the new session's retrained teacher had the same SHA-256 as the old one:
that needs a teacher training that is bit-reproducible on the same kind of GPU.  This trains
the teacher's model for a few steps on fixed random batches (bf16 autocast, channels_last,
SGD with momentum, as the runs do) twice under deterministic algorithms and once in the
default mode, and prints the weights' SHA-256s, the step times, and every operation that
warned it has no deterministic kernel (``warn_only``: a warning, not a stop).  The same
SHA-256 printed by a later session's GPU means the arithmetic is the same there too.
``short_tier.sh`` runs it before the study (seconds); it only reports.

    python tools/device/check_determinism.py [--device cuda] [--steps 30] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Trial:
    sha256: str
    ms_per_step: float
    warned: tuple[str, ...]  # first line of each distinct warning


def train(device: str, *, deterministic: bool, model_name: str = "resnet32x4", steps: int = 30,
          batch: int = 256, seed: int = 0) -> Trial:
    """Train ``steps`` steps from ``seed`` on fixed batches (the first untimed); the weights'
    SHA-256 and the time per timed step."""
    from figkd.engine.precision import autocast
    from figkd.engine.teacher_cache import state_dict_sha256
    from figkd.models import create_model

    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # the trainer's own switch
    try:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        targets = torch.randint(0, 100, (batch,), generator=generator)
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        torch.manual_seed(seed)
        model = create_model(model_name, num_classes=100).to(device)
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
        amp = "bf16" if device != "cpu" else "none"

        def step() -> None:
            with autocast(device, amp):
                loss = F.cross_entropy(model(images).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()  # untimed: cuDNN's algorithm choice and the momentum buffers happen here
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps - 1):
                step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]
    warned = tuple(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    return Trial(state_dict_sha256(model), 1000 * seconds / max(steps - 1, 1), warned)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet32x4")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("check_determinism: no CUDA device here; nothing to check")
        return 0
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    kwargs = {"model_name": args.model, "steps": args.steps, "batch": args.batch}
    first = train(args.device, deterministic=True, **kwargs)
    second = train(args.device, deterministic=True, **kwargs)
    default = train(args.device, deterministic=False, **kwargs)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    same = "equal" if first.sha256 == second.sha256 else "DIFFERENT"
    print(f"check_determinism: {args.model}, {args.steps} steps at batch {args.batch} on {where}, "
          f"torch {torch.__version__}")
    print(f"check_determinism: deterministic twice: {same} (sha256 {first.sha256[:16]}, "
          f"{second.sha256[:16]}); default mode: sha256 {default.sha256[:16]}; "
          f"{second.ms_per_step:.1f} ms a step deterministic (the second trial), "
          f"{default.ms_per_step:.1f} default")
    warned = sorted(set(first.warned) | set(second.warned))
    print("check_determinism: no deterministic kernel for: " + ("; ".join(warned) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
