"""Mixed precision: the autocast that ``train.amp`` names.

One helper for the training step, evaluation and the teacher-logit cache builds, so cached
teacher logits are computed in the same precision as the live teacher's would be.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``amp`` in ("bf16", "fp16"); a no-op for "none"."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
