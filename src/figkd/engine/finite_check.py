"""The per-step NaN/inf check on the loss, read one step late so it never stalls the GPU.

Reading a GPU value on the host (``.item()``) waits for every kernel queued before it.  Done
each step, that wait makes a step cost the host's launch time *plus* the GPU's compute time
instead of the larger of the two, which is what a launch-bound model such as the study's
resnet32x4 teacher at batch 64 pays.  So each step's flag is copied to pinned host memory
without blocking, an event marks the copy, and the flag is read during the next step, after
that step's kernels are queued.  On a CPU the flag is read at once (nothing runs ahead).

What a late read costs: a bad step's optimizer update (and the next step's) has been applied
to the weights in memory when the run stops.  Checkpoints are written only after the epoch's
last check (:meth:`DeferredFiniteCheck.flush`), so ``last.pt`` never holds a NaN update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from figkd.engine import distributed as dist_utils


@dataclass(frozen=True)
class NonFiniteStep:
    """Where the loss was first non-finite, and what was (named after the terms)."""

    named: str
    epoch: int
    step: int
    global_step: int


@dataclass
class _Pending:
    flags: Tensor  # (2,) float on the host once ``done`` fired: [this rank ok, every rank ok]
    done: torch.cuda.Event | None
    total: Tensor
    terms: dict[str, Tensor]
    epoch: int
    step: int
    global_step: int


class DeferredFiniteCheck:
    """Queue one step's check with :meth:`push`, which resolves the step before it."""

    def __init__(self, device: torch.device, ctx: dist_utils.DistContext) -> None:
        self.ctx = ctx
        self._pending: _Pending | None = None
        cuda = device.type == "cuda"
        # two host slots and their events: one written for step k+1 while step k's is read
        self._slots = [torch.zeros(2, pin_memory=True) for _ in range(2)] if cuda else []
        self._events = [torch.cuda.Event() for _ in range(2)] if cuda else []
        self._next = 0

    def push(
        self, total: Tensor, terms: dict[str, Tensor], epoch: int, step: int, global_step: int
    ) -> NonFiniteStep | None:
        """Queue this step's flag; return the previous step's failure (None: it was finite)."""
        local_ok = torch.isfinite(total.detach()).all().reshape(1).float()
        if self.ctx.enabled:  # every rank must stop at the same step, or the others hang
            all_ok = local_ok.clone()
            dist_utils.all_reduce_sum(all_ok, self.ctx)
            flags = torch.cat([local_ok, (all_ok >= self.ctx.world_size).float()])
        else:
            flags = local_ok.expand(2)  # one process: this rank is every rank (no kernel)
        done = None
        if self._slots:
            slot, done = self._slots[self._next], self._events[self._next]
            self._next ^= 1
            slot.copy_(flags, non_blocking=True)
            done.record()
            flags = slot
        # the tensors themselves are kept (read only on a failure): no per-step detach calls
        queued = _Pending(flags, done, total, dict(terms), epoch, step, global_step)
        previous, self._pending = self._pending, queued
        return self._resolve(previous) if previous is not None else None

    def flush(self) -> NonFiniteStep | None:
        """Resolve the last queued step (before anything is written or evaluated)."""
        pending, self._pending = self._pending, None
        return self._resolve(pending) if pending is not None else None

    @staticmethod
    def _resolve(pending: _Pending) -> NonFiniteStep | None:
        if pending.done is not None:
            pending.done.synchronize()  # waits for that step's copy only, not for the queue
        local_ok, all_ok = (bool(v) for v in pending.flags.tolist())
        if all_ok:
            return None
        bad = [
            f"{name}={value.item()}"
            for name, value in pending.terms.items()
            if not bool(torch.isfinite(value).all())
        ]
        if bad:
            named = "term " + ", ".join(bad)
        elif local_ok:
            named = "on another rank (its log names the term)"
        else:
            named = f"total={pending.total.item()} (every term is finite; their sum overflowed)"
        return NonFiniteStep(named, pending.epoch, pending.step, pending.global_step)
