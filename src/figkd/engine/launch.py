"""Run one config over several seeds: ``runs/<experiment>/seed<k>`` each."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from figkd.config import Config
from figkd.engine import distributed as dist_utils
from figkd.engine.trainer import EpochRecord, Trainer


def run_dir_for(cfg: Config, seed: int) -> Path:
    """``<output_dir>/<experiment>/seed<seed>``."""
    if not cfg.experiment:
        raise ValueError("the config has no experiment name: set experiment=<name>")
    return Path(cfg.output_dir) / cfg.experiment / f"seed{seed}"


def run_seeds(
    cfg: Config,
    seeds: Sequence[int] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    loss: nn.Module | None = None,
    on_epoch_end: Callable[[int, EpochRecord], None] | None = None,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Train ``cfg`` once per seed (``cfg.train.seed`` if ``seeds`` is empty); return summaries.

    A given ``loss`` is copied for each seed, so every seed starts from it as given: one
    shared object would hand seed 1 whatever seed 0 trained into it (learned scales,
    buffers), and seed 1 would no longer match a run of seed 1 alone.
    """
    seeds = list(seeds) if seeds else [cfg.train.seed]
    summaries = []
    try:
        for seed in seeds:
            run_cfg = copy.deepcopy(cfg)
            run_cfg.train.seed = seed
            callback = None
            if on_epoch_end is not None:
                callback = functools.partial(on_epoch_end, seed)
            label = f"{prefix}seed{seed} " if len(seeds) > 1 else prefix
            trainer = Trainer(
                run_cfg,
                run_dir_for(run_cfg, seed),
                resume=resume,
                overwrite=overwrite,
                loss=None if loss is None else copy.deepcopy(loss),
                on_epoch_end=callback,
                prefix=label,
            )
            summaries.append(trainer.fit())
    finally:
        dist_utils.destroy_process_group()
    return summaries
