"""Helpers shared by the feature-based methods: shape probing, stage pairing, connectors.

Methods read the ``figkd.models.Features`` dictionary (``stem``, ``stages``,
``preact_stages``, ``pooled_map``, ``embedding``, ``logits``).  ``hint_layers`` is
mdistiller's ``feats`` list for the CIFAR zoo: index 0 is the stem, 1.. the stages.  For the
ImageNet-style nets it differs: figkd's ResNet stem is the 56-px map after the max-pool
(mdistiller's first entry is the 112-px map before it), and mdistiller's MobileNetV1 list has
no stem entry, so its hint indices are ours minus one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import zoo_model


@torch.no_grad()
def probe_features(model: nn.Module, example_input: Tensor) -> Mapping[str, Any]:
    """``model.forward_features`` on two example images, in eval mode (no BN statistics move)."""
    if not hasattr(model, "forward_features"):
        raise TypeError(
            f"{type(model).__name__} has no forward_features; feature methods need zoo models"
        )
    was_training = model.training
    model.eval()
    try:
        return zoo_model(model).forward_features(example_input[:2])
    finally:
        model.train(was_training)


def hint_layers(features: Mapping[str, Any]) -> list[Tensor]:
    """``[stem, *stages]``, indexed by ``hint_layer``: mdistiller's ``feats`` list for the
    CIFAR zoo (see the module docstring for the ImageNet-style nets)."""
    return [features["stem"], *features["stages"]]


def paired_stages(
    student: Sequence[Tensor], teacher: Sequence[Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """Pair stage outputs from the deepest one back: the last k of each, k = the shorter count.

    Families differ in stage count (VGG and MobileNetV2 have 4, CIFAR ResNets
    3); aligning from the end pairs the stages closest to the classifier.
    """
    k = min(len(student), len(teacher))
    return list(zip(student[len(student) - k :], teacher[len(teacher) - k :], strict=True))


def pool_to(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)``, through ``avg_pool2d`` when the sizes divide evenly.

    Same values and gradients, but adaptive pooling to a size other than 1 has no
    deterministic CUDA backward: ``train.deterministic=true`` would stop at the first step.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if h % out_h == 0 and w % out_w == 0:
        return F.avg_pool2d(x, (h // out_h, w // out_w))
    return F.adaptive_avg_pool2d(x, (out_h, out_w))


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of the two maps to the other's height and width."""
    (s_h, s_w), (t_h, t_w) = f_s.shape[-2:], f_t.shape[-2:]
    if (s_h, s_w) == (t_h, t_w):
        return f_s, f_t
    if s_h >= t_h and s_w >= t_w:
        return pool_to(f_s, (t_h, t_w)), f_t
    if s_h <= t_h and s_w <= t_w:
        return f_s, pool_to(f_t, (s_h, s_w))
    raise ValueError(f"cannot pool maps of sizes {(s_h, s_w)} and {(t_h, t_w)} to one size")


def require_setup(loss: nn.Module, attribute: str) -> Any:
    """The module ``setup`` creates, or a clear error when setup was never called."""
    module = getattr(loss, attribute, None)
    if module is None:
        raise RuntimeError(
            f"{type(loss).__name__} builds its {attribute} from the networks' shapes: call "
            "loss.setup(student, teacher, example_input=..., num_train_samples=...) first "
            "(the trainer does this)"
        )
    return module


class ConvRegressor(nn.Sequential):
    """FitNet's regressor: maps a (C_s, H_s, W_s) student map onto a (C_t, H_t, W_t) teacher map.

    conv -> BN -> ReLU, the conv chosen by the sizes: stride-2 3x3 when the
    student map is twice as large, a stride-2 4x4 transposed conv when it is
    half as large, otherwise a valid conv of kernel (1 + H_s - H_t, 1 + W_s - W_t)
    (1x1 for equal sizes).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        s_c, s_h, s_w = (int(v) for v in student_shape[-3:])
        t_c, t_h, t_w = (int(v) for v in teacher_shape[-3:])
        conv: nn.Module
        if (s_h, s_w) == (2 * t_h, 2 * t_w):
            conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif (2 * s_h, 2 * s_w) == (t_h, t_w):
            conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"no regressor maps a student feature of {(s_c, s_h, s_w)} onto a teacher "
                f"feature of {(t_c, t_h, t_w)}; choose another hint_layer"
            )
        super().__init__(conv, nn.BatchNorm2d(t_c), nn.ReLU(inplace=True))
