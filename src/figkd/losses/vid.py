"""Variational information distillation (Ahn et al., CVPR 2019).

For each paired stage, the teacher's map t is modelled as a Gaussian whose
mean mu(s) is a small network on the student's map s (1x1 conv -> ReLU ->
1x1 conv -> ReLU -> 1x1 conv, teacher channels wide) and whose variance is
learned per channel: sigma_c^2 = softplus(alpha_c) + eps.  The loss is the
negative log-likelihood (constant dropped), averaged over batch, channels and
positions:  mean(0.5 * ((t - mu(s))^2 / sigma_c^2 + log sigma_c^2)).
L = ce_weight * CE + feat_weight * sum over stages.  Stages are paired from
the deepest back; the larger map is average-pooled to the smaller.  Defaults:
CE 1, feature weight 1, initial variance 5, eps 1e-5 (mdistiller).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import (
    match_spatial,
    paired_stages,
    probe_features,
    require_setup,
)
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight


class VIDHead(nn.Module):
    """Mean network and per-channel log-scale of one stage pair."""

    def __init__(self, student_channels: int, teacher_channels: int, init_var: float, eps: float):
        super().__init__()
        t = teacher_channels
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t, t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t, t, 1, bias=False),
        )
        # softplus(alpha) + eps == init_var at the start
        self.alpha = nn.Parameter(torch.full((t,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        f_s, f_t = match_spatial(f_s, f_t)
        mu = as_float(self.mean(f_s))
        var = self.variance().to(mu.dtype).view(1, -1, 1, 1)
        return (0.5 * ((mu - as_float(f_t)).pow(2) / var + var.log())).mean()


@register_loss("vid")
class VIDLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "vid": feat_weight * sum_stages NLL}``."""

    term_names = ("ce", "vid")
    needs_features = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        feat_weight: float = 1.0,
        init_var: float = 5.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)
        self.init_var = check_weight("init_var", init_var)
        self.eps = check_weight("eps", eps)
        if self.init_var <= self.eps:
            raise ValueError(f"init_var must exceed eps={self.eps}, got {init_var}")
        self.heads: nn.ModuleList | None = None

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("VID needs a teacher")
        s_stages = probe_features(student, example_input)["stages"]
        t_stages = probe_features(teacher, example_input)["stages"]
        self.heads = nn.ModuleList(
            VIDHead(f_s.shape[1], f_t.shape[1], self.init_var, self.eps)
            for f_s, f_t in paired_stages(s_stages, t_stages)
        ).to(example_input.device)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        student_features: Any,
        teacher_features: Any,
        **context: Any,
    ) -> dict[str, Tensor]:
        heads = require_setup(self, "heads")
        pairs = paired_stages(student_features["stages"], teacher_features["stages"])
        if len(pairs) != len(heads):
            raise ValueError(f"VID was set up for {len(heads)} stage pairs, got {len(pairs)}")
        vid = sum(head(f_s, f_t.detach()) for head, (f_s, f_t) in zip(heads, pairs, strict=True))
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "vid": self.feat_weight * vid,
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, feat_weight={self.feat_weight}, "
            f"init_var={self.init_var}, eps={self.eps}"
        )
