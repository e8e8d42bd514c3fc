"""Training engine: the loop, optimizers and schedules, checkpoints, logs, seeding, DDP.

>>> from figkd.config import load_config
>>> from figkd.engine import run_seeds
>>> cfg = load_config("configs/cifar100/figkd/resnet32x4_resnet8x4.yaml")  # doctest: +SKIP
>>> summaries = run_seeds(cfg, seeds=[0, 1, 2])                              # doctest: +SKIP
"""

from figkd.engine.checkpoint import load_teacher, load_weights_only, model_payload, save_atomic
from figkd.engine.launch import run_dir_for, run_seeds
from figkd.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_at
from figkd.engine.trainer import EpochRecord, NonFiniteLossError, RunExistsError, Trainer

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochRecord",
    "NonFiniteLossError",
    "RunExistsError",
    "Trainer",
    "build_optimizer",
    "load_teacher",
    "load_weights_only",
    "lr_at",
    "model_payload",
    "run_dir_for",
    "run_seeds",
    "save_atomic",
]
