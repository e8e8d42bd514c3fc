"""Seeds, deterministic mode, and RNG state that survives a checkpoint.

Resume is exact because every source of randomness is either a pure function
of ``(seed, epoch)`` (data order, augmentation, worker seeds) or part of the
RNG state saved in ``last.pt`` (torch, CUDA, numpy, python).  States are stored
as tensors and plain lists so ``torch.load(weights_only=True)`` can read them.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool, warn_only: bool = False) -> None:
    """Deterministic kernels when ``enabled``; cuDNN autotuning otherwise.

    ``warn_only``: an op without a deterministic kernel warns rather than raising, for runs
    whose reproducibility is judged afterwards by their weights' SHA-256 (``figkd study
    --deterministic-teacher``) and that must not die mid-session on a kernel a short check
    did not reach.
    """
    if enabled:
        # cuBLAS needs this before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=enabled and warn_only)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and python in a DataLoader worker from torch's per-worker seed.

    torch derives each worker's seed from the loader's generator, which the
    trainer seeds per ``(seed, epoch, rank)``; numpy/python follow from it.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
