"""Trainer paths a mutation audit of ``engine/trainer.py`` showed the other tests miss.

Each test pins one promise of the loop: an existing run is never silently reused or
appended to, a finished run is not resumed under another config, the summary's times and
rates add up from the per-epoch records, ``best.pt`` is settled correctly after a kill, and
the default run neither compiles nor builds the in-memory teacher-logit cache.
Expected values come from the run's own records (metrics.jsonl), the wall clock around
``fit()``, or the files the test writes; never from re-running the code under test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import digits_config
from torch import Tensor

from figkd.engine import Trainer, load_weights_only, model_payload, save_atomic
from figkd.engine.trainer import NonFiniteLossError, RunExistsError
from figkd.losses import CELoss
from figkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


digits = digits_config


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- existing runs


@pytest.mark.parametrize("left", ["both", "last.pt only", "summary only"])
def test_an_existing_run_is_refused_without_resume_or_overwrite(tmp_path: Path, left: str) -> None:
    """A killed run (last.pt, no summary) counts as a run too: a plain start must not
    overwrite it.  ``resume`` defaults to off."""
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run"), run).fit()
    if left == "last.pt only":
        (run / "summary.json").unlink()
    elif left == "summary only":
        (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(RunExistsError, match="--resume to continue it, --overwrite"):
        Trainer(digits(tmp_path, "run"), run).fit()


def test_overwrite_starts_from_an_empty_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run", train={"epochs": 2}), run).fit()
    stray = run / "notes.txt"
    stray.write_text("from the old run")
    summary = Trainer(digits(tmp_path, "run"), run, overwrite=True).fit()
    assert not stray.exists()
    assert [r["epoch"] for r in _metrics(run)] == [1]
    assert summary["epochs"] == 1 and summary["resumed"] == 0


@pytest.mark.parametrize(
    "resume,progress,said",
    [(True, "lines", True), (True, "none", False), (False, "lines", False)],
)
def test_resuming_a_run_without_checkpoint_says_it_starts_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resume: bool, progress: str, said: bool
) -> None:
    """The study resumes every run, so a fresh start is right, but a mistyped run name
    must not pass unseen."""
    run = tmp_path / "typo"
    Trainer(digits(tmp_path, "typo", train={"progress": progress}), run, resume=resume).fit()
    message = f"{run}: no checkpoints/last.pt to resume; starting at epoch 1"
    assert (message in capsys.readouterr().out) is said


def test_a_finished_run_is_not_resumed_under_another_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run"), run).fit()
    other = digits(tmp_path, "run", optim={"weight_decay": 1e-3})
    with pytest.raises(ValueError, match=r"optim\.weight_decay: 0\.0005 -> 0\.001"):
        Trainer(other, run, resume=True).fit()
    same = Trainer(digits(tmp_path, "run"), run, resume=True).fit()  # unchanged: the summary
    assert same == json.loads((run / "summary.json").read_text())


# --------------------------------------------------------------------------- numbers


def test_summary_times_and_rates_add_up_from_the_epoch_records(tmp_path: Path) -> None:
    """Every epoch sees the same number m of images, so the run's images/s is
    E·m / Σ(m / ips_e): the harmonic mean of the epochs' rates, whatever m is."""
    run = tmp_path / "run"
    started = time.perf_counter()
    summary = Trainer(digits(tmp_path, "run", train={"epochs": 3}), run).fit()
    measured = time.perf_counter() - started
    rates = [r["img_per_s"] for r in _metrics(run)]
    harmonic = len(rates) / sum(1.0 / r for r in rates)
    assert summary["train_img_per_s"] == pytest.approx(harmonic, rel=1e-9)
    assert 0.0 < summary["wall_time_s"] <= measured
    epoch_time = sum(r["time_s"] for r in _metrics(run))
    assert epoch_time <= summary["wall_time_s"]  # set-up and summary time come on top


def test_train_top1_is_a_percentage(tmp_path: Path) -> None:
    """10 classes: even an untrained net gets several percent; a fraction would be < 1."""
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run", train={"epochs": 2}), run).fit()
    for record in _metrics(run):
        assert 1.0 < record["train"]["top1"] <= 100.0
        assert 1.0 < record["test"]["top1"] <= 100.0


class TwoHugeTerms(CELoss):
    """Two finite float32 terms whose sum overflows to inf."""

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        huge = student_logits.float().sum() * 0.0 + 3.0e38
        return {"a": huge, "b": huge}


def test_an_overflowing_sum_of_finite_terms_is_named_as_such(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(digits(tmp_path, "run"), run, loss=TwoHugeTerms()).fit()
    message = str(info.value)
    assert "total=inf (every term is finite; their sum overflowed)" in message
    assert "epoch 1, step 1 (global step 1)" in message
    assert "no checkpoint had been written yet" in message


# --------------------------------------------------------------------------- best.pt


def _pending(run: Path) -> Path:
    return run / "checkpoints" / ".best.pt.pending"


def test_a_pending_best_of_the_checkpointed_epoch_is_promoted_on_resume(tmp_path: Path) -> None:
    """Killed after last.pt (epoch 2, the best) but before the rename: resuming promotes
    it even when no epoch is left to train, so best.pt is the summary's best epoch."""
    run = tmp_path / "run"
    cfg = digits(tmp_path, "run", train={"epochs": 2})
    Trainer(cfg, run).fit()
    last = load_weights_only(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["state"]["best"] is not None
    # stage the kill: epoch 2 is the best, its file still pending; best.pt an older one
    last["state"]["best"]["epoch"] = 2
    save_atomic(last, run / "checkpoints" / "last.pt")
    best_pt = run / "checkpoints" / "best.pt"
    kept = load_weights_only(best_pt)
    save_atomic({**kept, "epoch": 2}, _pending(run))
    save_atomic({**kept, "epoch": 0}, best_pt)
    (run / "summary.json").unlink()

    summary = Trainer(cfg, run, resume=True).fit()
    assert not _pending(run).exists()
    assert load_weights_only(best_pt)["epoch"] == 2 == summary["best"]["epoch"]


def test_a_pending_best_of_an_unfinished_epoch_is_dropped_on_resume(tmp_path: Path) -> None:
    """Killed after writing epoch 3's best aside but before epoch 3's last.pt: that epoch
    will be trained again, so its pending file must not become best.pt."""
    run = tmp_path / "run"
    cfg = digits(tmp_path, "run", train={"epochs": 2})
    Trainer(cfg, run).fit()
    (run / "summary.json").unlink()
    best_pt = run / "checkpoints" / "best.pt"
    before = load_weights_only(best_pt)
    save_atomic({**before, "epoch": 3}, _pending(run))
    summary = Trainer(cfg, run, resume=True).fit()
    assert not _pending(run).exists()
    assert load_weights_only(best_pt)["epoch"] == before["epoch"] == summary["best"]["epoch"]
    # nothing trained in this session: the final metrics come from metrics.jsonl's last line
    last_line = _metrics(run)[-1]
    assert summary["final"] == {k: last_line[k] for k in ("epoch", "train", "val", "test")}
    assert summary["final"]["epoch"] == 2


# --------------------------------------------------------------------------- defaults


def test_a_default_distillation_run_neither_compiles_nor_caches_in_memory(
    tmp_path: Path,
) -> None:
    """``train.compile`` and ``teacher.cache_logits`` are opt-in: the default run trains
    the plain student against the live teacher."""
    teacher = tmp_path / "teacher.pt"
    save_atomic(
        model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)), teacher
    )
    cfg = digits(
        tmp_path,
        "kd",
        loss={"name": "kd"},
        teacher={"name": "tiny_cnn", "args": {"width": 8}, "checkpoint": str(teacher)},
    )
    trainer = Trainer(cfg, tmp_path / "kd")
    trainer.fit()
    assert trainer.cache is None
    assert trainer.eval_model is trainer.student
    assert isinstance(trainer.teacher, torch.nn.Module)
    assert not hasattr(trainer.teacher, "_orig_mod")  # torch.compile's wrapper


def test_resuming_a_finished_run_with_more_epochs_trains_them(tmp_path: Path) -> None:
    """``train.epochs`` may grow on resume: a finished run is extended, not returned as is."""
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run"), run).fit()
    summary = Trainer(digits(tmp_path, "run", train={"epochs": 2}), run, resume=True).fit()
    assert summary["epochs"] == 2 and summary["resumed"] == 1
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]


def test_epoch_records_count_images_and_times_consistently(tmp_path: Path) -> None:
    """3 steps of the default batch of 64 with drop_last: 192 images an epoch, trained in
    a positive time no longer than the epoch (which adds the evaluations)."""
    run = tmp_path / "run"
    started = time.perf_counter()
    Trainer(digits(tmp_path, "run", train={"epochs": 2}), run).fit()
    measured = time.perf_counter() - started
    per_epoch = 3 * 64
    for record in _metrics(run):
        train_s = per_epoch / record["img_per_s"]
        assert 0.0 < train_s <= record["time_s"] <= measured
    state = load_weights_only(run / "checkpoints" / "last.pt")["state"]
    assert state["train_images"] == 2 * per_epoch and state["global_step"] == 2 * 3
    assert 0.0 < state["train_time_s"] <= state["elapsed_s"] <= measured


def test_the_grad_scaler_is_off_unless_fp16(tmp_path: Path) -> None:
    """A disabled GradScaler saves an empty state; an enabled one saves its scale."""
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run"), run).fit()
    assert load_weights_only(run / "checkpoints" / "last.pt")["scaler"] == {}


def test_tensorboard_gets_every_epoch_scalar_except_the_epoch_number(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run", train={"epochs": 2}), run).fit()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "epoch" not in tags and {"lr", "train.loss", "val.top1", "test.top1"} <= tags
    records = _metrics(run)
    logged = [(e.step, e.value) for e in events.Scalars("test.top1")]
    assert logged == [(r["epoch"], pytest.approx(r["test"]["top1"], rel=1e-6)) for r in records]


def test_the_in_memory_logit_cache_refuses_augmented_training_images(
    tmp_path: Path, fake_cifar100: Path
) -> None:
    """Logits computed once per image are wrong for randomly cropped/flipped images."""
    teacher = tmp_path / "teacher.pt"
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=100, width=4)), teacher)
    cfg = digits(
        tmp_path,
        "kd",
        data={"dataset": "cifar100", "root": str(fake_cifar100), "batch_size": 16,
              "val_fraction": 0.0},
        loss={"name": "kd"},
        teacher={"name": "tiny_cnn", "args": {"width": 4}, "checkpoint": str(teacher),
                 "cache_logits": True},
    )
    with pytest.raises(ValueError, match="teacher.cache_logits needs training images without"):
        Trainer(cfg, tmp_path / "kd").fit()


class PlainLoss(torch.nn.Module):
    """A user's loss module that does not say whether it needs a teacher."""

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor,
                **context: Any) -> dict[str, Tensor]:
        return {"ce": torch.nn.functional.cross_entropy(student_logits, targets)}


@pytest.mark.parametrize("teacher", [{}, {"name": "tiny_cnn"}])
def test_a_loss_that_may_need_a_teacher_gets_one_or_a_clear_error(
    tmp_path: Path, teacher: dict[str, Any]
) -> None:
    """Losses without ``needs_teacher`` are assumed to need one; a teacher name without a
    checkpoint is not a teacher."""
    cfg = digits(tmp_path, "run", teacher=teacher)
    with pytest.raises(ValueError, match="needs a teacher: set teacher.name and teacher.checkpoint"):
        Trainer(cfg, tmp_path / "run", loss=PlainLoss()).fit()


def test_a_milestone_at_the_last_epoch_is_reported_as_unreached(tmp_path: Path) -> None:
    """The LR drops *after* a milestone epoch, so a milestone equal to ``train.epochs``
    decays nothing, exactly like one past it."""
    from figkd.engine.optim import lr_at
    from figkd.engine.trainer import _warn_unreached_milestones

    cfg = digits(tmp_path, "run", train={"epochs": 2}, schedule={"milestones": [2]})
    assert lr_at(2, cfg, 0.05) == lr_at(1, cfg, 0.05) == 0.05  # never decayed in the run
    with pytest.warns(UserWarning, match=r"milestones \[2\] are at or past train.epochs=2"):
        _warn_unreached_milestones(cfg)


# --------------------------------------------------------------------------- train top-1, best-val ties


def test_train_top1_is_the_percentage_of_correct_training_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch's train top-1 is 100 x (correct predictions) / (images seen).  The correct
    counts are recorded as the loop asks for them, so the test pins the aggregation and the
    scale, which a bound like ``<= 100`` cannot."""
    import figkd.engine.trainer as trainer_module

    counted: dict[str, float] = {"correct": 0.0}
    real_topk = trainer_module.topk_correct

    def recording_topk(logits: Tensor, targets: Tensor, ks: tuple[int, ...]) -> dict[int, Tensor]:
        correct = real_topk(logits, targets, ks)
        if ks == (1,):  # the training step's call; evaluation asks for (1, 5)
            counted["correct"] += float(correct[1])
        return correct

    monkeypatch.setattr(trainer_module, "topk_correct", recording_topk)
    run = tmp_path / "run"
    Trainer(digits(tmp_path, "run"), run).fit()
    (record,) = _metrics(run)
    assert counted["correct"] > 0  # an untrained 10-class net still gets some right
    images = 3 * 64  # max_steps_per_epoch=3 full batches of the default 64
    assert record["train"]["top1"] == pytest.approx(100.0 * counted["correct"] / images)


@pytest.mark.parametrize(
    "val_top1,best_epoch",
    [([50.0, 50.0, 50.0], 1), ([40.0, 60.0, 60.0], 2), ([40.0, 60.0, 70.0], 3)],
)
def test_best_checkpoint_keeps_the_earliest_epoch_of_a_tie(
    tmp_path: Path, val_top1: list[float], best_epoch: int
) -> None:
    """best.pt is the first epoch that reached the best validation top-1: a later epoch that
    only equals it does not replace it (with a plateau, the earlier checkpoint is the one the
    validation split chose first; the choice must be stable, not depend on the epoch count)."""
    run = tmp_path / "run"
    cfg = digits(tmp_path, "run", train={"epochs": 3}, data={"val_fraction": 0.2})
    trainer = Trainer(cfg, run)
    val_scores = iter(val_top1)
    test_scores = iter([11.0, 22.0, 33.0])

    def scripted_evaluate(model: torch.nn.Module, source: Any) -> dict[str, float]:
        top1 = next(val_scores) if source is trainer.data.val else next(test_scores)
        return {"loss": 1.0, "top1": top1, "top5": 100.0}

    trainer.evaluate = scripted_evaluate  # type: ignore[method-assign]
    summary = trainer.fit()
    assert summary["best"]["epoch"] == best_epoch
    assert summary["best"]["test"]["top1"] == [11.0, 22.0, 33.0][best_epoch - 1]
    assert load_weights_only(run / "checkpoints" / "best.pt")["epoch"] == best_epoch


@pytest.mark.parametrize(
    "amp,dtype",
    [("none", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_train_amp_sets_the_dtype_of_matmuls_and_none_leaves_float32(
    amp: str, dtype: torch.dtype
) -> None:
    """``train.amp`` must reach the forward: "none" has to stay float32 (CPU autocast with no
    dtype would silently pick bfloat16), and the mixed modes must really switch."""
    from figkd.engine.trainer import autocast

    a, b = torch.ones(2, 3), torch.ones(3, 2)
    with autocast(torch.device("cpu"), amp):
        product = a @ b
    assert product.dtype == dtype
    assert torch.equal(product.float(), torch.full((2, 2), 3.0))
