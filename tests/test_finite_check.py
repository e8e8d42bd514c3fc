"""The loss's NaN/inf check, read one step late (engine/finite_check.py).

The check exists so that a bad loss stops the run with a message naming where, and never
reaches a checkpoint.  Deferring it by a step must keep both promises: the failure named is
the *first* bad step (not the step that noticed it), the run stops one step later at most,
and a bad last step of an epoch is caught before that epoch is checkpointed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import digits_config
from torch import Tensor

from figkd.engine import Trainer
from figkd.engine import distributed as dist_utils
from figkd.engine.finite_check import DeferredFiniteCheck, NonFiniteStep
from figkd.engine.trainer import NonFiniteLossError
from figkd.losses import CELoss

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
NAN, INF = float("nan"), float("inf")


def _push(check: DeferredFiniteCheck, step: int, **terms: float) -> NonFiniteStep | None:
    values = {name: torch.tensor(value) for name, value in terms.items()}
    total = sum(values.values())
    assert isinstance(total, Tensor)  # at least one term
    return check.push(total, values, epoch=3, step=step, global_step=100 + step)


def test_a_bad_step_is_reported_by_the_next_push_with_its_own_position() -> None:
    check = DeferredFiniteCheck(CPU, dist_utils.DistContext())
    assert _push(check, 1, ce=1.0, kd=2.0) is None
    assert _push(check, 2, ce=1.0, kd=NAN) is None  # step 1 was fine; step 2 is still queued
    failure = _push(check, 3, ce=1.0, kd=2.0)
    assert failure == NonFiniteStep("term kd=nan", epoch=3, step=2, global_step=102)
    assert check.flush() is None  # step 3 was finite


def test_flush_reports_the_last_queued_step_and_then_nothing() -> None:
    check = DeferredFiniteCheck(CPU, dist_utils.DistContext())
    assert _push(check, 1, ce=1.0) is None
    assert _push(check, 2, ce=INF, kd=NAN) is None
    assert check.flush() == NonFiniteStep("term ce=inf, kd=nan", 3, 2, 102)
    assert check.flush() is None


def test_finite_terms_whose_sum_overflows_are_named_as_such() -> None:
    check = DeferredFiniteCheck(CPU, dist_utils.DistContext())
    _push(check, 1, a=3.0e38, b=3.0e38)  # float32: each finite, the sum inf
    failure = check.flush()
    assert failure is not None and failure.named == (
        "total=inf (every term is finite; their sum overflowed)"
    )


def test_a_bad_step_on_another_rank_stops_this_one_at_the_same_step(monkeypatch: Any) -> None:
    """Two ranks: this one finite, the other's flag 0, so the all-reduced sum is 1 of 2."""
    ctx = dist_utils.DistContext(rank=0, world_size=2)
    monkeypatch.setattr(type(ctx), "enabled", property(lambda self: True))
    reduced: list[float] = []

    def other_rank_bad(tensor: Tensor, ctx: Any) -> Tensor:
        reduced.append(float(tensor))
        return tensor  # + 0.0 from the other rank

    monkeypatch.setattr(dist_utils, "all_reduce_sum", other_rank_bad)
    check = DeferredFiniteCheck(CPU, ctx)
    _push(check, 7, ce=1.0)
    assert reduced == [1.0]
    assert check.flush() == NonFiniteStep("on another rank (its log names the term)", 3, 7, 107)


def test_every_rank_finite_is_no_failure(monkeypatch: Any) -> None:
    """Two ranks, both finite: the all-reduced flag is 2 of 2."""
    ctx = dist_utils.DistContext(rank=1, world_size=2)
    monkeypatch.setattr(type(ctx), "enabled", property(lambda self: True))
    monkeypatch.setattr(dist_utils, "all_reduce_sum", lambda tensor, ctx: tensor.mul_(2))
    check = DeferredFiniteCheck(CPU, ctx)
    assert _push(check, 1, ce=1.0) is None
    assert check.flush() is None


class NaNAt(CELoss):
    """CE whose loss turns NaN at one call; counts the calls (= steps run)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.calls = step, 0

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        self.calls += 1
        terms = super().forward(student_logits, teacher_logits, targets, **context)
        if self.calls == self.step:
            terms = {"ce": terms["ce"] + NAN}
        return terms


STEPS_PER_EPOCH = 3  # digits_config's train.max_steps_per_epoch


def test_the_run_stops_one_step_after_the_bad_one(tmp_path: Path) -> None:
    loss = NaNAt(5)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 5 \(global step 5\): term ce=nan"):
        cfg = digits_config(tmp_path, "run", train={"max_steps_per_epoch": 10})
        Trainer(cfg, tmp_path / "run", loss=loss).fit()
    assert loss.calls == 6


def test_a_bad_last_step_of_an_epoch_never_reaches_its_checkpoint(tmp_path: Path) -> None:
    """Nothing queues a next step after an epoch's last one: the flush before the epoch's
    evaluation and ``last.pt`` must catch it."""
    loss = NaNAt(STEPS_PER_EPOCH)
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(digits_config(tmp_path, "run"), tmp_path / "run", loss=loss).fit()
    message = str(info.value)
    assert f"epoch 1, step {STEPS_PER_EPOCH} " in message
    assert "no checkpoint had been written yet" in message
    assert loss.calls == STEPS_PER_EPOCH
    assert not (tmp_path / "run/checkpoints/last.pt").exists()
    metrics = tmp_path / "run/metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # no epoch record either


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned-copy path needs a GPU")
def test_on_a_gpu_the_flags_arrive_through_pinned_memory() -> None:
    check = DeferredFiniteCheck(torch.device("cuda"), dist_utils.DistContext())
    values = {"ce": torch.tensor(1.0, device="cuda"), "kd": torch.tensor(NAN, device="cuda")}
    total = sum(values.values())
    assert isinstance(total, Tensor)
    assert check.push(total, values, 1, 1, 1) is None
    assert check.flush() == NonFiniteStep("term kd=nan", 1, 1, 1)


class NaNTermThenNaNLogits(NaNAt):
    """A NaN term at step 2, then NaN student logits at step 3, which the loss's own input
    check (validation is on by default on a CPU) raises at once."""

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        if self.calls + 1 == 3:
            student_logits = student_logits + NAN
        return super().forward(student_logits, teacher_logits, targets, **context)


def test_an_earlier_bad_step_is_named_before_a_later_immediate_error(tmp_path: Path) -> None:
    """Step 2's NaN is still queued when step 3's input check raises: step 2 is the cause."""
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(digits_config(tmp_path, "run"), tmp_path / "run", loss=NaNTermThenNaNLogits(2)).fit()
    message = str(info.value)
    assert "epoch 1, step 2 (global step 2): term ce=nan" in message
    assert "student_logits" not in message
