"""Teacher logits of pre-sampled RandomResizedCrop views: an ``(E, N, C)`` table per plan.

For presets whose training transform is ``RandomResizedCrop`` (+ flip) on the per-image
DataLoader path, the views cannot be enumerated, but they can be fixed in advance:
:class:`~figkd.data.planned_crop.CropPlan` samples every (epoch, sample) crop box and flip
from a generator seeded by ``(train.seed, epoch)``, the training Dataset applies the
planned row instead of drawing, and the teacher's logits of each planned view are
computed once into ``logits[epoch - 1, sample]``.  Any later run with the same plan
(seed, epochs, data, preset) and teacher - another method, another student - reads them
instead of running the teacher.  A different seed is a different plan and a different
file.

The key covers: dataset name, split, sample count, a SHA-256 of the sample paths and
labels, the plan (seed, epochs, sampler version, SHA-256 of the ``(E, N, 5)`` parameter
table, which also covers the image sizes), the teacher checkpoint's SHA-256, the
transform (crop size, scale, ratio, flip p, interpolation, antialias, mean, std), class
count and storage dtype.  Files are written atomically; a stored key that differs is an
error naming the differing fields.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from figkd.data.planned_crop import PlannedDataset, dataset_sha256
from figkd.engine.file_lock import exclusive
from figkd.engine.precision import autocast
from figkd.engine.teacher_cache import (
    DTYPES,
    CacheKeyMismatchError,
    LogitRange,
    build_on_rank0,
    cache_batch_size,
    cache_key,
    check_stored_key,
    state_dict_sha256,
    tensor_sha256,
)

FORMAT = 1


class PlannedLogitCache:
    """``logits[epoch - 1, sample]`` of a frozen teacher on the planned view; NaN if not filled."""

    def __init__(self, logits: Tensor, fields: dict[str, Any] | None = None,
                 filled: Tensor | None = None) -> None:
        if logits.dim() != 3:
            raise ValueError(
                f"logits must be (epochs, samples, classes), got {tuple(logits.shape)}")
        self.logits = logits
        self.fields = fields or {}
        self.key = cache_key(self.fields) if fields else ""
        self.filled = (torch.ones(logits.shape[:2], dtype=torch.bool) if filled is None
                       else filled.cpu())

    @classmethod
    def empty(cls, epochs: int, samples: int, classes: int, fields: dict[str, Any] | None = None,
              *, dtype: torch.dtype = torch.float16,
              device: torch.device | str = "cpu") -> PlannedLogitCache:
        logits = torch.full((epochs, samples, classes), float("nan"), dtype=dtype, device=device)
        return cls(logits, fields, torch.zeros(epochs, samples, dtype=torch.bool))

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()

    def lookup(self, epoch: int, index: Tensor, device: torch.device | None = None) -> Tensor:
        """float32 teacher logits of samples ``index`` in their planned view of ``epoch``."""
        where = self.logits.device
        out = self.logits[epoch - 1][index.to(where)]
        return out.to(device or where, non_blocking=True).float()

    @torch.no_grad()
    def fill(self, teacher: nn.Module, dataset: PlannedDataset, needed: Tensor, *,
             batch_size: int = 256, num_workers: int = 0, channels_last: bool = False,
             amp: str = "none", log: Callable[[str], None] | None = None) -> int:
        """Run the teacher (eval mode, under ``amp``'s autocast like the live teacher) on every
        ``needed`` (epoch, sample) not filled.

        The images come from ``dataset`` itself - the same decode, planned crop, flip and
        normalisation the training batches use.  Returns the number of views computed.
        """
        todo = needed.cpu() & ~self.filled
        total, done = int(todo.sum()), 0
        was_training = teacher.training
        teacher.eval()
        device = self.logits.device
        start = last = time.perf_counter()
        try:
            for epoch in range(1, todo.shape[0] + 1):
                seen = LogitRange(device)  # checked once per epoch, before it counts as filled
                index = todo[epoch - 1].nonzero().flatten()
                if not len(index):
                    continue
                dataset.set_epoch(epoch)
                loader = DataLoader(Subset(dataset, index.tolist()), batch_size=batch_size,
                                    shuffle=False, num_workers=num_workers,
                                    generator=torch.Generator())  # leave the global RNG alone
                at = 0
                for images, _ in loader:
                    rows = index[at : at + len(images)]
                    at += len(images)
                    x = images.to(device)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast(device, amp):
                        out = teacher(x).float()
                    seen.add(out)
                    self.logits[epoch - 1, rows.to(device)] = out.to(self.logits.dtype)
                    done += len(images)
                    now = time.perf_counter()
                    if log is not None and now - last > 30:
                        rate = done / (now - start)
                        log(f"teacher cache (planned crops): {done}/{total} views, "
                            f"{rate:.0f} img/s, {(total - done) / rate / 60:.1f} min left")
                        last = now
                seen.check(self.logits.dtype)
                self.filled[epoch - 1] |= todo[epoch - 1]
        finally:
            teacher.train(was_training)
        return total

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temp file in the same folder, then ``os.replace``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save({"format": FORMAT, "kind": "planned", "key": self.key,
                        "fields": self.fields, "logits": self.logits.cpu().contiguous(),
                        "filled": self.filled}, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             expected: dict[str, Any] | None = None) -> PlannedLogitCache:
        """Read a file; with ``expected`` fields, refuse one built for anything else."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (not isinstance(state, dict) or state.get("format") != FORMAT
                or state.get("kind") != "planned"):
            raise CacheKeyMismatchError(
                f"{path} is not a figkd planned-crop teacher-logit cache of format {FORMAT}; "
                "delete it")
        check_stored_key(path, state, expected)
        fields = state["fields"]
        shape = (fields["plan"]["epochs"], fields["num_samples"], fields["num_classes"])
        logits, filled = state["logits"], state["filled"]
        if tuple(logits.shape) != shape or tuple(filled.shape) != shape[:2]:
            raise CacheKeyMismatchError(
                f"{path}: logits are {tuple(logits.shape)}, expected {shape}; delete it")
        return cls(logits, fields, filled)


def planned_fields(*, dataset: str, split: str, planned: PlannedDataset, epochs: int,
                   teacher_sha256: str, num_classes: int, dtype: str,
                   mean: Any, std: Any, amp: str = "none",
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the planned logits depend on, as plain data (stored in the file); ``amp``:
    the autocast the teacher runs under, as in :func:`~figkd.engine.teacher_cache.cache_fields`."""
    table = planned.plan.table(planned.sizes, planned.seed, epochs)
    return {
        "format": FORMAT,
        "dataset": dataset,
        "split": split,
        "num_samples": len(planned),
        "samples_sha256": dataset_sha256(planned.dataset),
        "plan": {"seed": planned.seed, "epochs": int(epochs), "sha256": tensor_sha256(table)},
        "teacher_sha256": teacher_sha256,
        "num_classes": int(num_classes),
        "transform": {**planned.plan.describe(), "mean": list(mean), "std": list(std)},
        "amp": amp,
        "dtype": dtype,
        **(extra or {}),
    }


def load_or_build_planned(teacher: nn.Module, fields: dict[str, Any], planned: PlannedDataset,
                          cache_dir: str | os.PathLike[str], needed: Tensor, *,
                          device: torch.device | str = "cpu", batch_size: int = 256,
                          num_workers: int = 0, channels_last: bool = False,
                          log: Callable[[str], None] | None = None,
                          ) -> tuple[PlannedLogitCache, dict[str, Any]]:
    """The planned cache of ``fields``, with the ``needed`` (epoch, sample) views filled."""
    key = cache_key(fields)
    path = Path(cache_dir) / f"{fields['dataset']}-{fields['split']}-plan-{key[:24]}.pt"
    start = time.perf_counter()
    with exclusive(path, log):  # runs of one plan seed extend the file in turn
        if path.exists():
            cache, existed = PlannedLogitCache.load(path, expected=fields), True
            cache.logits = cache.logits.to(device)
        else:
            cache = PlannedLogitCache.empty(fields["plan"]["epochs"], fields["num_samples"],
                                            fields["num_classes"], fields,
                                            dtype=DTYPES[fields["dtype"]], device=device)
            existed = False
        computed = cache.fill(teacher, planned, needed, batch_size=batch_size,
                              num_workers=num_workers, channels_last=channels_last,
                              amp=fields.get("amp", "none"), log=log)
        if computed:
            cache.save(path)
    record = {
        "status": "hit" if not computed else ("extended" if existed else "built"),
        "path": str(path.resolve()),
        "key": key,
        "views": "planned",
        "plan_seed": fields["plan"]["seed"],
        "epochs": fields["plan"]["epochs"],
        "samples": fields["num_samples"],
        "computed": computed,
        "filled": int(cache.filled.sum()),
        "dtype": fields["dtype"],
        "size_mb": round(cache.nbytes / 2**20, 1),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return cache, record


def resolve_planned_cache(cfg: Any, data: Any, teacher: nn.Module, teacher_record: Any,
                          spec: Any, device: torch.device, ctx: Any, record: dict[str, Any],
                          say: Callable[[str], None],
                          first_epoch: int = 1) -> tuple[PlannedLogitCache | None, dict[str, Any]]:
    """``teacher.cache`` for a RandomResizedCrop preset on the DataLoader path.

    Called by :func:`~figkd.engine.teacher_cache.resolve_teacher_cache` once the method
    is known to need only the teacher's logits of the training view.  Switches the
    training source to the planned crops, then loads / builds the logits.
    """
    source = data.train
    base = getattr(getattr(source, "dataset", None), "dataset", None)
    planned = PlannedDataset.from_dataset(base, cfg.train.seed) if base is not None else None
    problem = None
    if planned is None or not hasattr(source, "use_plan"):
        problem = (f"preset {spec.name!r}'s training data cannot take planned crops "
                   "(no RandomResizedCrop + flip pipeline over image files)")
    else:
        epochs, n = cfg.train.epochs, len(planned)
        gb = epochs * n * data.num_classes * (
            2 if cfg.teacher.cache_dtype == "float16" else 4) / 1e9
        if gb > cfg.teacher.cache_max_gb:
            problem = (f"{epochs} epochs x {n} samples x {data.num_classes} classes need "
                       f"{gb:.1f} GB > teacher.cache_max_gb={cfg.teacher.cache_max_gb}")
    if problem is not None:
        if cfg.teacher.cache == "on":
            raise ValueError(f"teacher.cache=on: {problem}; use teacher.cache=auto or none")
        say(f"teacher cache: using the live teacher: {problem}")
        return None, {**record, "status": "live", "reason": problem}
    assert planned is not None  # otherwise `problem` is set above

    plain_path = source.dataset
    source.use_plan(planned)
    sha = (teacher_record or {}).get("sha256") or state_dict_sha256(teacher)
    fields = planned_fields(
        dataset=cfg.data.dataset, split="train", planned=planned, epochs=epochs,
        teacher_sha256=sha, num_classes=data.num_classes, dtype=cfg.teacher.cache_dtype,
        mean=spec.mean, std=spec.std, amp=cfg.train.amp,
        extra={"val_fraction": cfg.data.val_fraction, "val_seed": cfg.data.val_seed},
    )
    needed = torch.zeros(epochs, n, dtype=torch.bool)
    if cfg.teacher.cache_views == "all":
        needed[:] = True
    else:  # the (epoch, sample) views this run (every DDP rank) will still train on
        for epoch in range(first_epoch, epochs + 1):
            for rank in range(ctx.world_size):
                needed[epoch - 1, source.positions(epoch, rank, ctx.world_size)] = True
    kwargs = {"device": device, "batch_size": cache_batch_size(cfg, device),
              "num_workers": cfg.data.num_workers,
              "channels_last": cfg.train.channels_last, "log": say}
    plain = getattr(teacher, "_orig_mod", teacher)
    cache, info = build_on_rank0(
        lambda: load_or_build_planned(plain, fields, planned, cfg.teacher.cache_dir, needed,
                                      **kwargs),
        ctx, cfg.teacher.cache, record, say,
    )
    if cache is None:
        source.dataset = plain_path  # the live teacher: the plain RandomResizedCrop path
        return None, info
    say(f"teacher cache ({info['status']}, planned crops, seed {fields['plan']['seed']}): "
        f"{info['path']}, {epochs} epochs x {n} samples, {info['computed']} teacher forwards "
        f"now, {info['filled']} stored, {info['size_mb']} MB, {info['seconds']:.1f} s")
    return cache, {**record, **info}
