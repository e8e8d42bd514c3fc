"""ReviewKD: "Distilling Knowledge via Knowledge Review" (Chen, Liu, Zhao & Jia, CVPR 2021).

Levels: the student's stage outputs plus its pooled embedding as a 1x1 map
(x_1 .. x_n, shallow to deep); the teacher's pre-ReLU stage features plus its
pooled embedding (t_1 .. t_n).  Going from the deepest level back, an
attention-based fusion (ABF) module at level j maps x_j to a mid width
(1x1 conv + BN), fuses it with the residual r_{j+1} handed down from level
j+1 (nearest-upsampled to x_j's size) by two sigmoid attention maps,

    a = sigmoid(conv1x1([x'_j, r_{j+1}])),  r_j = a_0 * x'_j + a_1 * r_{j+1}

and outputs y_j = BN(conv3x3(r_j)) at the teacher's size and width (the
deepest level has no residual and no attention).  The hierarchical context
loss (HCL) compares each y_j with t_j at full resolution and after adaptive
average pooling to 4x4, 2x2, 1x1 (pooled sizes smaller than the map only),
weights 1, 1/2, 1/4, 1/8, normalised by their sum:

    HCL(y, t) = (MSE(y, t) + sum_l 2^-l MSE(pool_l y, pool_l t)) / (1 + sum_l 2^-l)
    L = ce_weight * CE + review_weight * min(epoch / warmup_epochs, 1) * sum_j HCL(y_j, t_j)

Defaults: CE 1, review weight 1, warm-up 20 epochs (epochs counted from 1),
mid width min(512, student embedding width).  Per-pair weights of the
official CIFAR script (5 for most pairs, 8 for ResNet32x4 -> ShuffleNetV2,
1 for ResNet110 -> ResNet32) live in the configs.  Levels are paired from the
deepest back when the two networks have different stage counts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import pool_to, require_setup, zoo_model
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight


def hcl_loss(
    student: list[Tensor], teacher: list[Tensor], pool_sizes: tuple[int, ...] = (4, 2, 1)
) -> Tensor:
    """Hierarchical context loss summed over levels (float32)."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student, teacher, strict=True):
        fs, ft = fs.float(), ft.float()
        h = fs.shape[-2]
        loss = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for size in pool_sizes:
            if size >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(
                pool_to(fs, size), pool_to(ft, size))
            norm += weight
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """Attention-based fusion: student map (+ deeper level's residual) -> teacher-shaped map."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool):
        super().__init__()
        conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.conv1 = nn.Sequential(conv1, nn.BatchNorm2d(mid))
        conv2 = nn.Conv2d(mid, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Sequential(conv2, nn.BatchNorm2d(cout))
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None)
        nn.init.kaiming_uniform_(conv1.weight, a=1)
        nn.init.kaiming_uniform_(conv2.weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def _levels(features: Any, preact: bool) -> list[Tensor]:
    stages = list(features["preact_stages"] if preact else features["stages"])
    emb = features["embedding"]
    return stages + [emb.reshape(emb.shape[0], -1, 1, 1)]


def warmup_factor(epoch: Any, warmup_epochs: int) -> float:
    if warmup_epochs <= 0:
        return 1.0
    if epoch is None:
        raise ValueError(
            f"ReviewKD ramps its loss over the first {warmup_epochs} epochs and needs epoch= "
            "(counted from 1) in the loss call; pass it, or set warmup_epochs=0")
    return min(float(epoch) / warmup_epochs, 1.0)


@register_loss("reviewkd", aliases=("review_kd", "review"))
class ReviewKDLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "review": w(e) * review_weight * sum_j HCL_j}``."""

    term_names = ("ce", "review")
    needs_features = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        review_weight: float = 1.0,
        warmup_epochs: int = 20,
        max_mid_channels: int = 512,
        student_preact: bool = False,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.review_weight = check_weight("review_weight", review_weight)
        bad = isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs
        if bad or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = int(warmup_epochs)
        self.max_mid_channels = int(max_mid_channels)
        self.student_preact = bool(student_preact)
        self.abfs: nn.ModuleList | None = None
        self.out_sizes: list[tuple[int, int]] = []
        self.num_levels = 0

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("ReviewKD distils from a teacher's features; got teacher=None")
        probes = []
        for net, preact in ((student, self.student_preact), (teacher, True)):
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad():
                    probes.append(
                        _levels(zoo_model(net).forward_features(example_input[:2]), preact)
                    )
            finally:
                net.train(was_training)
        s_lv, t_lv = probes
        k = min(len(s_lv), len(t_lv))
        s_lv, t_lv = s_lv[len(s_lv) - k:], t_lv[len(t_lv) - k:]
        mid = min(self.max_mid_channels, s_lv[-1].shape[1])
        # ABFs ordered deepest first, the order forward walks them
        self.abfs = nn.ModuleList(
            ABF(s.shape[1], mid, t.shape[1], fuse=j < k - 1)
            for j, (s, t) in reversed(list(enumerate(zip(s_lv, t_lv))))
        ).to(example_input.device)
        # teacher sizes at setup's input resolution; forward re-reads them from the features
        self.out_sizes = [(t.shape[-2], t.shape[-1]) for t in t_lv]
        self.num_levels = k

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        student_features: Any = None,
        teacher_features: Any = None,
        epoch: Any = None,
        **context: Any,
    ) -> dict[str, Tensor]:
        abfs: nn.ModuleList = require_setup(self, "abfs")
        if student_features is None or teacher_features is None:
            raise ValueError("ReviewKD needs student_features= and teacher_features=")
        ramp = warmup_factor(epoch, self.warmup_epochs)
        k = self.num_levels
        s_lv = _levels(student_features, self.student_preact)[-k:]
        t_lv = [t.detach() for t in _levels(teacher_features, True)[-k:]]
        outputs: list[Tensor] = []
        residual = None
        for abf, x, t in zip(abfs, reversed(s_lv), reversed(t_lv)):
            y, residual = abf(x, residual, tuple(t.shape[-2:]))
            outputs.insert(0, y)
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "review": (self.review_weight * ramp) * hcl_loss(outputs, t_lv),
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, review_weight={self.review_weight}, "
            f"warmup_epochs={self.warmup_epochs}, student_preact={self.student_preact}"
        )
