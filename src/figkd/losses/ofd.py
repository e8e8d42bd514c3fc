"""OFD: "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019).

For every stage i the student's pre-ReLU feature goes through a connector
r_i (1x1 conv + BN, student channels -> teacher channels), the teacher's
pre-ReLU feature through the margin ReLU sigma_m(t) = max(t, m) with a
per-channel margin m < 0, and the two meet in the *partial* L2 distance

    d_p(T, S) = sum_j  0                  if S_j <= T_j <= 0
                       (T_j - S_j)^2      otherwise,        T = sigma_m(t), S = r(s)

summed over channels and positions and averaged over the batch.  Teacher
responses below zero carry no information after the ReLU except "negative",
so the student is only pushed down where it exceeds them.

The margin is E[x | x < 0] of a Gaussian N(mu, sigma^2) per channel:
mu - sigma * phi(mu/sigma) / Phi(-mu/sigma) (-3 sigma when Phi(-mu/sigma) <= 1e-3,
as in the official code).  mu and sigma come from the BN layer that produces
the teacher's pre-ReLU feature (its bias and |weight|) when ``setup`` can
locate it -- it hooks every BatchNorm of the teacher and keeps the one whose
output *is* the stage's ``preact_stages`` tensor (WRN, VGG).  Where the
pre-activation is not a BN output (post-activation ResNets: BN + shortcut),
mu and sigma are the per-channel batch statistics of the teacher's
pre-activation on the first batch the loss sees (pooled over DDP ranks); the
result is stored in a buffer (checkpointed) and never re-estimated.

L = ce_weight * CE + feat_weight * sum_i decay^(N-1-i) * d_p(sigma_m(t_i), r_i(s_i)) / B

Defaults: CE 1, feat_weight 1e-3, decay 1/2 (the official CIFAR code's
``loss.sum() / batch_size / 1000`` and its per-stage ``/ 2 ** (N - i - 1)``,
also mdistiller's OFD defaults).  Stages are paired from the deepest one back;
a spatial mismatch (e.g. ResNet32x4 32x32 vs ShuffleNet 16x16) is resolved by
average-pooling the larger map to the smaller size, as mdistiller does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import pool_to, require_setup, zoo_model
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight


def gaussian_negative_mean(mean: Tensor, std: Tensor) -> Tensor:
    """E[x | x < 0] for x ~ N(mean, std^2), elementwise; -3*std where P(x < 0) <= 1e-3."""
    mean = mean.double()
    std = std.double().abs().clamp_min(1e-12)
    z = mean / std
    p_neg = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    margin = mean - std * pdf / p_neg.clamp_min(1e-300)
    return torch.where(p_neg > 1e-3, margin, -3.0 * std).float()


def partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """sum over (C, H, W) of the partial L2 distance, averaged over the batch.

    ``teacher`` is the raw pre-ReLU teacher map; the margin ReLU is applied here.
    ``margin`` has shape (C,).
    """
    target = torch.maximum(teacher, margin.view(1, -1, 1, 1).to(teacher))
    mask = (student > target) | (target > 0)
    sq = (student - target).pow(2) * mask.to(student.dtype)
    return sq.sum() / student.shape[0]


def _locate_bn_outputs(
    model: nn.Module, example_input: Tensor
) -> tuple[dict[str, Any], list[Tensor]]:
    """Run ``forward_features`` with hooks on every BatchNorm2d; map output tensor id -> BN."""
    outputs: dict[int, nn.BatchNorm2d] = {}
    keep: list[Tensor] = []  # keep outputs alive so ids stay unique

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        outputs[id(output)] = module  # type: ignore[assignment]
        keep.append(output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = zoo_model(model).forward_features(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {"bn": outputs, "keep": keep}, feats["preact_stages"]


def _connector(cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / cout))  # N(0, 2 / (k*k*out))
    bn = nn.BatchNorm2d(cout)
    return nn.Sequential(conv, bn)


def _pool_to_common(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    if tuple(s.shape[-2:]) != size:
        s = pool_to(s, size)
    if tuple(t.shape[-2:]) != size:
        t = pool_to(t, size)
    return s, t


@register_loss("ofd", aliases=("overhaul",))
class OFDLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "ofd": feat_weight * sum_i w_i * d_p_i}``.

    ``setup`` builds one connector per paired stage and fixes the margins that
    come from the teacher's BN layers; margins of stages without such a BN are
    estimated from the first batch ``forward`` sees.
    """

    term_names = ("ce", "ofd")
    needs_features = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        feat_weight: float = 1e-3,
        stage_decay: float = 0.5,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)
        self.stage_decay = check_weight("stage_decay", stage_decay)
        self.connectors: nn.ModuleList | None = None
        self.margin_sources: list[str] = []
        self.num_stages = 0
        self._margins_done = False

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("OFD distils from a teacher's features; got teacher=None")
        probe = example_input[:2]
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                s_pre = zoo_model(student).forward_features(probe)["preact_stages"]
        finally:
            student.train(was_training)
        hooks, t_pre = _locate_bn_outputs(teacher, probe)
        k = min(len(s_pre), len(t_pre))
        s_pre, t_pre = s_pre[len(s_pre) - k:], t_pre[len(t_pre) - k:]
        device = example_input.device
        self.connectors = nn.ModuleList(
            _connector(s.shape[1], t.shape[1]) for s, t in zip(s_pre, t_pre)
        ).to(device)
        self.margin_sources = []
        self._margins_done = False
        for i, t in enumerate(t_pre):
            bn = hooks["bn"].get(id(t))
            if bn is not None and bn.affine:
                margin = gaussian_negative_mean(bn.bias.detach(), bn.weight.detach())
                ready = True
                self.margin_sources.append("bn")
            else:
                margin = torch.zeros(t.shape[1])
                ready = False
                self.margin_sources.append("batch")
            self.register_buffer(f"margin{i}", margin.to(device))
            self.register_buffer(f"margin{i}_ready", torch.tensor(ready, device=device))
        self.num_stages = k

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.num_stages)]

    @torch.no_grad()
    def _estimate_margins(self, teacher_pre: list[Tensor]) -> None:
        if self._margins_done:  # avoid a device sync per step once every margin is fixed
            return
        for i, t in enumerate(teacher_pre):
            ready = getattr(self, f"margin{i}_ready")
            if bool(ready):
                continue
            x = t.detach().double().transpose(0, 1).reshape(t.shape[1], -1)
            stats = torch.stack([x.sum(1), x.pow(2).sum(1),
                                 torch.full_like(x[:, 0], x.shape[1])])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(stats)  # every rank gets the same margins
            mean = stats[0] / stats[2]
            std = (stats[1] / stats[2] - mean * mean).clamp_min(0).sqrt()
            margin = gaussian_negative_mean(mean, std)
            getattr(self, f"margin{i}").copy_(margin)
            ready.fill_(True)
        self._margins_done = True

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        student_features: Any = None,
        teacher_features: Any = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        connectors: nn.ModuleList = require_setup(self, "connectors")
        if student_features is None or teacher_features is None:
            raise ValueError("OFD needs student_features= and teacher_features=")
        s_pre = list(student_features["preact_stages"])[-self.num_stages:]
        t_pre = [t.detach() for t in list(teacher_features["preact_stages"])[-self.num_stages:]]
        self._estimate_margins(t_pre)
        total = student_logits.new_zeros((), dtype=torch.float32)
        n = self.num_stages
        for i, (s, t, conn, m) in enumerate(zip(s_pre, t_pre, connectors, self.margins())):
            s_out, t_map = _pool_to_common(conn(s), t)
            d = partial_l2(s_out.float(), t_map.float(), m.float())
            total = total + d * (self.stage_decay ** (n - 1 - i))
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "ofd": self.feat_weight * total,
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, feat_weight={self.feat_weight}, "
            f"stage_decay={self.stage_decay}, margins={self.margin_sources}"
        )
