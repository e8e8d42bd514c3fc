"""CAT-KD: "Class Attention Transfer Based Knowledge Distillation" (Guo et al., CVPR 2023).

A network whose head is "global average pool -> linear classifier W" has, for
each class k, a class activation map CAM_k(h, w) = sum_c W[k, c] F[c, h, w]
over the feature map F that the pooling consumes (its spatial mean is the
class logit without the bias).  CAT-KD transfers the teacher's CAMs: both
networks' CAMs are average-pooled to r x r, optionally L2-normalised per
(sample, class) map, and compared by MSE:

    A = AvgPool_r(W F)   (= W AvgPool_r(F), pooled first here: the same, cheaper)
    A~ = A / ||A||_2 over the r*r positions  (if normalize)
    L = ce_weight * CE + cat_weight * mean_{b,k,h,w} (A~_S - A~_T)^2

The student's CAMs use its own classifier weights, so the CAT term trains the
student's classifier as well as its features; the teacher side is detached.
The classifier is found with ``model.classifier_name()``; F is the network's
``forward_features()["pooled_map"]`` (the last stage, WRN's head BN-ReLU, or the
output of MobileNetV2's / ShuffleNetV2's head conv), and ``setup`` checks once
that its global average is the network's ``embedding``.

Defaults (r = 2, normalize off, cat_weight 15, CE 1) are the official
ResNet32x4 -> ResNet8x4 CIFAR-100 config; the per-pair weights, resolutions and
normalisation switches of the official configs live in our configs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import pool_to, require_setup, zoo_model
from figkd.losses.precision import as_float, full_precision
from figkd.losses.validation import check_weight


@torch.no_grad()
def check_pooled_map(model: nn.Module, example_input: Tensor) -> None:
    """Refuse a network whose ``pooled_map`` is not what its head averages into the logits."""
    was_training = model.training
    model.eval()
    try:
        feats = zoo_model(model).forward_features(example_input[:2])
    finally:
        model.train(was_training)
    fmap = feats.get("pooled_map") if isinstance(feats, dict) else None
    emb = feats["embedding"].flatten(1)
    if (
        fmap is None
        or fmap.dim() != 4
        or fmap.shape[:2] != emb.shape[:2]
        or not torch.allclose(fmap.float().mean(dim=(2, 3)), emb.float(), rtol=1e-4, atol=1e-5)
    ):
        raise TypeError(
            f"CAT-KD needs {type(model).__name__}.forward_features() to give 'pooled_map', the "
            "map its 'global average pool -> linear' head averages into 'embedding'"
        )


def _classifier_weight(model: nn.Module) -> Tensor:
    name = zoo_model(model).classifier_name()
    layer = dict(model.named_modules())[name]
    return layer.weight


def class_activation_maps(feature_map: Tensor, weight: Tensor, resolution: int) -> Tensor:
    """(B, K, r, r) CAMs: the classifier weights applied to the r x r average-pooled map."""
    pooled = pool_to(as_float(feature_map), resolution)
    with full_precision(pooled):
        return torch.einsum("kc,bchw->bkhw", as_float(weight), pooled)


@register_loss("catkd", aliases=("cat_kd", "cat-kd"))
class CATKDLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "cat": cat_weight * MSE(CAMs)}``."""

    term_names = ("ce", "cat")
    needs_features = True

    def __init__(
        self,
        ce_weight: float = 1.0,
        cat_weight: float = 15.0,
        resolution: int = 2,
        normalize: bool = False,
    ):
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.cat_weight = check_weight("cat_weight", cat_weight)
        if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        self.resolution = int(resolution)
        self.normalize = bool(normalize)
        # plain attributes, not submodules: the classifiers belong to the networks
        self._nets: tuple[nn.Module, nn.Module] | None = None

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("CAT-KD transfers a teacher's CAMs; got teacher=None")
        for net in (student, teacher):
            w = _classifier_weight(net)
            if w.shape[0] != net.num_classes:
                raise TypeError(f"{type(net).__name__}'s classifier has {w.shape[0]} rows")
            check_pooled_map(net, example_input)
        self._nets = (student, teacher)

    def cams(self, features: Any, which: int) -> Tensor:
        assert self._nets is not None
        fmap = features["pooled_map"]
        weight = _classifier_weight(self._nets[which])
        if which == 1:
            fmap, weight = fmap.detach(), weight.detach()
        a = class_activation_maps(fmap, weight, self.resolution)
        if self.normalize:
            a = F.normalize(a.flatten(2), dim=2).view_as(a)
        return a

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
        require_setup(self, "_nets")
        if student_features is None or teacher_features is None:
            raise ValueError("CAT-KD needs student_features= and teacher_features=")
        a_s = self.cams(student_features, 0)
        a_t = self.cams(teacher_features, 1)
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "cat": self.cat_weight * F.mse_loss(a_s, a_t),
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, cat_weight={self.cat_weight}, "
            f"resolution={self.resolution}, normalize={self.normalize}"
        )
