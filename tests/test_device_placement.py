"""Device placement of every loss, checked without a GPU: the "meta" device stands in for CUDA.

Why meta stands in for CUDA
---------------------------
A tensor created inside a loss without ``device=`` lands on the CPU.  On a CPU-only
machine that is invisible: everything is on the CPU anyway.  On CUDA the first op
mixing it with the (CUDA) logits fails with "Expected all tensors to be on the same
device".  The meta device reproduces that failure mode on any machine: meta tensors
carry shapes and dtypes but no data, they live on a device that is *not* the CPU, and
mixing a meta tensor with a (non-scalar) CPU tensor raises, as CUDA does.  So running
a loss with its inputs, both networks and the loss module moved to ``meta`` exposes
every tensor created on the default device.  (``torch.set_default_device`` is no
substitute: it moves the buggy tensor too and hides the bug.)

Meta is not a perfect stand-in, so :class:`CudaPlacementGuard` (a dispatch mode) adds
CUDA's rules where meta is looser or stricter:

* some meta kernels accept a CPU operand that CUDA refuses (``index_select``,
  ``gather``, ``mm``/``bmm`` with a CPU matrix, ``torch.randn(device=..., generator=<CPU
  generator>)``); the guard checks every aten op's tensor arguments, and generators,
  itself, allowing only what CUDA allows: 0-dim CPU tensors in elementwise ops, CPU
  index tensors in ``x[idx]`` / ``x[idx] = v``, and explicit copies (``.to``/``copy_``);
* meta has no data, so data-dependent ops cannot run: ``.item()``/``int()``/``bool()``
  (``aten._local_scalar_dense``) return a stub value (0 / ``True``, or ``False`` where a
  case asks for it to reach a first-batch branch), ``nonzero`` / boolean-mask indexing
  return an empty result, and device-to-host copies (``.cpu()``) return zeros.  The
  devices involved in those ops are still checked; their values are not, and that is
  the only thing this test gives up;
* meta has no autocast and no ``torch.Generator``: ``torch.autocast("meta",
  enabled=False)`` is replayed as a disabled CPU autocast, and DiffKD's per-device
  generator is replaced by a CPU generator the guard accepts for meta tensors (it
  models a generator created on the tensors' device, which is what DiffKD does).

Each case builds the two networks and the loss on meta, runs ``setup`` (connectors,
memory banks, margins), the distiller's forward - student and teacher forward, the
loss - and the backward pass, all under the guard; no loss needs a skip (the
data-dependent steps are stubbed as above, not skipped).  The last tests keep the check
honest: DKD with a device-less ``torch.arange`` must fail, every mix CUDA refuses
(including those meta's own kernels accept) must fail, and what CUDA allows must pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from figkd.distiller import Distiller, TeacherLogitCache
from figkd.losses import LOSSES, DistillationLoss, build_loss, figkd_loss
from figkd.losses import diffkd as diffkd_module
from figkd.models import create_model

META = torch.device("meta")
CPU = torch.device("cpu")
aten = torch.ops.aten

# ----------------------------------------------------------------------------- the guard

#: ops that move data between devices on purpose
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
           aten._copy_from_and_resize.default, aten.lift_fresh.default,
           aten.lift_fresh_copy.default, aten.detach.default, aten.alias.default}
#: indexing: CUDA accepts CPU index tensors for a CUDA ``self``
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
             aten._index_put_impl_.default, aten._unsafe_index.Tensor}
#: op-name fragments of kernels that refuse even a 0-dim CPU operand on CUDA
_STRICT = ("cat", "stack", "mm", "matmul", "dot", "index_select", "gather", "scatter",
           "index_add", "index_copy", "embedding", "conv", "linear", "einsum", "take")


class DevicePlacementError(AssertionError):
    """A tensor (or generator) on the wrong device for the op: CUDA would refuse it."""


class CudaPlacementGuard(TorchDispatchMode):
    """Raise on every op that mixes devices the way CUDA refuses; stub data-dependent ops."""

    def __init__(self, scalar_bool: bool = True) -> None:
        super().__init__()
        self.scalar_bool = scalar_bool
        self.stand_in_seeds: set[int] = set()  # seeds of CPU generators modelling meta ones
        self.stubbed: set[str] = set()  # data-dependent ops answered with a stub

    def _fail(self, func: Any, detail: str) -> None:
        raise DevicePlacementError(f"{func}: {detail} (CUDA raises 'Expected all tensors "
                                   "to be on the same device' here)")

    def _check(self, func: Any, args: tuple, kwargs: dict) -> None:
        if func in _COPIES:
            return
        name = str(func)
        strict = any(part in name for part in _STRICT)
        if func in _INDEXING:
            self_t, indices = args[0], args[1]
            rest = list(args[2:]) + list(kwargs.values())
            for idx in indices or ():
                if isinstance(idx, Tensor) and idx.device not in (self_t.device, CPU):
                    self._fail(func, f"index on {idx.device} for a tensor on {self_t.device}")
            tensors = [self_t] + [t for t in tree_flatten(rest)[0] if isinstance(t, Tensor)]
        else:
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        devices = {t.device for t in tensors
                   if strict or not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            self._fail(func, f"tensors on {sorted(map(str, devices))}")
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator):
            target = kwargs.get("device") or (tensors[0].device if tensors else None)
            target = torch.device(target) if target is not None else torch.device("cpu")
            stand_in = target.type == "meta" and generator.initial_seed() in self.stand_in_seeds
            if generator.device.type != target.type and not stand_in:
                self._fail(func, f"generator on {generator.device} draws a tensor on {target}")

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        self._check(func, args, kwargs)
        on_meta = any(isinstance(t, Tensor) and t.is_meta for t in tree_flatten((args, kwargs))[0])
        if on_meta and func in (aten._local_scalar_dense.default, aten.item.default):
            self.stubbed.add("item")
            x = args[0]
            if x.dtype == torch.bool:
                return self.scalar_bool
            return 0.0 if x.is_floating_point() else 0
        returns = [str(r.type) for r in func._schema.returns]
        if on_meta and returns == ["bool"]:  # allclose, equal, is_nonzero: data-dependent
            self.stubbed.add(func.__name__)
            return self.scalar_bool
        to_host = kwargs.get("device") is not None and torch.device(kwargs["device"]) == CPU
        if func is aten._to_copy.default and args[0].is_meta and to_host:  # no data to copy
            self.stubbed.add("to host")
            x = args[0]
            return torch.zeros(x.shape, dtype=kwargs.get("dtype") or x.dtype)
        if func is aten.copy_.default and args[1].is_meta and not args[0].is_meta:
            self.stubbed.add("to host")
            return args[0]
        if on_meta and func is aten.nonzero.default:
            self.stubbed.add("nonzero")
            return torch.empty((0, args[0].dim()), dtype=torch.long, device=args[0].device)
        if on_meta and func in _INDEXING and any(
            isinstance(i, Tensor) and i.dtype == torch.bool for i in args[1] or ()
        ):
            self.stubbed.add("boolean mask")
            if func is aten.index.Tensor:  # x[mask]: the selected rows, here none
                x, mask = args[0], next(i for i in args[1] if isinstance(i, Tensor))
                return x.new_empty((0, *x.shape[mask.dim():]))
            return args[0]  # x[mask] = v: nothing to write on meta
        return func(*args, **kwargs)


@contextlib.contextmanager
def _meta_autocast_as_cpu() -> Iterator[None]:
    """``torch.autocast(device_type="meta", ...)`` is replayed as CPU autocast (meta has none)."""
    real = torch.autocast

    def autocast(device_type: str, *args: Any, **kwargs: Any):
        return real("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    torch.autocast = autocast  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        torch.autocast = real  # type: ignore[misc]


@contextlib.contextmanager
def placement_check(scalar_bool: bool = True) -> Iterator[CudaPlacementGuard]:
    guard = CudaPlacementGuard(scalar_bool)
    real_generator = diffkd_module.DiffKDLoss.generator

    def generator(self: Any, device: torch.device) -> torch.Generator:
        if torch.device(device).type != "meta":
            return real_generator(self, device)
        if self._generator is None:  # a CPU generator standing in for one on the meta device
            self._generator = torch.Generator().manual_seed(self.seed)
            guard.stand_in_seeds.add(self._generator.initial_seed())
        return self._generator

    diffkd_module.DiffKDLoss.generator = generator  # type: ignore[method-assign]
    try:
        with _meta_autocast_as_cpu(), guard:
            yield guard
    finally:
        diffkd_module.DiffKDLoss.generator = real_generator  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- the cases

NUM_CLASSES = 100  # the short tier's Tiny-ImageNet-100
BATCH = 8
TRAIN_SAMPLES = 64


def _net(name: str, width: int) -> nn.Module:
    tiny = {"in_channels": 1, "width": width} if name == "tiny_cnn" else {}
    return create_model(name, num_classes=NUM_CLASSES, **tiny)


def run_case(
    name: str,
    options: dict[str, Any],
    *,
    pair: tuple[str, str] = ("tiny_cnn", "tiny_cnn"),
    size: int = 8,
    train: bool = True,
    scalar_bool: bool = True,
    build: Callable[..., DistillationLoss] = build_loss,
) -> CudaPlacementGuard:
    """Setup, forward and backward of loss ``name`` with everything on meta, under the guard."""
    torch.manual_seed(0)
    student, teacher = _net(pair[0], 4), _net(pair[1], 8)
    channels = 1 if pair[0] == "tiny_cnn" else 3
    loss = build(name, **options)
    student.to(META)
    teacher.to(META)  # the trainer: networks on the device, then setup, then loss.to(device)
    x = torch.randn(BATCH, channels, size, size, device=META)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), device=META)
    index = torch.randint(0, TRAIN_SAMPLES, (BATCH,), device=META)
    with placement_check(scalar_bool) as guard:
        loss.setup(student, teacher, example_input=x, num_train_samples=TRAIN_SAMPLES)
        loss.to(META)
        distiller = Distiller(student, loss, teacher if loss.needs_teacher else None)
        distiller.train(train)
        images: Any = x
        if distiller.views == 2:
            images = (x, torch.randn_like(x))
        logits, terms = distiller(images, y, index=index, epoch=3)
        assert set(terms) >= {"ce"} and logits.device == META
        for key, value in terms.items():
            assert value.device == META and value.dim() == 0, key
        total = sum(terms.values())
        if total.requires_grad:
            total.backward()
        grads = [p.grad for p in [*student.parameters(), *loss.parameters()] if p.grad is not None]
        assert all(g.device == META for g in grads)
    return guard


STUDY = ("resnet8x4", "resnet32x4")  # the short tier's pair (shape-only on meta: no compute cost)
RESNET = ("resnet8", "resnet20")  # post-activation ResNets: OFD estimates margins from a batch

CASES: list[Any] = [
    # logit methods (the short tier runs ce, kd, kd+standardize, dkd, dist, mlkd, figkd)
    pytest.param("ce", {}, {}, id="ce"),
    pytest.param("kd", {}, {}, id="kd"),
    pytest.param("kd", {"standardize": True, "validate": True}, {}, id="kd-standardize-validate"),
    pytest.param("dkd", {}, {}, id="dkd"),
    pytest.param("dkd", {"standardize": True}, {}, id="dkd-standardize"),
    pytest.param("dist", {}, {}, id="dist"),
    pytest.param("mlkd", {}, {}, id="mlkd"),
    pytest.param("mlkd", {"variant": "official", "standardize": True}, {}, id="mlkd-official"),
    # validate=False: what the trainer builds on CUDA; the band matrix: CUDA's path for C <= 2048
    pytest.param("figkd", {"validate": False}, {"matrix": True}, id="figkd-band-matrix"),
    pytest.param("figkd", {"validate": False, "bands": "low"}, {"matrix": True},
                 id="figkd-matrix-low"),
    pytest.param("figkd", {"validate": False, "wavelet": "bior1.3", "level": 3}, {"matrix": True},
                 id="figkd-matrix-bior1.3-level3",
                 marks=pytest.mark.filterwarnings("ignore:level")),
    pytest.param("figkd", {}, {}, id="figkd-fused-haar"),
    pytest.param("figkd", {"noise_std": 0.1, "bands": "both"}, {}, id="figkd-noise-band-path"),
    pytest.param("figkd", {"wavelet": "db2", "level": 2, "mode": "symmetric"}, {},
                 id="figkd-db2-symmetric", marks=pytest.mark.filterwarnings("ignore:level")),
    pytest.param("figkd", {"transform": "1d", "wavelet": "sym3", "mode": "periodization"}, {},
                 id="figkd-1d-periodization"),
    pytest.param("ekd", {}, {}, id="ekd"),
    pytest.param("ldrld", {}, {}, id="ldrld"),
    pytest.param("ldrld", {"k": NUM_CLASSES, "rank_by": "teacher"}, {}, id="ldrld-k-all"),
    pytest.param("rld", {}, {}, id="rld"),
    pytest.param("tekap", {}, {}, id="tekap"),
    # feature methods and DML
    pytest.param("at", {}, {}, id="at"),
    pytest.param("fitnet", {}, {}, id="fitnet"),
    pytest.param("pkt", {}, {}, id="pkt"),
    pytest.param("rkd", {}, {}, id="rkd"),
    pytest.param("sp", {}, {}, id="sp"),
    pytest.param("vid", {}, {}, id="vid"),
    pytest.param("ofd", {}, {}, id="ofd-bn-margins"),
    pytest.param("ofd", {}, {"pair": RESNET, "size": 16, "scalar_bool": False},
                 id="ofd-batch-margins"),
    pytest.param("crd", {"num_negatives": 32}, {"scalar_bool": True}, id="crd-estimate-z"),
    pytest.param("crd", {"num_negatives": 32, "memory_device": "cpu", "memory_dtype": "bf16",
                         "kd_weight": 0.5}, {}, id="crd-cpu-bank"),
    pytest.param("crd", {"num_negatives": 32}, {"train": False, "scalar_bool": False},
                 id="crd-eval"),
    pytest.param("reviewkd", {}, {"pair": STUDY, "size": 32}, id="reviewkd-study-pair"),
    pytest.param("reviewkd", {"student_preact": True}, {}, id="reviewkd-preact"),
    pytest.param("catkd", {"normalize": True}, {"pair": STUDY, "size": 32}, id="catkd-study-pair"),
    pytest.param("diffkd", {}, {}, id="diffkd"),
    pytest.param("diffkd", {"use_ae": False, "logit_diffusion": False}, {}, id="diffkd-plain"),
    pytest.param("dml", {}, {}, id="dml"),
    # the short tier's models end to end
    pytest.param("figkd", {"validate": False}, {"matrix": True, "pair": STUDY, "size": 32},
                 id="figkd-study-pair"),
    pytest.param("mlkd", {}, {"pair": STUDY, "size": 32}, id="mlkd-study-pair"),
]


def test_every_registered_loss_has_a_case() -> None:
    covered = {LOSSES.canonical(p.values[0]) for p in CASES}
    assert covered == set(LOSSES.names()), sorted(set(LOSSES.names()) - covered)


@pytest.mark.parametrize("name, options, how", CASES)
def test_loss_keeps_every_tensor_on_the_device(
    name: str, options: dict, how: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    how = dict(how)
    if how.pop("matrix", False):  # the band-matrix limit is keyed by device type
        limits = dict(figkd_loss.BAND_MATRIX_MAX_CLASSES)
        limits["meta"] = limits["cuda"]
        monkeypatch.setattr(figkd_loss, "BAND_MATRIX_MAX_CLASSES", limits)
    run_case(name, options, **how)


# ----------------------------------------------------------------------------- hot-path helpers


def test_teacher_logit_caches_gather_on_the_device() -> None:
    """Cached teacher logits (in-memory and view caches) come back on the training device."""
    from figkd.engine.planned_cache import PlannedLogitCache
    from figkd.engine.teacher_cache import CropFlipViews, ViewLogitCache

    views = CropFlipViews(32, 4, True)
    params = {"top": torch.randint(0, 9, (BATCH,)), "left": torch.randint(0, 9, (BATCH,)),
              "flip": torch.rand(BATCH) < 0.5}  # the loader's CPU augmentation parameters
    with placement_check():
        for index in (torch.arange(BATCH, device=META), torch.arange(BATCH)):  # fast, torch path
            cache = ViewLogitCache.empty(16, NUM_CLASSES, views, device=META)
            assert cache.lookup(index, params, META).device == META
            planned = PlannedLogitCache.empty(3, 16, NUM_CLASSES, device=META)
            assert planned.lookup(2, index, META).device == META
            memory = TeacherLogitCache(torch.empty(16, NUM_CLASSES, device=META))
            assert memory(index).device == META
        host = ViewLogitCache.empty(16, NUM_CLASSES, views)  # logits kept on the host
        assert host.lookup(torch.arange(BATCH, device=META), params, META).device == META


def test_batch_augment_runs_on_the_device_with_cpu_parameters() -> None:
    """The fast path draws crop/flip/rotation parameters on the CPU, applies them on the device."""
    from figkd.data import BatchAugment
    from figkd.data.batch_loader import epoch_generator

    with placement_check():
        for preset, size in (("tiny-imagenet-32", 32), ("tiny-imagenet-64", 64)):  # crop, rotate
            images = torch.empty(BATCH, 3, size, size, dtype=torch.uint8, device=META)
            for train in (True, False):
                out = BatchAugment(preset, train=train)(images, epoch_generator(0, 1))
                assert out.device == META and out.dtype == torch.float32


# ----------------------------------------------------------------------------- the guard itself


def _device_less_non_target_columns(logits: Tensor, targets: Tensor) -> Tensor:
    """DKD's helper with the classic bug: ``torch.arange`` without ``device=``."""
    batch, num_classes = logits.shape
    columns = torch.arange(num_classes - 1).expand(batch, -1)  # on the CPU, always
    index = columns + (columns >= targets[:, None]).long()
    return logits.gather(1, index)


def test_guard_catches_a_device_less_arange(monkeypatch: pytest.MonkeyPatch) -> None:
    from figkd.losses import dkd

    run_case("dkd", {})  # the shipped helper passes ...
    monkeypatch.setattr(dkd, "non_target_columns", _device_less_non_target_columns)
    with pytest.raises((DevicePlacementError, RuntimeError), match="device"):
        run_case("dkd", {})  # ... the device-less one is caught


LENIENT_ON_META = (DevicePlacementError,)  # meta runs these; only the guard refuses them
REFUSED_BY_META = (DevicePlacementError, RuntimeError)


@pytest.mark.parametrize(
    "op, error",
    [
        (lambda m, c: m.index_select(0, c.long()[:2]), LENIENT_ON_META),
        (lambda m, c: m.gather(1, c.long().view(4, 1)), LENIENT_ON_META),
        (lambda m, c: m @ c.view(4, 1)[:3], LENIENT_ON_META),
        (lambda m, c: torch.randn(3, device=m.device, generator=torch.Generator()),
         LENIENT_ON_META),
        (lambda m, c: torch.stack([m.sum(), c.sum()]), REFUSED_BY_META),  # 0-dim CPU in a cat
        (lambda m, c: m + c.view(4, 1)[:, :1].expand(4, 3), REFUSED_BY_META),
        (lambda m, c: m.sum() + c, REFUSED_BY_META),  # a device scalar with a CPU vector
    ],
    ids=["index_select", "gather", "matmul", "generator", "stack", "add", "device-scalar"],
)
def test_guard_refuses_what_cuda_refuses(
    op: Callable[[Tensor, Tensor], Tensor], error: Any
) -> None:
    m, c = torch.zeros(4, 3, device=META), torch.zeros(4)
    with pytest.raises(error, match="device"), placement_check():
        op(m, c)


@pytest.mark.parametrize(
    "op",
    [
        lambda m, c: m * c.sum(),  # a 0-dim CPU tensor in an elementwise op
        lambda m, c: m[c.long()[:2]],  # CPU indices into a device tensor
        lambda m, c: m.index_put_((c.long()[:2],), m[:2]),
        lambda m, c: c.view(4, 1).to(m.device) + m,  # an explicit copy
    ],
    ids=["cpu-scalar", "cpu-index", "cpu-index-put", "copy"],
)
def test_guard_allows_what_cuda_allows(op: Callable[[Tensor, Tensor], Tensor]) -> None:
    m, c = torch.zeros(4, 3, device=META), torch.zeros(4)
    with placement_check():
        op(m, c)


# --------------------------------------------------------------- other CUDA-only failure modes
FEATURE_LOSSES = sorted(n for n in LOSSES if getattr(build_loss(n), "needs_features", False))


class _BackwardOps(TorchDispatchMode):
    """Names of every aten op dispatched (backward ops included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pair", [("resnet8x4", "resnet32x4"), ("ShuffleV1", "resnet32x4")],
                         ids=["same-size", "student-maps-half-size"])
@pytest.mark.parametrize("name", FEATURE_LOSSES)
def test_no_adaptive_pooling_backward_under_deterministic_cuda(name: str, pair: tuple) -> None:
    """``train.deterministic=true`` on CUDA refuses adaptive average pooling's backward (no
    deterministic kernel; the CPU's is deterministic, so only this trace shows it).  Feature
    losses pool with ``pool_to``, which takes ``avg_pool2d`` where the sizes divide."""
    torch.manual_seed(0)
    student = create_model(pair[0], num_classes=NUM_CLASSES)
    teacher = create_model(pair[1], num_classes=NUM_CLASSES).eval().requires_grad_(False)
    x = torch.randn(4, 3, 32, 32)
    loss = build_loss(name)
    loss.setup(student, teacher, example_input=x[:2], num_train_samples=TRAIN_SAMPLES)
    distiller = Distiller(student, loss, teacher)
    recorder = _BackwardOps()
    with recorder:
        _, terms = distiller(x, torch.arange(4) % NUM_CLASSES, index=torch.arange(4), epoch=3)
        sum(terms.values()).backward()
    assert not [op for op in recorder.ops if "adaptive_avg_pool2d_backward" in op]


@pytest.mark.parametrize(("size", "out"), [((8, 8), 4), ((8, 8), 2), ((8, 8), (2, 4)),
                                           ((7, 7), 3), ((8, 4), 1)])
def test_pool_to_equals_adaptive_pooling(size: tuple, out: Any) -> None:
    from figkd.losses.feature_utils import pool_to

    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    want = torch.nn.functional.adaptive_avg_pool2d(x, out)
    got = pool_to(x, out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    weights = torch.randn_like(want)
    (g_want,) = torch.autograd.grad((want * weights).sum(), x)
    (g_got,) = torch.autograd.grad((got * weights).sum(), x)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("name", "options"), [
    ("crd", {"num_negatives": 32}),
    ("crd", {"num_negatives": 32, "memory_device": "cpu"}),
    ("diffkd", {}),
])
def test_loss_state_broadcast_sends_device_tensors_only(
    name: str, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDP start: rank 0's loss state is broadcast; NCCL moves device tensors only, and CRD
    (RNG state, CPU banks) and DiffKD (generator state) keep some on the host."""
    from figkd.engine.distributed import DistContext
    from figkd.engine.trainer import _broadcast_loss_state

    sent: list[torch.device] = []

    def nccl_broadcast(tensor: Tensor, src: int = 0, **_: Any) -> None:
        sent.append(tensor.device)
        if tensor.device.type == "cpu":
            raise RuntimeError("No backend type associated with device type cpu")

    monkeypatch.setattr(torch.distributed, "broadcast", nccl_broadcast)
    student, teacher = _net("tiny_cnn", 4).to(META), _net("tiny_cnn", 8).to(META)
    loss = build_loss(name, **options)
    with placement_check():
        loss.setup(student, teacher, example_input=torch.randn(4, 1, 8, 8, device=META),
                   num_train_samples=TRAIN_SAMPLES)
        loss.to(META)
        host = [k for k, v in loss.state_dict().items() if v.device == CPU]
        assert host  # the case is the one that matters
        _broadcast_loss_state(loss, DistContext(rank=0, world_size=2), META)
    assert sent and set(sent) == {META}
    assert [k for k, v in loss.state_dict().items() if v.device == CPU] == host  # kept there


def test_crd_gathers_host_indices_through_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DataLoader path yields sample indices on the host; CRD's bank update gathers them
    over DDP ranks, which NCCL refuses for host tensors."""
    from figkd.losses import crd as crd_module

    gathered: list[torch.device] = []

    class Gathered(Exception):
        """Stop after the first collective: meta has no batch sizes to gather back."""

    def nccl_all_gather(out: list, tensor: Tensor, **_: Any) -> None:
        gathered.append(tensor.device)
        if tensor.device.type == "cpu":
            raise RuntimeError("No backend type associated with device type cpu")
        raise Gathered  # the batch sizes, counted on the device the indices are gathered on

    monkeypatch.setattr(crd_module, "_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *_: 2)
    monkeypatch.setattr(torch.distributed, "all_gather", nccl_all_gather)
    with placement_check(), pytest.raises(Gathered):
        index = torch.arange(4)  # host, as the DataLoader path gives it
        crd_module._gather_ranks(index, torch.randn(4, 16, device=META))
    assert gathered == [META]
