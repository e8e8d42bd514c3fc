"""FitNets (Romero et al., ICLR 2015): the student's middle feature map regresses the teacher's.

L = ce_weight * CE(z_s, y) + feat_weight * mean((r(F_s) - F_t)^2), where F_s and
F_t are the ``hint_layer``-th entries of ``[stem, *stages]`` (post-activation),
r is a conv -> BN -> ReLU regressor built in ``setup`` from the two maps'
shapes, and the mean runs over batch, channels and positions.  Defaults are
mdistiller's CIFAR-100 ones (hint layer 2, CE 1, feature weight 100), trained
in one stage together with CE as in the CRD benchmark the paper's numbers
come from (the FitNets paper pre-trains the hint first; see docs/methods.md).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import (
    ConvRegressor,
    hint_layers,
    probe_features,
    require_setup,
)
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight


@register_loss("fitnet", aliases=("fitnets", "hint"))
class FitNetLoss(DistillationLoss):
    """Terms ``{"ce": ce_weight * CE, "hint": feat_weight * MSE(r(F_s), F_t)}``."""

    term_names = ("ce", "hint")
    needs_features = True

    def __init__(self, hint_layer: int = 2, ce_weight: float = 1.0, feat_weight: float = 100.0):
        super().__init__()
        self.hint_layer = int(hint_layer)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)
        self.regressor: nn.Module | None = None

    def _hint(self, features: Any, who: str) -> Tensor:
        layers = hint_layers(features)
        if not -len(layers) <= self.hint_layer < len(layers):
            raise ValueError(
                f"hint_layer={self.hint_layer} but the {who} has {len(layers)} hint layers "
                "(0 = stem, 1.. = stages)"
            )
        return layers[self.hint_layer]

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("FitNet needs a teacher")
        f_s = self._hint(probe_features(student, example_input), "student")
        f_t = self._hint(probe_features(teacher, example_input), "teacher")
        self.regressor = ConvRegressor(f_s.shape[1:], f_t.shape[1:]).to(f_s.device)

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
        regressor = require_setup(self, "regressor")
        f_s = regressor(self._hint(student_features, "student"))
        f_t = self._hint(teacher_features, "teacher").detach()
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "hint": self.feat_weight * F.mse_loss(as_float(f_s), as_float(f_t)),
        }

    def extra_repr(self) -> str:
        return (
            f"hint_layer={self.hint_layer}, ce_weight={self.ce_weight}, "
            f"feat_weight={self.feat_weight}"
        )
