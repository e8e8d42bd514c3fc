"""``figkd demo``: a self-check on real logits that needs no files.

Until the training engine lands this is what ``make demo`` runs: it fits a
small linear teacher and a weaker student on scikit-learn's bundled digits,
prints the CE, KD and FiGKD loss terms on their real logits, and checks the
FiGKD detail loss against an independent PyWavelets computation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pywt
import torch

from figkd.cli import Command
from figkd.losses import build_loss
from figkd.wavelets import logit_grid_shape


def _fit_linear(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 10, dtype=x.dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def _reference_detail(student: np.ndarray, teacher: np.ndarray) -> float:
    """Detail loss from PyWavelets directly: mean squared band difference, summed over bands."""
    h, w = logit_grid_shape(student.shape[1])
    pad = ((0, 0), (0, h * w - student.shape[1]))
    _, s_bands = pywt.dwt2(np.pad(student, pad).reshape(-1, h, w), "haar", mode="zero")
    _, t_bands = pywt.dwt2(np.pad(teacher, pad).reshape(-1, h, w), "haar", mode="zero")
    return float(sum(((s - t) ** 2).mean() for s, t in zip(s_bands, t_bands)))


def run(args: argparse.Namespace) -> int:
    from sklearn.datasets import load_digits

    start = time.perf_counter()
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float64)
    y = torch.tensor(digits.target)
    teacher = _fit_linear(x, y, steps=300, seed=args.seed)
    student = _fit_linear(x, y, steps=10, seed=args.seed + 1)
    with torch.no_grad():
        t_logits, s_logits = teacher(x), student(x)
    accuracy = lambda logits: (logits.argmax(1) == y).double().mean().item()  # noqa: E731
    print(f"digits: {len(y)} images, 10 classes -> logit map {logit_grid_shape(10)}")
    print(f"teacher (300 SGD steps) train accuracy {accuracy(t_logits):.3f}; "
          f"student (10 steps) {accuracy(s_logits):.3f}")
    for name in ("ce", "kd", "figkd"):
        terms = build_loss(name)(s_logits, t_logits, y)
        shown = ", ".join(f"{k}={v.item():.5f}" for k, v in terms.items())
        print(f"{name:>6}: {shown}")
    ours = build_loss("figkd").detail_loss(s_logits, t_logits).item()
    reference = _reference_detail(s_logits.numpy(), t_logits.numpy())
    ok = abs(ours - reference) <= 1e-9 * max(1.0, abs(reference))
    print(f"FiGKD detail loss {ours:.10f} vs PyWavelets {reference:.10f}: {'OK' if ok else 'MISMATCH'}")
    print(f"self-check finished in {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed for the two linear models")


COMMAND = Command(
    name="demo",
    help="self-check: CE, KD and FiGKD losses on real logits (no files needed)",
    configure=configure,
    run=run,
    description=__doc__,
)
