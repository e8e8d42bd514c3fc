"""Loss arithmetic in float32 even inside the trainer's autocast (``train.amp=bf16|fp16``).

Autocast runs ``matmul``, ``mm``, ``bmm``, ``einsum`` and convolutions in half precision
whatever their inputs' dtype, so upcasting the inputs is not enough.  Losses that compare
Gram matrices, distances or similarities subtract nearly equal numbers, and half
precision loses most of their digits: MLKD's batch term was 21 % off in bf16 late in
training and RKD's distance term 9x off at initialisation.  The official implementations
train in float32.  Learned connectors (convolutions of FitNet, OFD, ReviewKD, ...) keep
autocast: that is where AMP saves time, and their inputs are not cancellation-prone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def full_precision(like: Tensor) -> Iterator[None]:
    """Autocast off for ``like``'s device type for the ``with`` body (a no-op where the
    device type has no autocast, e.g. ``meta``)."""
    device_type = like.device.type
    if device_type not in ("cuda", "cpu", "xpu", "mps", "hpu"):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def as_float(x: Tensor) -> Tensor:
    """``x`` in at least float32 (features arrive in bf16/fp16 under AMP)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
