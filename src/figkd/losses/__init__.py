"""Distillation losses: one module per method, all in the :data:`LOSSES` registry.

>>> from figkd.losses import build_loss
>>> loss = build_loss("figkd", beta=2.0)
>>> terms = loss(student_logits, teacher_logits, targets)  # doctest: +SKIP
>>> total = sum(terms.values())  # doctest: +SKIP
"""

from figkd.losses.base import LOSSES, DistillationLoss, build_loss, list_losses, register_loss
from figkd.losses.ce import CELoss
from figkd.losses.dist import DISTLoss
from figkd.losses.dkd import DKDLoss
from figkd.losses.figkd_loss import FiGKDLoss
from figkd.losses.kd import KDLoss, kd_divergence
from figkd.losses.mlkd import MLKDLoss
from figkd.losses.standardize import standardize_logits


def _import_all_methods() -> None:
    """Import every module of this package so each ``@register_loss`` runs.

    New methods only add a module; this file and the trainer stay untouched.
    """
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        importlib.import_module(info.name)


_import_all_methods()

__all__ = [
    "LOSSES",
    "CELoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "FiGKDLoss",
    "KDLoss",
    "MLKDLoss",
    "build_loss",
    "kd_divergence",
    "list_losses",
    "register_loss",
    "standardize_logits",
]
