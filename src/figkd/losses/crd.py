"""CRD: "Contrastive Representation Distillation" (Tian, Krishnan & Isola, ICLR 2020).

Both networks' pooled embeddings go through a linear head and L2
normalisation to d = 128 dimensions: s = g_S(f_S), t = g_T(f_T).  Two memory
banks hold one unit vector per training sample: M_S (student side) and M_T
(teacher side).  For a sample i the student embedding is scored against the
teacher bank row of i (positive) and K rows of other samples (negatives), and
symmetrically the teacher embedding against the student bank:

    P(j | s) = exp(<s, M_T[j]> / tau) / Z_S,    h = P / (P + K / N)
    L_NCE(s) = -log h(pos) - sum_{K negatives} log(1 - h(neg))      (batch mean)
    L_CRD = L_NCE(s; M_T) + L_NCE(t; M_S)

N is the number of training samples.  Z is the NCE partition constant,
estimated once from the first batch as mean(exp(<., .>/tau)) * N and then
frozen (Wu et al. 2018, as the reference code does).  After the loss is
computed the banks' rows at the batch indices move to
normalize(m * M[i] + (1 - m) * v) with the momentum m = 0.5 (training mode
only).  Under DDP the rows and embeddings of every rank are gathered first, so
all ranks apply the same updates and keep identical banks, and Z is estimated
from all ranks' first batches.

L = ce_weight * CE + crd_weight * L_CRD [+ kd_weight * T^2 KL], defaults
CE 1, CRD 0.8, KD 0 (the paper's "CRD" rows; RepDistiller ``-r 1 -a 0 -b 0.8``,
mdistiller CRD defaults); K = 16384, tau = 0.07, d = 128, m = 0.5.

Negatives are drawn uniformly, with replacement, among the *other* N - 1 samples
(K may exceed N - 1 on toy data sets) by a CPU
``torch.Generator`` seeded with ``seed``; its state lives in a buffer, so a
resumed run continues the same stream and CPU/GPU runs draw the same indices.

Memory (b = bytes per bank element: 4 for float32, 2 for float16/bfloat16;
B = batch size):
    banks          2 * N * d * b                       (persistent, checkpointed)
    gathered rows  2 * B * (K + 1) * d * b_c per step  (kept for the backward pass)
    scores         2 * B * (K + 1) * 4 per step
b_c = b on CUDA (the bank-row product runs in the bank dtype there) and 4 on
CPU.  CIFAR-100 (N = 45 000 with the 10 % validation carve, B = 64, K = 16384,
float32): banks 46 MB, gathered rows 1.07 GB per step; float16 halves both.
``memory_device="cpu"`` keeps the banks in host memory (the gathered rows are
then copied to the compute device every step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import require_setup, zoo_model
from figkd.losses.kd import check_temperature, kd_divergence
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def _as_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        if value not in _DTYPES.values():
            raise ValueError(f"memory_dtype must be float32, float16 or bfloat16, got {value}")
        return value
    try:
        return _DTYPES[str(value).lower()]
    except KeyError:
        raise ValueError(
            f"memory_dtype must be one of {', '.join(sorted(_DTYPES))}, got {value!r}"
        ) from None


def crd_memory_bytes(
    num_samples: int,
    *,
    feat_dim: int = 128,
    num_negatives: int = 16384,
    batch_size: int = 64,
    memory_dtype: str | torch.dtype = "float32",
    compute_on_cuda: bool = True,
) -> dict[str, int]:
    """Bytes CRD needs: the two banks, and per step the gathered rows and the scores."""
    b = torch.empty((), dtype=_as_dtype(memory_dtype)).element_size()
    b_c = b if compute_on_cuda else 4
    rows = batch_size * (num_negatives + 1)
    out = {
        "banks": 2 * num_samples * feat_dim * b,
        "gathered_per_step": 2 * rows * feat_dim * b_c,
        "scores_per_step": 2 * rows * 4,
    }
    out["total"] = sum(out.values())
    return out


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def _gather_ranks(index: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Concatenate ``index`` and ``values`` over DDP ranks (batches may differ in size).

    Every rank then applies every rank's momentum update, so the banks stay
    identical across ranks; without DDP this returns the inputs.
    """
    if not _distributed():
        return (index, *values)
    if values:  # NCCL gathers device tensors only; the DataLoader path yields host indices
        index = index.to(values[0].device)
    world = torch.distributed.get_world_size()
    n = torch.tensor([index.numel()], device=index.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    sizes_list = [int(v) for v in sizes]
    top = max(sizes_list)
    out = []
    for x in (index, *values):
        padded = x.new_zeros((top, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:k] for p, k in zip(parts, sizes_list)]))
    return tuple(out)


class _Embed(nn.Module):
    """Linear head + L2 normalisation (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)).float(), dim=1)


def nce_loss(scores: Tensor, log_z: Tensor, num_samples: int) -> Tensor:
    """NCE loss of (B, K+1) cosine scores already divided by tau, column 0 the positive.

    h = P / (P + K/N) with P = exp(score - log Z); computed in log space:
    log h = -softplus(log(K/N) - log P), log(1 - h) = -softplus(log P - log(K/N)).
    """
    k = scores.shape[1] - 1
    log_kn = math.log(k / num_samples)
    log_p = scores - log_z
    pos = F.softplus(log_kn - log_p[:, 0])
    neg = F.softplus(log_p[:, 1:] - log_kn).sum(1)
    return (pos + neg).mean()


@register_loss("crd")
class CRDLoss(DistillationLoss):
    """Terms ``{"ce": .., "crd": crd_weight * L_CRD}`` (+ ``"kd"`` when ``kd_weight > 0``)."""

    term_names = ("ce", "crd")
    needs_features = True
    needs_sample_index = True

    # buffers registered by setup(): the two memory banks, the NCE constants, the RNG state
    memory_s: Tensor
    memory_t: Tensor
    log_z: Tensor
    rng_state: Tensor

    def __init__(
        self,
        ce_weight: float = 1.0,
        crd_weight: float = 0.8,
        kd_weight: float = 0.0,
        kd_temperature: float = 4.0,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        memory_dtype: str = "float32",
        memory_device: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.crd_weight = check_weight("crd_weight", crd_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)
        self.kd_temperature = check_temperature(kd_temperature)
        self.nce_temperature = check_temperature(nce_temperature)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        for name, v in (("feat_dim", feat_dim), ("num_negatives", num_negatives)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.feat_dim = int(feat_dim)
        self.num_negatives = int(num_negatives)
        self.memory_dtype = _as_dtype(memory_dtype)
        self.memory_device = None if memory_device is None else torch.device(memory_device)
        self.seed = int(seed)
        self.num_samples = 0
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self._z_ready = False  # python-side cache of "log_z holds no NaN" (saves a sync per step)

    # -- building ---------------------------------------------------------------------------
    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("CRD contrasts against a teacher's embeddings; got teacher=None")
        n = int(num_train_samples)
        if n < 2:
            raise ValueError(f"CRD needs at least 2 training samples, got num_train_samples={n}")
        self.num_samples = n
        self._z_ready = False
        dims = []
        for net in (student, teacher):
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad():
                    emb = zoo_model(net).forward_features(example_input[:2])["embedding"]
                dims.append(emb.flatten(1).shape[1])
            finally:
                net.train(was_training)
        device = example_input.device
        self.embed_s = _Embed(dims[0], self.feat_dim).to(device)
        self.embed_t = _Embed(dims[1], self.feat_dim).to(device)
        bank_device = self.memory_device or device
        gen = torch.Generator().manual_seed(self.seed)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)
        for name in ("memory_s", "memory_t"):
            bank = torch.rand(n, self.feat_dim, generator=gen).mul_(2 * stdv).sub_(stdv)
            bank = F.normalize(bank, dim=1).to(self.memory_dtype)
            self.register_buffer(name, bank.to(bank_device))
        # NCE constants log Z (NaN = not estimated yet) and the negatives' RNG state
        self.register_buffer("log_z", torch.full((2,), float("nan"), device=device))
        self.register_buffer("rng_state", gen.get_state())

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        """``.to()``/``.cuda()`` leave pinned banks (``memory_device``) and the RNG state alone."""
        pinned = ["rng_state"] + (["memory_s", "memory_t"] if self.memory_device else [])
        held = {k: self._buffers.pop(k) for k in pinned if k in self._buffers}
        try:
            return super()._apply(fn, recurse)
        finally:
            self._buffers.update(held)

    def memory_bytes(self, batch_size: int = 64) -> dict[str, int]:
        """:func:`crd_memory_bytes` for this loss's settings (after ``setup``)."""
        on_cuda = self.memory_s.device.type == "cuda" if self.embed_s is not None else True
        return crd_memory_bytes(
            self.num_samples, feat_dim=self.feat_dim, num_negatives=self.num_negatives,
            batch_size=batch_size, memory_dtype=self.memory_dtype, compute_on_cuda=on_cuda,
        )

    # -- one step ---------------------------------------------------------------------------
    def sample_indices(self, index: Tensor) -> Tensor:
        """(B, K+1) bank rows: column 0 the sample itself, then K uniform draws among the others."""
        gen = torch.Generator()
        gen.set_state(self.rng_state.cpu())
        pos = index.detach().to("cpu", torch.long).view(-1, 1)
        neg = torch.randint(0, self.num_samples - 1, (pos.shape[0], self.num_negatives),
                            generator=gen)
        neg += (neg >= pos).long()  # skip the positive: uniform over the other N - 1
        self.rng_state.copy_(gen.get_state())
        return torch.cat([pos, neg], dim=1)

    def _scores(self, anchor: Tensor, bank: Tensor, rows: Tensor) -> Tensor:
        """<anchor_b, bank[rows_b, k]> / tau as float32, shape (B, K+1)."""
        weights = bank[rows.to(bank.device)].to(anchor.device)
        if weights.device.type != "cuda":
            weights = weights.float()
        prod = torch.bmm(weights, anchor.to(weights.dtype).unsqueeze(2)).squeeze(2)
        return prod.float() / self.nce_temperature

    @torch.no_grad()
    def _estimate_log_z(self, scores_s: Tensor, scores_t: Tensor) -> None:
        """log Z = log(mean(exp(scores)) * N) on this batch (pooled over DDP ranks)."""
        stats = torch.stack([
            scores_s.double().exp().sum(), scores_t.double().exp().sum(),
            torch.tensor(float(scores_s.numel()), dtype=torch.float64, device=scores_s.device),
        ])
        if _distributed():
            torch.distributed.all_reduce(stats)
        est = (stats[:2] / stats[2]).log() + math.log(self.num_samples)
        self.log_z.copy_(est.to(self.log_z))

    @torch.no_grad()
    def _update_bank(self, bank: Tensor, index: Tensor, value: Tensor) -> None:
        idx = index.to(bank.device)
        old = bank[idx].float()
        value = value.detach().to(bank.device).float()
        new = F.normalize(old * self.momentum + value * (1 - self.momentum), dim=1)
        bank.index_copy_(0, idx, new.to(bank.dtype))

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        student_features: Any = None,
        teacher_features: Any = None,
        index: Tensor | None = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        embed_s: nn.Module = require_setup(self, "embed_s")
        embed_t: nn.Module = require_setup(self, "embed_t")
        if student_features is None or teacher_features is None:
            raise ValueError("CRD needs student_features= and teacher_features=")
        if index is None:
            raise ValueError("CRD needs index= (the batch's dataset indices) for its memory bank")
        index = index.view(-1).long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_samples):
            raise ValueError(f"index must lie in [0, {self.num_samples}), the training-set size")
        s = embed_s(student_features["embedding"])
        t = embed_t(teacher_features["embedding"].detach())
        rows = self.sample_indices(index)
        device_type = s.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            s, t = s.float(), t.float()
            scores_s = self._scores(s, self.memory_t, rows)  # student vs teacher bank
            scores_t = self._scores(t, self.memory_s, rows)  # teacher vs student bank
            if not self._z_ready and bool(torch.isnan(self.log_z).any()):
                self._estimate_log_z(scores_s, scores_t)
            self._z_ready = True
            log_z = self.log_z.to(s.device)
            crd = nce_loss(scores_s, log_z[0], self.num_samples) + nce_loss(
                scores_t, log_z[1], self.num_samples)
        if self.training:
            upd_index, upd_s, upd_t = _gather_ranks(index, s.detach(), t.detach())
            self._update_bank(self.memory_s, upd_index, upd_s)
            self._update_bank(self.memory_t, upd_index, upd_t)
        terms = {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "crd": self.crd_weight * crd,
        }
        if self.kd_weight > 0:
            if teacher_logits is None:
                raise ValueError("kd_weight > 0 needs teacher_logits")
            terms["kd"] = self.kd_weight * kd_divergence(
                student_logits, teacher_logits, self.kd_temperature)
        return terms

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, crd_weight={self.crd_weight}, "
            f"kd_weight={self.kd_weight}, "
            f"feat_dim={self.feat_dim}, num_negatives={self.num_negatives}, "
            f"nce_temperature={self.nce_temperature}, momentum={self.momentum}, "
            f"memory_dtype={self.memory_dtype}, num_samples={self.num_samples}"
        )
