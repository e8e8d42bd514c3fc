"""NumPy re-computations the loss tests compare against (float64, written from the formulas,
never calling figkd); shared so every test file checks against the same reference."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy, detached and on the CPU."""
    return x.detach().double().cpu().numpy()


def np_ce(logits: np.ndarray, y: np.ndarray) -> float:
    """Batch-mean cross-entropy of integer labels ``y``."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def np_bn_train(x: np.ndarray, bn: torch.nn.BatchNorm2d) -> np.ndarray:
    """Training-mode batch norm of an (N, C, H, W) map: batch statistics, biased variance."""
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    g, b = as_numpy(bn.weight).reshape(1, -1, 1, 1), as_numpy(bn.bias).reshape(1, -1, 1, 1)
    return (x - mu) / np.sqrt(var + bn.eps) * g + b


def np_conv1x1(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    """A 1x1 convolution as an einsum over channels (plus the bias, if any)."""
    out = np.einsum("oc,bchw->bohw", as_numpy(conv.weight)[:, :, 0, 0], x)
    if conv.bias is not None:
        out = out + as_numpy(conv.bias).reshape(1, -1, 1, 1)
    return out
