"""A trained model and its test split, rebuilt from a run folder (``config.yaml`` + weights)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from figkd.config import Config, config_from_dict, load_yaml
from figkd.models import ZooModel


@dataclass
class LoadedRun:
    """One run folder: its config, the model (eval mode, frozen) and the test dataset."""

    path: Path
    config: Config
    model: ZooModel
    test: Any  # torch Dataset of (image, label), with .classes and .targets

    @property
    def name(self) -> str:
        return f"{self.config.experiment}/{self.path.name}"


def read_run_config(run_dir: str | os.PathLike[str]) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {path} is missing")
    return config_from_dict(load_yaml(path.read_text()))


def load_run(
    run_dir: str | os.PathLike[str],
    *,
    checkpoint: str = "last.pt",
    data_root: str | os.PathLike[str] | None = None,
) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from ``checkpoints/<checkpoint>`` and its test split.

    The test transform is the preset's evaluation transform; ``data_root`` replaces the
    config's ``data.root`` (for runs moved to another machine).
    """
    from figkd.data import build_transforms, load_dataset
    from figkd.engine.checkpoint import load_teacher
    from figkd.engine.data import train_preset

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    preset = train_preset(cfg)
    root = data_root if data_root is not None else cfg.data.root
    test = load_dataset(
        cfg.data.dataset, root, "test", build_transforms(preset, train=False), **cfg.data.args
    )
    path = run_dir / "checkpoints" / checkpoint
    if checkpoint == "last.pt" and not path.is_file() and (path.parent / "teacher.pt").is_file():
        path = path.parent / "teacher.pt"  # a study teacher moved without last.pt: same weights
    model, _ = load_teacher(
        cfg.model.name,
        path,
        len(test.classes),
        in_channels=len(preset.mean),
        args=cfg.model.args,
    )
    return LoadedRun(run_dir, cfg, model, test)


def stack_images(dataset: Any, indices: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Images ``indices`` of ``dataset`` as one batch, with their labels."""
    items = [dataset[i] for i in indices]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = np.asarray([int(y) for _, y in items], dtype=np.int64)
    return images, labels


@torch.no_grad()
def forward_all(
    model: ZooModel, dataset: Any, indices: list[int], batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Logits and embeddings (``forward_features``) of ``indices``, as float64 arrays."""
    logits, embeddings, labels = [], [], []
    for start in range(0, len(indices), batch_size):
        images, y = stack_images(dataset, indices[start : start + batch_size])
        features = model.forward_features(images)
        logits.append(features["logits"].double().numpy())
        embeddings.append(features["embedding"].double().numpy())
        labels.append(y)
    return {
        "logits": np.concatenate(logits),
        "embedding": np.concatenate(embeddings),
        "labels": np.concatenate(labels),
    }
