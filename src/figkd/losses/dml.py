"""Deep mutual learning (Zhang et al., CVPR 2018): two students teach each other, no teacher.

A peer network, built in ``setup`` and held by this loss (so the optimizer
trains it, checkpoints save it under ``loss.peer.*`` and the trainer evaluates
it as ``peer``), sees the same images.  Each network minimises its CE plus the
KL from the other's (detached) prediction:
  student: ce_weight * CE(z_s, y) + kl_weight * T^2 * KL(p_peer || p_s)
  peer:    ce_weight * CE(z_p, y) + kl_weight * T^2 * KL(p_s || p_peer)
Defaults follow the paper: T = 1, both weights 1.  The peer is the student's
architecture unless ``peer=`` names another zoo model (``peer_args=`` its options).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import require_setup, zoo_model
from figkd.losses.kd import check_temperature, kd_divergence
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight


@register_loss("dml", aliases=("mutual",))
class DMLLoss(DistillationLoss):
    """Terms ``{"ce", "kl", "peer_ce", "peer_kl"}``; the peer's terms train the peer only."""

    term_names = ("ce", "kl", "peer_ce", "peer_kl")
    needs_teacher = False
    needs_images = True

    def __init__(
        self,
        peer: str | None = None,
        peer_args: dict[str, Any] | None = None,
        ce_weight: float = 1.0,
        kl_weight: float = 1.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.peer_name = peer
        self.peer_args = dict(peer_args or {})
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kl_weight = check_weight("kl_weight", kl_weight)
        self.temperature = check_temperature(temperature)
        self.peer: nn.Module | None = None

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        from figkd.models import MODELS, create_model  # lazy: keeps losses importable alone

        arch = self.peer_name or getattr(student, "arch", "")
        if not arch:
            raise ValueError(
                f"DML builds its peer from the student's registry name, but "
                f"{type(student).__name__} has none: set loss.args.peer=<model name>"
            )
        args = dict(self.peer_args)
        if self.peer_name is None:  # options the student records as attributes (e.g. width)
            factory = inspect.signature(MODELS.get(arch)).parameters
            for name in factory:
                if name not in ("num_classes", "in_channels") and hasattr(student, name):
                    args.setdefault(name, getattr(student, name))
        peer = create_model(
            arch,
            num_classes=int(zoo_model(student).num_classes),
            in_channels=int(getattr(student, "in_channels", 3)),
            **args,
        )
        if self.peer_name is None:
            mine = {k: tuple(v.shape) for k, v in student.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in peer.state_dict().items()}
            if mine != theirs:
                raise ValueError(
                    f"the DML peer built as {arch} with options {args} does not match "
                    "the student's shapes: set loss.args.peer_args to the student's model.args"
                )
        param = next(student.parameters(), None)
        self.peer = peer.to(param.device if param is not None else example_input.device)

    def eval_models(self) -> dict[str, nn.Module]:
        """Networks the trainer evaluates besides the student."""
        return {} if self.peer is None else {"peer": self.peer}

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        images: Tensor,
        **context: Any,
    ) -> dict[str, Tensor]:
        peer = require_setup(self, "peer")
        peer_logits = peer(images)
        t = self.temperature
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "kl": self.kl_weight * kd_divergence(student_logits, peer_logits, t),
            "peer_ce": self.ce_weight * F.cross_entropy(as_float(peer_logits), targets),
            "peer_kl": self.kl_weight * kd_divergence(peer_logits, student_logits, t),
        }

    def extra_repr(self) -> str:
        return (
            f"peer={self.peer_name or '<student arch>'}, ce_weight={self.ce_weight}, "
            f"kl_weight={self.kl_weight}, temperature={self.temperature}"
        )
