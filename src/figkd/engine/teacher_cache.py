"""Teacher-logit cache: a frozen teacher's logits for every augmented view, computed once.

A frozen teacher gives the same logits for the same input pixels, so its forward pass
can be paid once instead of once per epoch, method, student and seed.  The CIFAR-style
augmentation - ``RandomCrop(size, padding)`` with zero padding, then a horizontal flip
with p = 0.5 - has a finite view space: ``(2p + 1)**2`` crop offsets times 2 flips,
162 views at 32 px / padding 4.  :func:`build_view_logits` runs the teacher once on
every (sample, view) pair of the uint8 training cache, through the same
:class:`~figkd.data.BatchAugment` arithmetic the training batches use, and stores the
logits as float16 in an ``(N, V, C)`` tensor.  During training the fast-path loader
reports each batch's crop offsets and flips, :meth:`CropFlipViews.view_ids` turns them
into view ids, and the teacher's logits are one gather away.  The student sees exactly
the images (and the augmentation distribution) of a live-teacher run; only the
source of the teacher's logits changes.  The teacher runs under the run's own autocast
(``train.amp``), as the live teacher does inside the training step, so a cached logit is
the live one up to float16 storage and the kernels a batch size picks.

The file is keyed by a SHA-256 over what the logits depend on: dataset name, split,
sample count and the images themselves, the teacher checkpoint's SHA-256, the
transform (size, padding, flip, mean, std, pixel scale), the precision the teacher ran in
and the storage dtype.  It is
written atomically (temp file, fsync, ``os.replace``) under ``teacher.cache_dir`` (default
``.cache/teacher_logits/`` in the working directory) and reused by any later run with
the same key.  A file whose stored key differs from the expected one is an error that
names the differing fields.  Runs started side by side take turns extending the file
(a lock beside it, engine/file_lock.py), so no teacher forward is computed twice.

Two-view methods (MLKD, ``num_views == 2``) get their weak view - the same crop/flip
draw - from the cache and score only the strong view (RandAugment, a continuous view
space) with the live teacher: one teacher forward per step instead of two.  Methods that
need the teacher's features (``needs_features``) or the images (``needs_images``) keep
the live teacher; :func:`resolve_teacher_cache` logs one line saying so and records the
choice for ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from figkd.data import BatchAugment, SmallImagePreset, get_preset
from figkd.data.planned_crop import CropPlan
from figkd.distiller import num_views
from figkd.engine.checkpoint import save_atomic
from figkd.engine.data import train_preset
from figkd.engine.file_lock import exclusive
from figkd.engine.precision import autocast

if TYPE_CHECKING:  # planned_cache imports this module
    from figkd.engine.planned_cache import PlannedLogitCache

FORMAT = 1
DTYPES = {"float16": torch.float16, "float32": torch.float32}


class CacheKeyMismatchError(ValueError):
    """A cache file was built for other data, teacher or transform than the run's."""


class CacheRangeError(ValueError):
    """The teacher's logits cannot be stored in the cache's dtype (or are not finite)."""


def check_range(non_finite: int, peak: float, dtype: torch.dtype) -> None:
    """Refuse teacher logits the cache cannot hold: ``non_finite`` NaN/inf values, or a
    largest finite ``|z|`` of ``peak`` beyond ``dtype``'s range.

    float16 tops out at 65504: a diverged or unnormalised teacher's logits would become
    inf in the table and surface much later as a "non-finite teacher logits" stop.
    """
    if non_finite:
        raise CacheRangeError(
            "the teacher gives non-finite logits on some training views; check the teacher "
            "checkpoint (set teacher.cache=none to see where the live teacher fails)"
        )
    limit = torch.finfo(dtype).max
    if peak > limit:
        raise CacheRangeError(
            f"the teacher's logits reach |z| = {peak:.4g}, beyond {dtype}'s range ({limit:.6g}); "
            "set teacher.cache_dtype=float32 (or teacher.cache=none)"
        )


class LogitRange:
    """The non-finite count and largest finite ``|z|`` of every batch a build adds, kept on
    the device and read by :meth:`check` once: reading them per batch would make the build
    wait for the GPU at every batch."""

    def __init__(self, device: torch.device | str) -> None:
        self.peak = torch.zeros((), device=device)
        self.non_finite = torch.zeros((), dtype=torch.long, device=device)

    def add(self, logits: Tensor) -> None:
        if not logits.numel():
            return
        finite = torch.isfinite(logits)
        self.non_finite += (~finite).sum()
        self.peak = torch.maximum(self.peak, logits.where(finite, 0.0).abs().amax())

    def check(self, dtype: torch.dtype) -> None:
        """:func:`check_range` on everything added so far (one device-to-host read)."""
        check_range(int(self.non_finite), float(self.peak), dtype)


def stored_logits(logits: Tensor, dtype: torch.dtype) -> Tensor:
    """``logits`` (float32) cast to the cache's ``dtype``, refusing what the cast would break
    (:func:`check_range`)."""
    seen = LogitRange(logits.device)
    seen.add(logits)
    seen.check(dtype)
    return logits.to(dtype)


# --------------------------------------------------------------------------- view space


@dataclass(frozen=True)
class CropFlipViews:
    """The finite view space of ``RandomCrop(size, padding)`` (zero padding) + optional flip.

    View ``v`` is crop offset ``(top, left)`` (each in ``0..2*padding``, the top-left corner
    of the crop in the zero-padded image) and flip ``f`` (0/1)::

        v = (top * (2*padding + 1) + left) * (2 if flip else 1) + f

    so 32 px / padding 4 / flip has 9 * 9 * 2 = 162 views; view 0 is the crop at the
    padded image's top-left corner, unflipped; the centre crop (the test image) is
    ``view_id(padding, padding, 0)``.
    """

    size: int
    padding: int
    flip: bool

    @property
    def offsets(self) -> int:
        return 2 * self.padding + 1

    @property
    def flips(self) -> int:
        return 2 if self.flip else 1

    def __len__(self) -> int:
        return self.offsets**2 * self.flips

    @classmethod
    def from_preset(cls, preset: Any) -> CropFlipViews | None:
        """The view space of a preset's training transform, or None if it is not finite."""
        spec = get_preset(preset)
        if not isinstance(spec, SmallImagePreset) or not spec.fast_path or spec.rotate:
            return None
        return cls(int(spec.size), int(spec.padding), bool(spec.flip))

    def view_ids(self, params: dict[str, Tensor], batch: int) -> Tensor:
        """View ids of a batch from :meth:`BatchAugment.sample`'s ``top``/``left``/``flip``."""
        zero = torch.zeros(batch, dtype=torch.long)
        top = params.get("top", zero + self.padding).long()
        left = params.get("left", zero + self.padding).long()
        flip = params.get("flip", zero.bool()).long()
        if self.padding == 0:  # no crop: the only offset is 0
            top, left = zero, zero
        return (top * self.offsets + left) * self.flips + flip * (self.flips - 1)

    def params(self, view: int, batch: int) -> dict[str, Tensor]:
        """The :meth:`BatchAugment.sample`-style parameters of ``batch`` copies of ``view``."""
        if not 0 <= view < len(self):
            raise ValueError(f"view {view} is outside 0..{len(self) - 1}")
        return self.params_of(torch.full((batch,), view, dtype=torch.long))

    def params_of(self, views: Tensor) -> dict[str, Tensor]:
        """Per-sample parameters of a tensor of view ids (the inverse of :meth:`view_ids`)."""
        views = views.cpu().long()
        if len(views) and not (0 <= int(views.min()) and int(views.max()) < len(self)):
            raise ValueError(f"view ids must lie in 0..{len(self) - 1}")
        flip, crop = views % self.flips, views // self.flips
        out: dict[str, Tensor] = {}
        if self.padding:
            out["top"], out["left"] = crop // self.offsets, crop % self.offsets
        if self.flip:
            out["flip"] = flip.bool()
        return out

    def describe(self, view: int) -> tuple[int, int, bool]:
        """``(top, left, flipped)`` of ``view``."""
        p = self.params(view, 1)
        top = int(p["top"][0]) if "top" in p else self.padding
        left = int(p["left"][0]) if "left" in p else self.padding
        return top, left, bool(p["flip"][0]) if "flip" in p else False


# --------------------------------------------------------------------------- keys


def tensor_sha256(tensor: Tensor) -> str:
    """SHA-256 of a tensor's bytes (C-contiguous, CPU)."""
    array = tensor.detach().cpu().contiguous().numpy()
    return hashlib.sha256(array.reshape(-1).view("uint8").data).hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        value = value.float() if value.dtype == torch.bfloat16 else value  # numpy has no bf16
        digest.update(bytes.fromhex(tensor_sha256(value)))
    return digest.hexdigest()


def cache_fields(
    *,
    dataset: str,
    split: str,
    images: Tensor,
    teacher_sha256: str,
    preset: Any,
    scale: float,
    dtype: str,
    num_classes: int,
    amp: str = "none",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the cached logits depend on, as plain data (stored in the file).

    ``amp`` is the autocast the teacher runs under (``train.amp``): bf16 logits differ from
    float32 ones by more than float16 storage does, so each precision has its own file."""
    spec = get_preset(preset)
    views = CropFlipViews.from_preset(spec)
    if views is None:
        raise ValueError(f"preset {spec.name!r} has no finite view space (rotation or resize crop)")
    return {
        "format": FORMAT,
        "dataset": dataset,
        "split": split,
        "num_samples": int(images.shape[0]),
        "images_sha256": tensor_sha256(images),
        "teacher_sha256": teacher_sha256,
        "num_classes": int(num_classes),
        "transform": {
            "kind": "crop_flip",
            "size": views.size,
            "padding": views.padding,
            "flip": views.flip,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "scale": float(scale),
        },
        "input_size": list(images.shape[1:]),
        "num_views": len(views),
        "amp": amp,
        "dtype": dtype,
        **(extra or {}),
    }


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def check_stored_key(
    path: str | os.PathLike[str], state: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    """Refuse a cache file whose key does not match its own fields, or the run's (``expected``).

    The error names every differing field, so a user sees *why* the file does not apply.
    """
    fields, key = state["fields"], state["key"]
    if cache_key(fields) != key:
        raise CacheKeyMismatchError(f"{path}: stored key does not match its fields; delete it")
    if expected is not None and key != cache_key(expected):
        keys = set(fields) | set(expected)
        diff = sorted(k for k in keys if fields.get(k) != expected.get(k))
        shown = "; ".join(f"{k}: file {fields.get(k)!r} != run {expected.get(k)!r}" for k in diff)
        raise CacheKeyMismatchError(
            f"teacher-logit cache {path} was built for other inputs ({shown}); "
            "delete it or point teacher.cache_dir elsewhere"
        )


# --------------------------------------------------------------------------- the cache


class ViewLogitCache:
    """``logits[sample, view]`` of a frozen teacher; ``lookup(index, params)`` per batch.

    ``filled[sample, view]`` says which entries hold logits; the others are NaN, so a
    lookup of a view that was never computed makes the loss non-finite (the trainer
    stops and names the term) rather than silently training on zeros.
    """

    def __init__(
        self,
        logits: Tensor,
        views: CropFlipViews,
        fields: dict[str, Any] | None = None,
        filled: Tensor | None = None,
    ) -> None:
        if logits.dim() != 3 or logits.shape[1] != len(views):
            raise ValueError(
                f"logits must be (samples, {len(views)} views, classes), got {tuple(logits.shape)}"
            )
        self.logits = logits
        self.views = views
        self.fields = fields or {}
        self.key = cache_key(self.fields) if fields else ""
        if filled is None:
            filled = torch.ones(logits.shape[:2], dtype=torch.bool)
        self.filled = filled.cpu()

    @classmethod
    def empty(
        cls, samples: int, classes: int, views: CropFlipViews, fields: dict[str, Any] | None = None,
        *, dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu",
    ) -> ViewLogitCache:
        logits = torch.full((samples, len(views), classes), math.nan, dtype=dtype, device=device)
        return cls(logits, views, fields, torch.zeros(samples, len(views), dtype=torch.bool))

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()

    def to(self, device: torch.device | str) -> ViewLogitCache:
        self.logits = self.logits.to(device)
        return self

    def lookup(self, index: Tensor, params: Any, device: torch.device | None = None) -> Tensor:
        """float32 teacher logits of samples ``index`` under augmentation ``params`` (of the
        weak view when the loader yields a ``(weak, strong)`` pair)."""
        params = weak_view_params(params)
        views = self.views.view_ids({k: v.cpu() for k, v in params.items()}, len(index))
        where = self.logits.device
        out = self.logits[index.to(where), views.to(where)]
        return out.to(device or where, non_blocking=True).float()

    @torch.no_grad()
    def fill(
        self,
        teacher: nn.Module,
        images: Tensor,
        preset: Any,
        needed: Tensor | None = None,
        *,
        scale: float = 255.0,
        batch_size: int = 512,
        channels_last: bool = False,
        amp: str = "none",
        log: Callable[[str], None] | None = None,
    ) -> int:
        """Run the teacher on every ``needed`` (sample, view) pair not yet filled.

        ``needed`` is a bool (samples, views) mask (default: every view).  Pairs of
        mixed views share a batch: :meth:`BatchAugment.apply` - the training batches'
        own crop, flip and normalisation arithmetic - takes per-sample parameters, so
        a cached logit comes from exactly the pixels a live teacher would see.  The
        teacher runs in eval mode under ``amp``'s autocast (the live teacher's precision).
        Returns the number of pairs computed.
        """
        augment = BatchAugment(preset, train=True, scale=scale)
        todo = ~self.filled if needed is None else needed.cpu() & ~self.filled
        samples, views = todo.nonzero(as_tuple=True)
        total = len(samples)
        was_training = teacher.training
        teacher.eval()
        device = self.logits.device
        seen = LogitRange(device)  # checked once after the last batch
        start_time = last_log = time.perf_counter()
        for done in range(0, total, batch_size):
            index = samples[done : done + batch_size]
            view = views[done : done + batch_size]
            params = self.views.params_of(view)
            x = augment.apply(images[index.to(images.device)].to(device), params)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = teacher(x).float()
            seen.add(logits)
            self.logits[index.to(device), view.to(device)] = logits.to(self.logits.dtype)
            now = time.perf_counter()
            if log is not None and now - last_log > 30:
                rate = (done + len(index)) / (now - start_time)
                log(f"teacher cache: {done + len(index)}/{total} views, {rate:.0f} img/s, "
                    f"{(total - done - len(index)) / rate / 60:.1f} min left")
                last_log = now
        seen.check(self.logits.dtype)  # before any pair counts as filled
        self.filled |= todo
        teacher.train(was_training)
        return total

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file, fsync, ``os.replace``): a run killed mid-write leaves
        the previous file, never half of one."""
        state = {"format": FORMAT, "key": self.key, "fields": self.fields,
                 "logits": self.logits.cpu().contiguous(), "filled": self.filled}
        return save_atomic(state, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], expected: dict[str, Any] | None = None
    ) -> ViewLogitCache:
        """Read a cache file; with ``expected`` fields, refuse a file built for anything else."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CacheKeyMismatchError(
                f"cannot read the teacher-logit cache {path}: it is damaged, truncated or holds "
                f"objects besides tensors ({type(error).__name__}: {reason}); delete it and the "
                "next run rebuilds it"
            ) from error
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CacheKeyMismatchError(
                f"{path} is not a figkd teacher-logit cache of format {FORMAT}; delete it"
            )
        check_stored_key(path, state, expected)
        fields = state["fields"]
        t = fields["transform"]
        views = CropFlipViews(int(t["size"]), int(t["padding"]), bool(t["flip"]))
        logits, filled = state["logits"], state["filled"]
        shape = (fields["num_samples"], len(views), fields["num_classes"])
        if tuple(logits.shape) != shape or tuple(filled.shape) != shape[:2]:
            raise CacheKeyMismatchError(
                f"{path}: logits are {tuple(logits.shape)}, expected {shape}; delete it"
            )
        return cls(logits, views, fields, filled)


def build_view_logits(
    teacher: nn.Module,
    images: Tensor,
    preset: Any,
    *,
    scale: float = 255.0,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    dtype: torch.dtype = torch.float16,
    channels_last: bool = False,
    amp: str = "none",
    log: Callable[[str], None] | None = None,
) -> Tensor:
    """``(N, V, C)`` teacher logits of every sample of uint8 ``images`` in every view."""
    views = CropFlipViews.from_preset(preset)
    if views is None:
        raise ValueError(f"preset {get_preset(preset).name!r} has no finite view space")
    if len(images) == 0:
        raise ValueError("cannot cache teacher logits of an empty dataset")
    with torch.no_grad():
        probe = images[:1].to(device)
        was_training = teacher.training
        classes = teacher.eval()(BatchAugment(preset, False, scale).apply(probe, {})).shape[1]
        teacher.train(was_training)
    cache = ViewLogitCache.empty(len(images), classes, views, dtype=dtype, device=device)
    cache.fill(teacher, images, preset, scale=scale, batch_size=batch_size,
               channels_last=channels_last, amp=amp, log=log)
    return cache.logits


def load_or_build(
    teacher: nn.Module,
    fields: dict[str, Any],
    images: Tensor,
    preset: Any,
    cache_dir: str | os.PathLike[str],
    *,
    needed: Tensor | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    channels_last: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[ViewLogitCache, dict[str, Any]]:
    """The cache for ``fields`` from ``cache_dir``, completed and saved when pairs are missing.

    ``needed``: bool (samples, views) mask of the pairs the run will look up (default:
    all).  Pairs already in the file are reused; missing ones are computed, added and
    the file rewritten atomically, so runs with other seeds grow the same file.
    Returns the cache (logits on ``device``) and a record: status ("hit": nothing to
    compute, "extended", "built"), path, key, views, pairs computed / filled, size,
    seconds.
    """
    key = cache_key(fields)
    path = Path(cache_dir) / f"{fields['dataset']}-{fields['split']}-{key[:24]}.pt"
    start = time.perf_counter()
    t = fields["transform"]
    views = CropFlipViews(int(t["size"]), int(t["padding"]), bool(t["flip"]))
    with exclusive(path, log):  # parallel runs extend the file in turn (engine/file_lock.py)
        if path.exists():
            cache = ViewLogitCache.load(path, expected=fields).to(device)
            existed = True
        else:
            cache = ViewLogitCache.empty(fields["num_samples"], fields["num_classes"], views,
                                         fields, dtype=DTYPES[fields["dtype"]], device=device)
            existed = False
        computed = cache.fill(teacher, images, preset, needed, scale=t["scale"],
                              batch_size=batch_size, channels_last=channels_last,
                              amp=fields.get("amp", "none"), log=log)
        if computed:
            cache.save(path)
    status = "hit" if not computed else ("extended" if existed else "built")
    record = {
        "status": status,
        "path": str(path.resolve()),
        "key": key,
        "views": len(cache.views),
        "samples": len(cache),
        "computed": computed,
        "filled": int(cache.filled.sum()),
        "dtype": fields["dtype"],
        "size_mb": round(cache.nbytes / 2**20, 1),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return cache, record


# --------------------------------------------------------------------------- engine glue


def weak_view_params(params: Any) -> dict[str, Tensor]:
    """The crop/flip parameters of a batch: ``params`` itself, or the weak half of the
    ``(weak, strong)`` pair a two-view loader yields (the strong view is never cached)."""
    return params[0] if isinstance(params, tuple) else params


def live_teacher_reason(loss: nn.Module) -> str | None:
    """Why ``loss`` needs the live teacher for every view (None when cached logits serve
    its (weak) training view)."""
    if getattr(loss, "needs_features", False):
        return "it needs the teacher's features"
    if getattr(loss, "needs_images", False):
        return "it needs the input images"
    return None


def resolve_teacher_cache(
    cfg: Any,
    data: Any,
    teacher: nn.Module | None,
    teacher_record: dict[str, Any] | None,
    loss: nn.Module,
    device: torch.device,
    ctx: Any,
    first_epoch: int = 1,
) -> tuple[ViewLogitCache | PlannedLogitCache | None, dict[str, Any]]:
    """Apply ``teacher.cache`` (none / auto / on): the cache to use, or None, and a record.

    With ``teacher.cache_views=used`` only the views of epochs ``first_epoch`` .. end are
    computed: a resumed run does not pay for the epochs it has already trained.

    Method reasons (two views, features, images) fall back to the live teacher in
    both modes with one log line; data reasons (not the fast path, no finite view
    space, over ``teacher.cache_max_gb``) fall back under "auto" and are an error
    under "on", and so are teacher logits the cache's dtype cannot hold.  Under DDP rank 0
    builds the file; the other ranks wait, then load it.
    """
    mode = cfg.teacher.cache
    record: dict[str, Any] = {"mode": mode, "status": "off"}
    if mode == "none" or teacher is None:
        return None, record

    def say(text: str) -> None:
        if ctx.is_main:
            print(text, flush=True)

    reason = live_teacher_reason(loss)
    if reason is not None:
        say(f"teacher cache: using the live teacher for {type(loss).__name__}: {reason}")
        return None, {**record, "status": "live", "reason": reason}

    spec = train_preset(cfg)
    two_views = num_views(loss) == 2
    if two_views and data.path != "fast":
        reason = ("it scores a second, strongly augmented view, and only the fast path's "
                  "weak view can come from the cache (data.loader=torch)")
        say(f"teacher cache: using the live teacher for {type(loss).__name__}: {reason}")
        return None, {**record, "status": "live", "reason": reason}
    if data.path == "torch" and CropPlan.from_preset(spec) is not None:
        # RandomResizedCrop presets: pre-sampled crops per epoch (engine/planned_cache.py)
        from figkd.engine.planned_cache import resolve_planned_cache

        return resolve_planned_cache(cfg, data, teacher, teacher_record, spec, device, ctx,
                                     record, say, first_epoch)
    views = CropFlipViews.from_preset(spec)
    source = getattr(data.train, "loader", None)
    problem = None
    if data.path != "fast" or source is None:
        problem = "the training data is not on the in-memory fast path (data.loader=torch)"
    elif views is None:
        problem = f"preset {spec.name!r} has no finite view space (random rotation)"
    else:
        gb = len(source.images) * len(views) * data.num_classes * (
            2 if cfg.teacher.cache_dtype == "float16" else 4) / 1e9
        if gb > cfg.teacher.cache_max_gb:
            problem = (f"{len(source.images)} samples x {len(views)} views x "
                       f"{data.num_classes} classes need {gb:.1f} GB > teacher.cache_max_gb="
                       f"{cfg.teacher.cache_max_gb}")
    if problem is not None:
        if mode == "on":
            raise ValueError(f"teacher.cache=on: {problem}; use teacher.cache=auto or none")
        say(f"teacher cache: using the live teacher: {problem}")
        return None, {**record, "status": "live", "reason": problem}
    assert source is not None and views is not None  # otherwise `problem` is set above

    images = source.images
    sha = (teacher_record or {}).get("sha256") or state_dict_sha256(teacher)
    fields = cache_fields(
        dataset=cfg.data.dataset,
        split="train",
        images=images,
        teacher_sha256=sha,
        preset=spec,
        scale=source.augment.scale,
        dtype=cfg.teacher.cache_dtype,
        num_classes=data.num_classes,
        amp=cfg.train.amp,
        extra={"val_fraction": cfg.data.val_fraction, "val_seed": cfg.data.val_seed},
    )
    needed = None
    if cfg.teacher.cache_views == "used":  # only the (sample, view) pairs this run will draw
        epochs = range(first_epoch, cfg.train.epochs + 1)
        needed = used_views(data.train, views, len(images), epochs)
    kwargs = {"needed": needed, "device": device, "batch_size": cache_batch_size(cfg, device),
              "channels_last": cfg.train.channels_last, "log": say}
    plain = getattr(teacher, "_orig_mod", teacher)
    cache, info = build_on_rank0(
        lambda: load_or_build(plain, fields, images, spec, cfg.teacher.cache_dir, **kwargs),
        ctx, mode, record, say,
    )
    if cache is None:
        return None, info
    say(f"teacher cache ({info['status']}): {info['path']}, {info['samples']} samples x "
        f"{info['views']} views ({cfg.teacher.cache_views}), {info['computed']} teacher "
        f"forwards now, {info['filled']} stored, {info['size_mb']} MB, {info['seconds']:.1f} s")
    if two_views:
        info = {**info, "serves": "weak view (the strong view uses the live teacher)"}
        say(f"teacher cache: {type(loss).__name__}'s weak view from the cache, its strong "
            "view from the live teacher")
    return cache, {**record, **info}


def cache_batch_size(cfg: Any, device: torch.device) -> int:
    """Teacher forwards per batch while building a cache: ``teacher.cache_batch_size``, else
    the eval batch on a GPU (GPUs like big batches) and the training batch on a CPU (there
    batch 64 ran ~12 % faster than 256 for ResNet32x4)."""
    if cfg.teacher.cache_batch_size is not None:
        return int(cfg.teacher.cache_batch_size)
    return max(cfg.data.eval_batch_size if device.type == "cuda" else cfg.data.batch_size, 1)


def build_on_rank0(
    build: Callable[[], tuple[Any, dict[str, Any]]],
    ctx: Any,
    mode: str,
    record: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[Any, dict[str, Any]]:
    """Rank 0 builds the file, the other ranks wait and then load it.  Logits the cache
    cannot hold (:class:`CacheRangeError`) mean the live teacher under "auto" and an error
    under "on", decided on rank 0 and applied on every rank: ``(None, record)``."""
    from figkd.engine import distributed as dist_utils  # local: avoid an import cycle

    result: tuple[Any, dict[str, Any]] | None = None
    problem: str | None = None
    if ctx.is_main:
        try:
            result = build()
        except CacheRangeError as error:
            problem = str(error)
    problem = dist_utils.broadcast_object(problem, ctx)  # type: ignore[assignment]
    dist_utils.barrier(ctx)
    if problem is not None:
        if mode == "on":
            raise ValueError(f"teacher.cache=on: {problem}")
        say(f"teacher cache: using the live teacher: {problem}")
        return None, {**record, "status": "live", "reason": problem}
    if result is None:
        result = build()
    return result


def used_views(source: Any, views: CropFlipViews, samples: int, epochs: Any) -> Tensor:
    """bool (samples, views): the pairs ``source.plan(e)`` draws over ``epochs`` (no images).

    Under DDP the plans of every rank are replayed, so the file rank 0 writes covers
    the views all ranks will look up.
    """
    mask = torch.zeros(samples, len(views), dtype=torch.bool)
    loader = getattr(source, "loader", source)
    own_rank = getattr(loader, "rank", 0)
    try:
        for rank in range(getattr(loader, "num_replicas", 1)):
            if hasattr(loader, "rank"):
                loader.rank = rank
            for epoch in epochs:
                for index, params in source.plan(epoch):
                    mask[index, views.view_ids(weak_view_params(params), len(index))] = True
    finally:
        if hasattr(loader, "rank"):
            loader.rank = own_rank
    return mask


def breakeven_runs(build_images: int, images_per_run: int) -> float:
    """Runs after which a cache of ``build_images`` teacher forwards has paid for itself."""
    return math.inf if images_per_run <= 0 else build_images / images_per_run
