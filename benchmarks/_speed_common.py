"""Shared bits of the speed benchmarks: machine header, the timed distillation step."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from figkd.engine.run_dir import cpu_model

REPO = Path(__file__).resolve().parents[1]


def header(title: str, script: str, device: torch.device) -> list[str]:
    argv = [os.path.relpath(script, REPO), *sys.argv[1:]]
    now = datetime.datetime.now(datetime.timezone.utc)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return [
        f"# {title}",
        "",
        f"- command: `python {' '.join(shlex.quote(a) for a in argv)}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores "
        f"(torch threads {torch.get_num_threads()}), GPU: {gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
        "(the cores are shared with other jobs)",
        "",
    ]


def emit(lines: list[str], out: str | None) -> int:
    """Print the report and, with ``out``, write it there too (the committed result file)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    student: nn.Module,
    teacher: nn.Module | None,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    amp: str = "none",
    device: torch.device,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """One training step as the trainer runs it: teacher (no grad, unless logits are
    given), student, loss terms, backward, SGD.  Returns the detached total loss."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    needs_teacher = getattr(loss, "needs_teacher", True)

    def step(x: torch.Tensor, y: torch.Tensor, cached: torch.Tensor | None) -> torch.Tensor:
        ctx = (torch.autocast(device.type, dtype=dtype) if dtype is not None
               else torch.autocast(device.type, enabled=False))
        with ctx:
            t = cached
            if t is None and needs_teacher:
                if teacher is None:
                    raise ValueError("this loss needs teacher logits: pass a teacher or the "
                                     "cached logits")
                with torch.no_grad():
                    t = teacher(x)
            s = student(x)
            terms = loss(s, t, y)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total.detach()

    return step


def ce_step_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)
