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
The classifier is found with ``model.classifier_name()``; F is located once in
``setup``: the last stage output, ReLU of the last pre-activation (WRN's head
BN), or -- for heads with an extra conv (MobileNetV2, ShuffleNetV2) -- the
output of the head module, captured by a forward hook on that module.  Each
candidate is accepted only if its global average reproduces the network's
``embedding``.

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
from figkd.losses.feature_utils import require_setup
from figkd.losses.validation import check_weight


def _matches(candidate: Tensor, embedding: Tensor) -> bool:
    if candidate.dim() != 4 or candidate.shape[:2] != embedding.shape[:2]:
        return False
    pooled = candidate.float().mean(dim=(2, 3))
    return torch.allclose(pooled, embedding.float(), rtol=1e-4, atol=1e-5)


class _CamSource:
    """Where a network's pre-pooling feature map comes from (not an nn.Module on purpose)."""

    def __init__(self, kind: str, module: nn.Module | None = None, relu: bool = False):
        self.kind, self.relu = kind, relu
        self.captured: Tensor | None = None
        self.handle = None
        if module is not None:
            self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self.captured = output

    def feature_map(self, features: Any) -> Tensor:
        if self.kind == "stage":
            return features["stages"][-1]
        if self.kind == "relu_preact":
            return F.relu(features["preact_stages"][-1])
        if self.captured is None:
            raise RuntimeError("CAT-KD's feature hook saw no forward pass of the network yet")
        out, self.captured = self.captured, None
        return F.relu(out) if self.relu else out


@torch.no_grad()
def locate_cam_source(model: nn.Module, example_input: Tensor) -> _CamSource:
    """Find the feature map whose global average is ``embedding`` (see the module docstring)."""
    seen: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() == 4:
            seen.append((module, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        feats = model.forward_features(example_input[:2])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    emb = feats["embedding"].flatten(1)
    if _matches(feats["stages"][-1], emb):
        return _CamSource("stage")
    if _matches(F.relu(feats["preact_stages"][-1]), emb):
        return _CamSource("relu_preact")
    for module, out in reversed(seen):  # the last module that produced the pooled map
        for relu in (False, True):
            if _matches(F.relu(out) if relu else out, emb):
                return _CamSource("hook", module, relu)
    raise TypeError(
        f"CAT-KD could not find the feature map that {type(model).__name__} pools into its "
        "embedding; the model needs a 'global average pool -> linear' head")


def _classifier_weight(model: nn.Module) -> Tensor:
    name = model.classifier_name()
    layer = dict(model.named_modules())[name]
    return layer.weight


def class_activation_maps(feature_map: Tensor, weight: Tensor, resolution: int) -> Tensor:
    """(B, K, r, r) CAMs: the classifier weights applied to the r x r average-pooled map."""
    pooled = F.adaptive_avg_pool2d(feature_map.float(), resolution)
    return torch.einsum("kc,bchw->bkhw", weight.float(), pooled)


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
        self._sources: tuple[_CamSource, _CamSource] | None = None

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
        if self._sources is not None:  # a second setup replaces the hooks of the first
            for src in self._sources:
                if src.handle is not None:
                    src.handle.remove()
        for net in (student, teacher):
            w = _classifier_weight(net)
            if w.shape[0] != net.num_classes:
                raise TypeError(f"{type(net).__name__}'s classifier has {w.shape[0]} rows")
        self._nets = (student, teacher)
        self._sources = (locate_cam_source(student, example_input),
                         locate_cam_source(teacher, example_input))

    def cams(self, features: Any, which: int) -> Tensor:
        assert self._nets is not None and self._sources is not None
        fmap = self._sources[which].feature_map(features)
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
        require_setup(self, "_sources")
        if student_features is None or teacher_features is None:
            raise ValueError("CAT-KD needs student_features= and teacher_features=")
        a_s = self.cams(student_features, 0)
        a_t = self.cams(teacher_features, 1)
        return {
            "ce": self.ce_weight * F.cross_entropy(student_logits.float(), targets),
            "cat": self.cat_weight * F.mse_loss(a_s, a_t),
        }

    def extra_repr(self) -> str:
        srcs = [s.kind for s in self._sources] if self._sources else None
        return (
            f"ce_weight={self.ce_weight}, cat_weight={self.cat_weight}, "
            f"resolution={self.resolution}, normalize={self.normalize}, sources={srcs}"
        )
