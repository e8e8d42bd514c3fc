"""Distiller: frozen teacher, teacher-free losses, cached logits and two-view methods."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from figkd.distiller import Distiller, TeacherLogitCache, num_views
from figkd.losses import CELoss, DistillationLoss, KDLoss


class Counting(nn.Module):
    """A linear model that counts its forward calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.bn(self.fc(x))


class TwoViewProbe(DistillationLoss):
    """A fake MLKD-style loss: records what it was given."""

    term_names = ("weak", "strong")
    num_views: ClassVar[int] = 2

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **context: Any
    ) -> dict[str, Tensor]:
        self.seen = {"student": student_logits, "teacher": teacher_logits, **context}
        assert teacher_logits is not None
        strong = context["student_logits_strong"]
        return {
            "weak": (student_logits - teacher_logits).pow(2).mean(),
            "strong": (strong - context["teacher_logits_strong"]).pow(2).mean(),
        }


def _batch() -> tuple[Tensor, Tensor]:
    torch.manual_seed(1)
    return torch.randn(8, 6), torch.randint(0, 5, (8,))


def test_teacher_stays_frozen_in_eval_mode_and_gets_no_gradient() -> None:
    student, teacher = Counting(0), Counting(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(student, KDLoss(), teacher).train()
    assert student.training and not teacher.training
    x, y = _batch()
    logits, terms = distiller(x, y, epoch=1)
    assert set(terms) == {"ce", "kd"} and logits.shape == (8, 5)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats too
    assert list(distiller.trainable_parameters()) == list(student.parameters())


def test_teacher_free_loss_skips_the_teacher_and_allows_none() -> None:
    student, teacher = Counting(0), Counting(1)
    x, y = _batch()
    Distiller(student, CELoss(), teacher)(x, y, epoch=1)
    assert teacher.calls == 0
    _, terms = Distiller(student, CELoss(), None)(x, y, epoch=1)
    assert set(terms) == {"ce"}


def test_missing_teacher_is_a_clear_error() -> None:
    x, y = _batch()
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller(Counting(0), KDLoss(), None)(x, y, epoch=1)


def test_cached_teacher_logits_replace_the_forward_and_match_it() -> None:
    student, teacher = Counting(0), Counting(1)
    x, y = _batch()
    live = Distiller(student, KDLoss(), teacher)(x, y, epoch=1)[1]
    batches = [(x[:5], torch.arange(5)), (x[5:], torch.arange(5, 8))]
    cache = TeacherLogitCache.compute(teacher, batches, 8, torch.device("cpu"))
    calls = teacher.calls
    index = torch.tensor([3, 0, 7])
    assert torch.allclose(cache(index), teacher.eval()(x[index]))
    teacher.calls = calls
    cached = Distiller(student, KDLoss(), teacher)(
        x, y, teacher_logits=cache(torch.arange(8)), epoch=1
    )[1]
    assert teacher.calls == calls
    assert all(torch.allclose(live[k], cached[k], atol=1e-6) for k in live)


def test_two_view_loss_gets_both_views_and_the_epoch() -> None:
    student, teacher = Counting(0), Counting(1)
    probe = TwoViewProbe()
    assert num_views(probe) == 2 and num_views(KDLoss()) == 1
    distiller = Distiller(student, probe, teacher)
    x, y = _batch()
    strong = torch.randn(8, 6)
    logits, _terms = distiller((x, strong), y, epoch=7)
    assert student.calls == 2 and teacher.calls == 2
    assert probe.seen["epoch"] == 7
    assert torch.equal(logits, probe.seen["student"])
    assert probe.seen["student_logits_strong"].shape == (8, 5)
    assert not torch.allclose(probe.seen["student"], probe.seen["student_logits_strong"])
    assert torch.allclose(probe.seen["teacher_logits_strong"], teacher.eval()(strong))
    with pytest.raises(TypeError, match="weak, strong"):
        distiller(x, y, epoch=1)


def test_two_view_loss_takes_cached_weak_logits_and_scores_the_strong_view_live() -> None:
    student, teacher = Counting(0), Counting(1)
    probe = TwoViewProbe()
    distiller = Distiller(student, probe, teacher)
    x, y = _batch()
    strong = torch.randn(8, 6)
    cached_weak = torch.full((8, 5), 0.25)  # not what the teacher gives on x: must be passed on
    distiller((x, strong), y, teacher_logits=cached_weak, epoch=2)
    assert teacher.calls == 1  # the strong view only
    assert probe.seen["teacher"] is cached_weak
    assert torch.allclose(probe.seen["teacher_logits_strong"], teacher.eval()(strong))
    # a (weak, strong) pair of logits still replaces both forwards
    teacher.calls = 0
    pair = (cached_weak, torch.zeros(8, 5))
    distiller((x, strong), y, teacher_logits=pair, epoch=2)
    assert teacher.calls == 0 and probe.seen["teacher_logits_strong"] is pair[1]
