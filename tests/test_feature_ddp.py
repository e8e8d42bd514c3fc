"""DDP with feature methods: 2 gloo processes keep the loss's own parameters in step.

The student's gradients are averaged by DDP (through ``FeatureOutput``, so the
features path goes through DDP's forward); the connectors' and DML's peer's by
the trainer.  Each rank dumps its parameters; they must agree exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fitnet", "dml"])
def test_two_ranks_keep_student_and_connectors_identical(method: str, tmp_path: Path) -> None:
    from figkd.engine import model_payload, save_atomic
    from figkd.models import create_model

    teacher = tmp_path / "teacher.pt"
    net = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)
    save_atomic(model_payload(net), teacher)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", __file__, str(tmp_path), method, str(teacher)]
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["loss"], "the loss has trainable parameters"
    for part in ("student", "loss"):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), (part, key)


def _worker(out: str, method: str, teacher: str) -> None:  # pragma: no cover - under torchrun
    import torch.distributed as dist

    from figkd.config import config_from_dict
    from figkd.engine import Trainer

    cfg: dict = {
        "experiment": method,
        "output_dir": out,
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "data": {"dataset": "digits", "num_workers": 0, "batch_size": 32},
        "loss": {"name": method},
        "train": {"epochs": 1, "max_steps_per_epoch": 4, "device": "cpu", "num_threads": 1,
                  "progress": "none"},
    }
    if method != "dml":
        cfg["teacher"] = {"name": "tiny_cnn", "args": {"width": 8}, "checkpoint": teacher}
    trainer = Trainer(config_from_dict(cfg), Path(out) / method)
    trainer.fit()
    params = {
        "student": {k: v.detach().clone() for k, v in trainer.student.named_parameters()},
        "loss": {k: v.detach().clone() for k, v in trainer.loss.named_parameters()},
    }
    torch.save(params, Path(out) / f"rank{dist.get_rank()}.pt")


if __name__ == "__main__":  # pragma: no cover
    _worker(*sys.argv[1:4])
