"""A loss that turns non-finite at one chosen step, for the tests of what the engine does then
(``test_engine_nan.py``: the stop and its message; ``test_failure_records.py``: the record)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from figkd.losses import CELoss


class NaNAtStep(CELoss):
    """CE plus a zero "detail" term; at one global training step either that term turns NaN
    (``where="term"``) or the student's logits do (``where="logits"``, which the loss's own
    input check notices when validation is on, the CPU default); ``step`` 0 never comes."""

    # CELoss's own term_names is inferred as tuple[str], narrower than DistillationLoss's
    # ClassVar[tuple[str, ...]] (src/figkd/losses/ce.py), so mypy refuses a second name here
    term_names = ("ce", "detail")

    def __init__(self, step: int, where: str = "term") -> None:
        super().__init__()
        self.step, self.where, self.calls = step, where, 0

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        self.calls += 1
        poisoned = self.calls == self.step
        if poisoned and self.where == "logits":
            student_logits = student_logits + float("nan")
        terms = super().forward(student_logits, teacher_logits, targets, **context)
        detail = 0.0 * student_logits.sum()
        if poisoned and self.where == "term":
            detail = detail + float("nan")
        return {**terms, "detail": detail}
