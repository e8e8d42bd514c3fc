"""Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in KD").

Each logit vector is z-scored before softening, z~ = (z - mean(z)) / (std(z) + eps),
so the student matches the *shape* of the teacher's logits rather than their
scale and offset -- a student with less capacity need not reproduce the
teacher's logit range.  std is the unbiased estimate (divides by C - 1) as in
the official code; eps = 1e-7.
"""

from __future__ import annotations

from torch import Tensor


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row of (B, C) logits over the classes."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)
