"""DDP: a 2-process gloo job on CPU (via torchrun) matches 1 process on the same global batch.

Both runs go through ``torchrun`` in subprocesses running this file as a
script; the script registers a BatchNorm-free MLP (per-rank BatchNorm
statistics legitimately differ from full-batch ones, so a model with BN could
not match) and trains it on digits with the real trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _run_torchrun(nproc: int, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        __file__,
        str(out),
    ]
    return subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=300
    )


def test_two_process_gloo_matches_one_process(tmp_path: Path) -> None:
    results = {}
    for nproc in (1, 2):
        done = _run_torchrun(nproc, tmp_path / f"np{nproc}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results[nproc] = torch.load(
            tmp_path / f"np{nproc}/ddp/seed0/checkpoints/last.pt", weights_only=True
        )
    one, two = results[1], results[2]
    assert one["epoch"] == two["epoch"] == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert (
        two["state"]["global_step"] == one["state"]["global_step"] == 2 * (1295 // 64)
    )  # same number of global batches
    s1 = json.loads((tmp_path / "np1/ddp/seed0/summary.json").read_text())
    s2 = json.loads((tmp_path / "np2/ddp/seed0/summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s2["final"]["test"]["top1"] == pytest.approx(s1["final"]["test"]["top1"], abs=0.3)
    assert s2["final"]["train"]["loss"] == pytest.approx(s1["final"]["train"]["loss"], rel=1e-4)


def _worker(out: str) -> None:  # pragma: no cover - runs under torchrun
    from torch import nn

    from figkd.config import config_from_dict
    from figkd.engine import run_seeds
    from figkd.models import ZooModel, register_model

    class MLP(ZooModel):
        def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
            super().__init__()
            self.num_classes, self.in_channels, self.embedding_dim = num_classes, in_channels, 32
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64 * in_channels, 32), nn.ReLU())
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x))

    register_model("ddp_test_mlp")(
        lambda num_classes=10, in_channels=1: MLP(num_classes, in_channels)
    )
    cfg = config_from_dict(
        {
            "experiment": "ddp",
            "output_dir": out,
            "model": {"name": "ddp_test_mlp"},
            "data": {"dataset": "digits", "num_workers": 0, "batch_size": 64},
            "schedule": {"milestones": [1]},
            "train": {
                "epochs": 2,
                "device": "cpu",
                "num_threads": 1,
                "progress": "none",
                "deterministic": True,
            },
        }
    )
    run_seeds(cfg, [0])


if __name__ == "__main__":  # pragma: no cover
    _worker(sys.argv[1])
