"""Optimizers and learning-rate schedules, chosen by name from registries.

Schedules are pure functions of the (1-based) epoch, evaluated at the start of
each epoch, so a resumed run needs no scheduler state to continue exactly.
The default ``multistep`` is the paper's (and mdistiller's) rule:
``lr = base * gamma ** (number of milestones < epoch)`` -- 0.05 for epochs
1-150, 0.005 for 151-180, and so on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from figkd.registry import Registry

if TYPE_CHECKING:
    from figkd.config import Config

OptimizerFactory = Callable[[list[dict[str, Any]], "Config", float], torch.optim.Optimizer]
#: a schedule maps (epoch counted from 1, config) to a multiplier of the base LR
Schedule = Callable[[int, "Config"], float]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULES: Registry[Schedule] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict[str, Any]], cfg: Config, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.SGD(
        groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    )


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict[str, Any]], cfg: Config, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.optim.weight_decay)


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: Config, lr: float
) -> torch.optim.Optimizer:
    """The optimizer named ``cfg.optim.name`` over ``params`` with base LR ``lr``."""
    groups = [{"params": [p for p in params if p.requires_grad]}]
    return OPTIMIZERS.get(cfg.optim.name)(groups, cfg, lr)


@SCHEDULES.register("multistep", aliases=("step",))
def _multistep(epoch: int, cfg: Config) -> float:
    passed = sum(1 for milestone in cfg.schedule.milestones if epoch > milestone)
    return cfg.schedule.gamma**passed


@SCHEDULES.register("cosine")
def _cosine(epoch: int, cfg: Config) -> float:
    progress = (epoch - 1) / max(1, cfg.train.epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("constant")
def _constant(epoch: int, cfg: Config) -> float:
    return 1.0


#: the paper's schedule: LR x0.1 after these epochs of a 240-epoch run
PAPER_EPOCHS = 240
PAPER_MILESTONES = (150, 180, 210)


def scale_milestones(
    epochs: int,
    base: Sequence[int] = PAPER_MILESTONES,
    base_epochs: int = PAPER_EPOCHS,
) -> list[int]:
    """The paper's milestones scaled to ``epochs``, rounded *down*.

    The engine multiplies the LR by gamma for every epoch ``e > milestone``.  For a
    fractional milestone ``x`` and whole epochs, ``e > x`` holds exactly when
    ``e > floor(x)``, so flooring keeps the scaled schedule's meaning exactly: at 60 epochs
    150/180/210 scale to 37.5/45/52.5, and the LR drops from epoch 38, 46 and 53 on
    (``[37, 45, 52]``).  Milestones below 1 become 1.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return [max(1, math.floor(m * epochs / base_epochs)) for m in base]


def lr_at(epoch: int, cfg: Config, base_lr: float) -> float:
    """The LR of 1-based ``epoch``: the schedule times an optional linear warm-up."""
    factor = SCHEDULES.get(cfg.schedule.name)(epoch, cfg)
    warmup = cfg.schedule.warmup_epochs
    if warmup > 0 and epoch <= warmup:
        factor *= epoch / warmup
    return base_lr * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
