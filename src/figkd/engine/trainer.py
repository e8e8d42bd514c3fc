"""The training loop: one config, one seed, one run directory.

The paper's recipe is the default (SGD 0.9 / 5e-4, batch 64, 240 epochs, LR
0.05 or 0.01 for ShuffleNet/MobileNetV2, x0.1 after epochs 150/180/210).  Each
epoch trains, evaluates (top-1, top-5, CE loss) on the validation split carved
from train and on the test split, keeps ``best.pt`` by validation top-1, and
writes ``last.pt`` atomically.  A NaN/inf loss stops the run within one step (the check is
read a step late so it never stalls the GPU: engine/finite_check.py), naming the step and
term, before any checkpoint holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import inspect
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from figkd.config import Config, config_to_dict, resolved_lr, save_config
from figkd.distiller import Distiller, TeacherLogitCache, features_view, num_views
from figkd.engine import distributed as dist_utils
from figkd.engine.checkpoint import (
    load_teacher,
    load_weights_only,
    model_payload,
    save_atomic,
    unwrap,
)
from figkd.engine.data import FastSource, build_data, legacy_data_path, train_preset
from figkd.engine.finite_check import DeferredFiniteCheck, NonFiniteStep
from figkd.engine.metrics import SumMeter, topk_correct
from figkd.engine.optim import build_optimizer, lr_at, scale_milestones, set_lr
from figkd.engine.planned_cache import PlannedLogitCache
from figkd.engine.precision import autocast
from figkd.engine.progress import EpochProgress, epoch_line
from figkd.engine.run_dir import (
    RunDir,
    TensorBoardLogger,
    command_line,
    device_description,
    failure_reason,
    git_commit,
    versions,
)
from figkd.engine.seeding import get_rng_state, seed_everything, set_deterministic, set_rng_state
from figkd.engine.teacher_cache import resolve_teacher_cache
from figkd.losses import LOSSES, DistillationLoss, build_loss
from figkd.losses.validation import NonFiniteLogitsError
from figkd.models import create_model

#: config keys that may differ when resuming: they change how a run executes, not its result
RESUME_MAY_CHANGE = (
    "experiment",
    "output_dir",
    "data.root",
    "data.num_workers",
    "data.loader",  # the input path it resolves to is checked on its own (RunState.data_path)
    "train.device",
    "train.progress",
    "train.log_every",
    "train.eval_teacher",
    "train.compile",
    "train.epochs",
    "teacher.checkpoint",
    "teacher.cache",  # cache, cache_dir, cache_dtype, cache_max_gb, cache_logits: fp16 noise only
    "train.num_threads",
)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the epoch, step and term."""


class RunExistsError(FileExistsError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


@dataclass
class EpochRecord:
    """What ``on_epoch_end`` callbacks receive (also one line of metrics.jsonl)."""

    epoch: int
    epochs: int
    data: dict[str, Any]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    source: Any,
    *,
    device: torch.device,
    ctx: dist_utils.DistContext | None = None,
    amp: str = "none",
) -> dict[str, float]:
    """CE loss, top-1 and top-5 (percent) of ``model`` over ``source``, summed over DDP ranks."""
    ctx = ctx or dist_utils.DistContext()
    was_training = model.training
    model.eval()
    dist_utils.broadcast_buffers(unwrap(model), ctx)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for images, targets, _ in source.epoch(0):
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        correct = topk_correct(logits, targets, (1, 5))
        sums += torch.stack(
            [
                F.cross_entropy(logits, targets, reduction="sum").double(),
                correct[1].double(),
                correct[5].double(),
                torch.tensor(float(len(targets)), dtype=torch.float64, device=device),
            ]
        )
    dist_utils.all_reduce_sum(sums, ctx)
    model.train(was_training)
    loss, top1, top5, n = sums.tolist()
    if n == 0:
        raise ValueError("evaluation split is empty")
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def build_method(cfg: Config, device: torch.device) -> DistillationLoss:
    """The loss of ``cfg``; ``validate=False`` on CUDA (the trainer checks finiteness itself)."""
    cls = LOSSES.get(cfg.loss.name)
    args = dict(cfg.loss.args)
    if "validate" in inspect.signature(cls.__init__).parameters and "validate" not in args:
        args["validate"] = device.type != "cuda"
    return build_loss(cfg.loss.name, **args)


class Trainer:
    """Runs ``cfg`` into ``run_dir``; ``fit()`` returns the summary dict.

    Args:
        cfg: the resolved config (``cfg.train.seed`` is this run's seed).
        run_dir: ``runs/<experiment>/seed<k>``.
        resume: continue from ``checkpoints/last.pt`` if present.
        overwrite: delete an existing run in ``run_dir`` first.
        loss: a ready loss module instead of ``cfg.loss`` (custom methods, tests).
        on_epoch_end: called on rank 0 with each epoch's record.
        prefix: shown before progress lines (e.g. ``"kd seed1 "``).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        loss: nn.Module | None = None,
        on_epoch_end: Callable[[EpochRecord], None] | None = None,
        prefix: str = "",
    ) -> None:
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.custom_loss = loss
        self.on_epoch_end = on_epoch_end
        self.prefix = prefix
        self.ctx = dist_utils.env_context()
        self.teacher_record: dict[str, Any] | None = None  # set by _build once a teacher loads

    # ------------------------------------------------------------------ setup

    def _prepare_dir(self) -> dict[str, Any] | None:
        """Check the run directory; return the checkpoint to resume from, if any.

        Rank 0 decides (what it sees is broadcast), so every rank takes the same branch.
        """
        exists = self.dir.last.exists() or self.dir.summary.exists()
        exists = bool(dist_utils.broadcast_object(exists, self.ctx))
        if exists and self.overwrite:
            if self.ctx.is_main:
                shutil.rmtree(self.dir.path)
            dist_utils.barrier(self.ctx)
        elif exists and not self.resume:
            raise RunExistsError(
                f"{self.dir.path} already holds a run; pass --resume to continue it, "
                "--overwrite to start again, or choose another experiment name"
            )
        if self.resume and self.dir.last.exists():
            return load_weights_only(self.dir.last, map_location="cpu")
        if self.resume and self.ctx.is_main and self.cfg.train.progress != "none":
            # a fresh start is right for runs killed before their first checkpoint (the study
            # resumes every run), but say so: a mistyped --name would otherwise pass unseen
            print(
                f"{self.dir.path}: no checkpoints/last.pt to resume; starting at epoch 1",
                flush=True,
            )
        if self.ctx.is_main and self.dir.metrics.exists():
            # A run killed before its first last.pt left epoch lines behind; starting
            # afresh must not append to them.
            self.dir.metrics.unlink()
        return None

    def _check_resume_config(self, saved: dict[str, Any]) -> None:
        now = _flatten(config_to_dict(self.cfg))
        before = _flatten(saved)
        changed = sorted(
            k
            for k in set(now) | set(before)
            if now.get(k) != before.get(k) and not k.startswith(RESUME_MAY_CHANGE)
        )
        if changed:
            shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ValueError(
                f"cannot resume {self.dir.path}: the config differs from the run's in {shown}. "
                "Resume with the original config, or start a new run"
            )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module, source: Any) -> dict[str, float]:
        return evaluate_model(
            model, source, device=self.device, ctx=self.ctx, amp=self.cfg.train.amp
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.cfg.train.amp)

    # ------------------------------------------------------------------ training

    def _raise_if_bad(self, failure: NonFiniteStep | None) -> None:
        if failure is not None:
            raise NonFiniteLossError(
                self._non_finite_message(
                    failure.named, failure.epoch, failure.step, failure.global_step
                )
            )

    def _non_finite_message(self, named: str, epoch: int, step: int, global_step: int) -> str:
        last_good = epoch - 1
        kept = (
            f"{self.dir.last} (epoch {last_good}) is intact"
            if last_good > 0
            else "no checkpoint had been written yet"
        )
        return (
            f"non-finite loss at epoch {epoch}, step {step} (global step {global_step}): "
            f"{named}. Training stopped before another checkpoint was written: {kept}. "
            "Lower optim.lr, "
            "use train.amp=none, or inspect the data; then --resume from the last checkpoint"
        )

    def fit(self) -> dict[str, Any]:
        """Train (or continue) the run; returns the summary written to summary.json."""
        threads = torch.get_num_threads()
        if self.cfg.train.num_threads is not None:
            torch.set_num_threads(self.cfg.train.num_threads)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)

    def _fit(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        _warn_unreached_milestones(cfg)
        session_start = time.perf_counter()
        self.device = dist_utils.resolve_device(cfg.train.device, ctx)
        dist_utils.init_process_group(ctx, self.device)
        checkpoint = self._prepare_dir()
        if (
            self.resume
            and self.dir.summary.exists()
            and (checkpoint is None or int(checkpoint["epoch"]) >= cfg.train.epochs)
        ):
            if checkpoint is not None:
                self._check_resume_config(checkpoint["config"])
            return _read_json(self.dir.summary)  # already finished
        if checkpoint is not None:
            self._check_resume_config(checkpoint["config"])

        set_deterministic(cfg.train.deterministic, cfg.train.deterministic_warn_only)
        seed_everything(cfg.train.seed)
        first_epoch = checkpoint["state"]["epoch"] + 1 if checkpoint else 1
        state: RunState | None = None
        tb: TensorBoardLogger | None = None
        record: dict[str, Any] = {}
        setup_done = False
        try:  # from here on an error is the run's (data, teacher, cache, step), not the call's
            self._build(first_epoch=first_epoch)
            state = (self._restore(checkpoint) if checkpoint is not None
                     else RunState(data_path=self.data.path))
            open_segment(state, device_description(self.device))
            if ctx.is_main:
                self.dir.create()
                save_config(cfg, self.dir.config)
            if self.teacher is not None and cfg.train.eval_teacher and state.teacher_eval is None:
                state.teacher_eval = self.evaluate(self.teacher, self.data.test)
            if ctx.is_main:
                tb = TensorBoardLogger(self.dir.tensorboard, purge_step=state.epoch + 1)
            setup_done = True
            for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
                epoch_start = time.perf_counter()
                record = self._train_epoch(epoch, state)
                train_s = time.perf_counter() - epoch_start
                state.train_time_s += train_s
                record["img_per_s"] = record.pop("images") / max(train_s, 1e-9)  # training only
                if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
                    if self.data.val is not None:
                        record["val"] = self.evaluate(self.eval_model, self.data.val)
                    record["test"] = self.evaluate(self.eval_model, self.data.test)
                    for name, net in _extra_eval_models(self.loss).items():  # e.g. DML's peer
                        record[name] = {"test": self.evaluate(net, self.data.test)}
                record["time_s"] = time.perf_counter() - epoch_start
                state.elapsed_s += time.perf_counter() - session_start
                session_start = time.perf_counter()
                self._end_epoch(record, state, tb)
        except Exception as error:  # a kill (KeyboardInterrupt, SIGKILL) is resumable, not this
            done = state.epoch if state is not None else first_epoch - 1
            self._record_failure(error, done, "training" if setup_done else "setup")
            raise
        finally:
            if tb is not None:
                tb.close()
        assert state is not None  # the try set it, or raised
        state.elapsed_s += time.perf_counter() - session_start
        return self._finish(state, record)

    # ------------------------------------------------------------------ pieces of fit

    def _build(self, first_epoch: int = 1) -> None:
        """Loss, data, student, teacher, optimizer, scaler, distiller and teacher cache
        (whose views start at ``first_epoch``: a resumed run skips the epochs it trained)."""
        cfg, ctx, device = self.cfg, self.ctx, self.device
        loss = self.custom_loss if self.custom_loss is not None else build_method(cfg, device)
        self.data = data = build_data(cfg, ctx, device, num_views(loss))
        student = create_model(
            cfg.model.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            **cfg.model.args,
        )
        self.teacher: nn.Module | None = None
        self.teacher_record = None
        if getattr(loss, "needs_teacher", True):
            if cfg.teacher.name is None or cfg.teacher.checkpoint is None:
                raise ValueError(
                    f"loss {cfg.loss.name!r} needs a teacher: set teacher.name and "
                    "teacher.checkpoint (a file written by `figkd train`, or a state dict)"
                )
            self.teacher, self.teacher_record = load_teacher(
                cfg.teacher.name,
                cfg.teacher.checkpoint,
                data.num_classes,
                in_channels=data.in_channels,
                args=cfg.teacher.args,
                sha256=cfg.teacher.sha256,
            )
        memory = torch.channels_last if cfg.train.channels_last else torch.preserve_format
        student.to(device).to(memory_format=memory)
        if self.teacher is not None:
            self.teacher.to(device).to(memory_format=memory)
        _setup_method(loss, student, self.teacher, data)  # connectors, before the optimizer
        loss.to(device)
        _broadcast_loss_state(loss, ctx, device)  # every rank starts from rank 0's connectors
        self.student, self.loss = student, loss
        self.optimizer = build_optimizer(
            [*student.parameters(), *loss.parameters()], cfg, resolved_lr(cfg)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

        model = dist_utils.wrap_ddp(features_view(student, loss), ctx, device, cfg.train.sync_bn)
        self.eval_model: nn.Module = student
        if cfg.train.compile:
            mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
            # compiling a module gives a module (OptimizedModule); torch types it as a callable
            model = cast(nn.Module, torch.compile(model, mode=mode))
            self.eval_model = cast(nn.Module, torch.compile(student, mode=mode))
            if self.teacher is not None:
                self.teacher = cast(nn.Module, torch.compile(self.teacher, mode=mode))
        self.distiller = Distiller(model, loss, self.teacher)

        self.cache: TeacherLogitCache | None = None
        if cfg.teacher.cache_logits and self.teacher is not None:
            if not data.fixed_train_inputs or data.train_eval is None:
                raise ValueError(
                    "teacher.cache_logits needs training images without random augmentation "
                    f"(the preset of {cfg.data.dataset!r} augments); set teacher.cache_logits=false"
                )
            batches = ((x, i) for x, _, i in data.train_eval.epoch(0))
            with self.autocast():
                self.cache = TeacherLogitCache.compute(
                    self.teacher, batches, data.train_size, device
                )
        # teacher.cache: logits of every crop/flip view, on disk (engine/teacher_cache.py)
        self.view_cache, self.view_cache_record = resolve_teacher_cache(
            cfg, data, self.teacher, self.teacher_record, loss, device, ctx, first_epoch
        )

    def _restore(self, checkpoint: dict[str, Any]) -> RunState:
        """Weights, optimizer, scaler and RNG from ``last.pt``; metrics after it are dropped."""
        state = RunState(**checkpoint["state"])
        if self.teacher_record is not None and state.teacher_sha256 not in (
            None,
            self.teacher_record["sha256"],
        ):
            raise ValueError(
                f"cannot resume {self.dir.path}: the teacher file "
                f"{self.teacher_record['checkpoint']} (SHA-256 {self.teacher_record['sha256']}) "
                "is not the one the run started with "
                f"({state.teacher_sha256})"
            )
        self._check_data_path(state, checkpoint["config"])
        self.student.load_state_dict(checkpoint["model"])
        self.loss.load_state_dict(checkpoint.get("loss", {}))  # connectors, memory banks, peers
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        state.resumed += 1
        if self.ctx.is_main:
            self.dir.truncate_metrics(state.epoch)
            self._settle_best(state)
        return state

    def _check_data_path(self, state: RunState, saved_config: dict[str, Any]) -> None:
        """Refuse to continue a run on another input path than the one it trained on.

        For checkpoints written before the path was recorded, the path follows from the
        run's own ``data.loader`` by the rule of the time (:func:`legacy_data_path`).
        """
        saved = state.data_path
        if saved is None:
            loader = (saved_config.get("data") or {}).get("loader", "auto")
            fast_path = bool(getattr(train_preset(self.cfg), "fast_path", False))
            saved = legacy_data_path(loader, num_views(self.loss), fast_path)
        if saved != self.data.path:
            raise ValueError(
                f"cannot resume {self.dir.path}: it trained on the {saved!r} input path and "
                f"this config resolves to {self.data.path!r}, whose augmentation draws differ; "
                f"resume with data.loader={saved}, or start a new run"
            )
        state.data_path = self.data.path

    def _settle_best(self, state: RunState) -> None:
        """Finish or drop a ``best.pt`` left pending by a kill inside ``_end_epoch``.

        A new best is written aside first and takes ``best.pt``'s name only after that
        epoch's ``last.pt``: a kill in between leaves ``best.pt`` matching ``last.pt``'s
        record.  Here a pending file of the checkpointed epoch is promoted; one of a later
        epoch (never checkpointed, so it will be trained again) is deleted.
        """
        pending = self._pending_best
        if not pending.exists():
            return
        epoch = load_weights_only(pending).get("epoch")
        if state.best is not None and epoch == state.best["epoch"] == state.epoch:
            os.replace(pending, self.dir.best)
        else:
            pending.unlink()

    def _promote_best(self) -> None:
        os.replace(self._pending_best, self.dir.best)

    @property
    def _pending_best(self) -> Path:
        return self.dir.best.with_name(f".{self.dir.best.name}.pending")

    def _train_epoch(self, epoch: int, state: RunState) -> dict[str, Any]:
        """One pass over the training data; returns the epoch's record (LR, mean terms, top-1)."""
        cfg = self.cfg
        lr = lr_at(epoch, cfg, resolved_lr(cfg))
        set_lr(self.optimizer, lr)
        self.distiller.train()
        meter = SumMeter()
        progress = EpochProgress(
            cfg.train.progress if self.ctx.is_main else "none",
            len(self.data.train),
            epoch,
            cfg.train.epochs,
            cfg.train.log_every,
            self.prefix,
        )
        finite = DeferredFiniteCheck(self.device, self.ctx)  # read one step late: no GPU stall
        for step, (images, targets, index, cached) in enumerate(self._train_batches(epoch), 1):
            state.global_step += 1
            try:
                with self.autocast():
                    logits, terms = self.distiller(
                        images, targets, teacher_logits=cached, index=index, epoch=epoch
                    )
            except NonFiniteLogitsError as error:  # a loss's own input check (validation on)
                self._raise_if_bad(finite.flush())  # an earlier bad step is the first cause
                raise NonFiniteLossError(
                    self._non_finite_message(str(error), epoch, step, state.global_step)
                ) from error
            total = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            _average_loss_grads(self.loss, self.ctx)  # DDP syncs the student's only
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._raise_if_bad(finite.push(total, terms, epoch, step, state.global_step))
            meter.add({"loss": total, **terms}, len(targets))
            meter.add_sums({"top1": topk_correct(logits.detach().float(), targets, (1,))[1]}, 0)
            progress.update(float(total.detach()) if progress.needs_loss() else None)
        self._raise_if_bad(finite.flush())  # before the epoch is evaluated or checkpointed
        progress.close()
        keys, vector = meter.state()
        dist_utils.all_reduce_sum(vector, self.ctx)
        train = SumMeter.means_from(keys, vector)
        train["top1"] *= 100.0
        seen = int(vector[-1].item())
        state.train_images += seen
        return {"epoch": epoch, "lr": lr, "train": train, "images": seen}

    def _train_batches(self, epoch: int) -> Any:
        """``(images, targets, index, cached teacher logits or None)`` of one epoch."""
        view_cache = self.view_cache
        if isinstance(view_cache, PlannedLogitCache):  # RandomResizedCrop: planned views
            for images, targets, index in self.data.train.epoch(epoch):
                yield images, targets, index, view_cache.lookup(epoch, index, self.device)
            return
        if view_cache is not None:
            source = self.data.train
            assert isinstance(source, FastSource)  # resolve_teacher_cache gives none otherwise
            for images, targets, index, params in source.epoch_with_params(epoch):
                yield images, targets, index, view_cache.lookup(index, params, self.device)
            return
        for images, targets, index in self.data.train.epoch(epoch):
            yield images, targets, index, self.cache(index) if self.cache is not None else None

    def _end_epoch(
        self, record: dict[str, Any], state: RunState, tb: TensorBoardLogger | None
    ) -> None:
        """Log the epoch, keep best.pt on validation top-1, write last.pt atomically."""
        cfg, epoch = self.cfg, record["epoch"]
        improved = "val" in record and (
            state.best is None or record["val"]["top1"] > state.best["val"]["top1"]
        )
        if improved:
            state.best = {"epoch": epoch, "val": record["val"], "test": record["test"]}
        state.epoch = epoch
        state.segments[-1]["to_epoch"] = epoch
        if self.teacher_record is not None:
            state.teacher_sha256 = self.teacher_record["sha256"]
        if self.ctx.is_main:
            self.dir.append_metrics(record)
            assert tb is not None
            tb.scalars({k: v for k, v in _flatten(record).items() if k != "epoch"}, epoch)
            resolved = config_to_dict(cfg)
            if improved:  # aside until last.pt records this epoch as the best (_settle_best)
                save_atomic(
                    model_payload(
                        self.student,
                        epoch=epoch,
                        val=record["val"],
                        config=resolved,
                        **_loss_state(self.loss),
                    ),
                    self._pending_best,
                )
            save_atomic(
                model_payload(
                    self.student,
                    epoch=epoch,
                    optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(),
                    rng=get_rng_state(),
                    state=dataclasses.asdict(state),
                    config=resolved,
                    **_loss_state(self.loss),
                ),
                self.dir.last,
            )
            if improved:
                self._promote_best()
            if cfg.train.progress != "none":
                print(epoch_line(self.prefix, epoch, cfg.train.epochs, record), flush=True)
            if self.on_epoch_end is not None:
                self.on_epoch_end(EpochRecord(epoch, cfg.train.epochs, record))
        dist_utils.barrier(self.ctx)

    def _record_failure(self, error: Exception, done: int, stage: str) -> None:
        """Write ``failure.json`` (rank 0): a run that stops with an error keeps why, where and
        on what, so a study's table can show the seed as failed instead of silently absent.

        ``done``: the last checkpointed epoch; ``stage``: "setup" (building the data, models,
        teacher or its logit cache, before epoch ``done + 1`` began) or "training"."""
        if not self.ctx.is_main:
            return
        message = str(error)
        failure = {
            "experiment": self.cfg.experiment,
            "seed": self.cfg.train.seed,
            "status": "failed",
            "run_dir": str(self.dir.path),
            "method": self.cfg.loss.name,
            "epochs": self.cfg.train.epochs,
            "stage": stage,
            "epoch": done + 1,  # the epoch that was training, or about to
            "last_checkpoint_epoch": done,
            "error": type(error).__name__,
            "reason": failure_reason(message),
            "message": message,
            "teacher": (None if self.teacher_record is None  # None also before it loaded
                        else {"sha256": self.teacher_record["sha256"]}),
            "device": device_description(self.device),
            "versions": versions(),
            "git": git_commit(),
            "command": command_line(),
            "failed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            self.dir.write_failure(failure)
        except OSError as write_error:  # the original error matters more than its record
            warnings.warn(f"could not write {self.dir.failure}: {write_error}", stacklevel=2)

    def _finish(self, state: RunState, record: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json (rank 0) and return it."""
        cfg, device = self.cfg, self.device
        teacher = (
            None
            if self.teacher_record is None
            else {**self.teacher_record, "test": state.teacher_eval}
        )
        summary = {
            "experiment": cfg.experiment,
            "seed": cfg.train.seed,
            "status": "finished",
            "run_dir": str(self.dir.path),
            "method": cfg.loss.name,
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "epochs": cfg.train.epochs,
            "teacher": teacher,
            "final": _final(self.dir, record),
            "best": state.best,
            "paper": config_to_dict(cfg)["paper"],
            "lr": resolved_lr(cfg),
            "train_img_per_s": state.train_images / max(state.train_time_s, 1e-9),
            "wall_time_s": state.elapsed_s,
            "resumed": state.resumed,
            "world_size": self.ctx.world_size,
            "device": device_description(device),
            "teacher_cache": self.view_cache_record,
            "amp": cfg.train.amp,
            "deterministic": (
                "warn-only" if cfg.train.deterministic_warn_only else cfg.train.deterministic
            ),
            "data_path": self.data.path,
            "versions": versions(),
            "git": git_commit(),
            "segments": trained_segments(state),
            "command": command_line(),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        earlier = self.dir.read_failure() if self.ctx.is_main else None
        if earlier is not None:  # finished when run again: keep what stopped it before
            summary["earlier_failure"] = {
                k: earlier.get(k) for k in ("stage", "epoch", "error", "reason", "failed_at")
            }
        if self.ctx.is_main:
            self.dir.write_summary(summary)
            self.dir.failure.unlink(missing_ok=True)  # after the summary: never neither
        dist_utils.barrier(self.ctx)
        return summary


@dataclass
class RunState:
    """Progress that ``last.pt`` carries besides weights, optimizer and RNG states."""

    epoch: int = 0  # last completed epoch
    global_step: int = 0
    elapsed_s: float = 0.0
    train_time_s: float = 0.0
    train_images: int = 0
    best: dict[str, Any] | None = None
    teacher_eval: dict[str, float] | None = None
    teacher_sha256: str | None = None
    resumed: int = 0
    #: the input path the run trains on ("fast" / "torch"): the two draw different
    #: augmentation streams, so a resumed run must keep its own
    data_path: str | None = None
    #: one entry per start or resume: the epochs it trained and the code and device it
    #: trained them with (a run resumed across sessions may span several commits)
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def open_segment(state: RunState, device: str) -> None:
    """Record that epochs from ``state.epoch + 1`` on are trained by this process's code.

    A checkpoint from before segments were recorded gets one segment for the epochs it
    already holds, with ``git: None`` (the commit that trained them is not known).
    """
    if not state.segments and state.epoch > 0:
        state.segments.append({"from_epoch": 1, "to_epoch": state.epoch, "git": None,
                               "device": None, "started_at": None})
    state.segments.append({
        "from_epoch": state.epoch + 1,
        "to_epoch": None,  # set at each epoch's end, before last.pt is written
        "git": git_commit(),
        "device": device,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })


def trained_segments(state: RunState) -> list[dict[str, Any]]:
    """The segments that trained at least one epoch (a resume may stop before its first)."""
    return [s for s in state.segments if s["to_epoch"] is not None]


def _setup_method(
    loss: nn.Module, student: nn.Module, teacher: nn.Module | None, data: Any
) -> None:
    """Run the loss's ``setup`` hook (if it has one) with a real batch.

    The batch comes from the test split: its transform draws no random numbers,
    so calling the hook leaves the training RNG stream as it was.
    """
    # the class's hook, called with the loss as self; a custom nn.Module loss may have none
    setup: Callable[..., None] = getattr(type(loss), "setup", DistillationLoss.setup)
    if setup is DistillationLoss.setup:
        return  # logit methods: nothing to build, no batch to load
    batches = data.test.epoch(0)
    try:
        images = next(batches)[0]
    finally:
        batches.close()
    setup(
        loss,
        student,
        teacher,
        example_input=images[: data.per_rank_batch],
        num_train_samples=data.train_size,
    )


def _warn_unreached_milestones(cfg: Any) -> None:
    """Milestones at or past the last epoch never decay the LR: usually ``train.epochs`` was
    shortened without scaling ``schedule.milestones`` (the paper's are for 240 epochs)."""
    if cfg.schedule.name != "multistep":
        return
    late = [m for m in cfg.schedule.milestones if m >= cfg.train.epochs]
    if late:
        scaled = scale_milestones(cfg.train.epochs)
        warnings.warn(
            f"schedule.milestones {late} are at or past train.epochs={cfg.train.epochs}: the "
            "learning rate never decays there. To scale the paper's 150/180/210 of 240, set "
            f"schedule.milestones=[{','.join(map(str, scaled))}]",
            stacklevel=3,
        )


def _broadcast_loss_state(
    loss: nn.Module, ctx: dist_utils.DistContext, device: torch.device
) -> None:
    """Give every DDP rank rank 0's loss parameters, buffers and extra state (DDP does this
    for the student).  NCCL moves device tensors only, and some state lives on the host
    (CRD's RNG state and ``memory_device="cpu"`` banks, DiffKD's generator state): those
    travel through ``device`` and are copied back."""
    if not ctx.enabled:
        return
    state = loss.state_dict()
    for tensor in state.values():
        staged = tensor if tensor.device == device else tensor.to(device)
        torch.distributed.broadcast(staged, src=0)
        if staged is not tensor:
            tensor.copy_(staged)
    loss.load_state_dict(state)  # extra state (DiffKD's generator) is a copy: set it back


def _loss_state(loss: nn.Module) -> dict[str, Any]:
    """``{"loss": state_dict}`` for losses with parameters or buffers, else nothing."""
    state = loss.state_dict()
    return {"loss": {k: v.detach().clone() for k, v in state.items()}} if state else {}


def _average_loss_grads(loss: nn.Module, ctx: dist_utils.DistContext) -> None:
    """Average the loss's own gradients (connectors, peers) over DDP ranks."""
    if not ctx.enabled:
        return
    for param in loss.parameters():
        if param.grad is not None:
            dist_utils.all_reduce_sum(param.grad, ctx)
            param.grad.div_(ctx.world_size)


def _extra_eval_models(loss: nn.Module) -> dict[str, nn.Module]:
    """Networks the loss trains besides the student (``loss.eval_models()``), evaluated too."""
    hook = getattr(loss, "eval_models", None)
    return dict(hook()) if callable(hook) else {}


def _final(run_dir: RunDir, record: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's metrics (from this session, or metrics.jsonl if nothing ran now)."""
    if not record:
        records = run_dir.read_metrics()
        record = records[-1] if records else {}
    return {k: record[k] for k in ("epoch", "train", "val", "test") if k in record}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
