"""The run directory: ``runs/<experiment>/seed<k>/`` and everything written into it.

Layout (docs: design.md, "Conventions")::

    config.yaml            the fully resolved config
    metrics.jsonl          one JSON line per epoch (train terms, LR, val/test metrics)
    tensorboard/           TensorBoard event files
    checkpoints/last.pt    atomic, resumable
    checkpoints/best.pt    weights of the best epoch on the validation split
    summary.json           versions, git commit, device, wall time, img/s, final/best metrics
    failure.json           why a run stopped with an error, in setup or an epoch (until it
                           finishes when run again)
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import figkd

SUMMARY = "summary.json"
FAILURE = "failure.json"


class RunDir:
    """Paths of one run and the writers for its logs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tensorboard"
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.summary = self.path / SUMMARY
        self.failure = self.path / FAILURE

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(_jsonable(record)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every epoch record.  A torn last line (a run killed mid-append, before that
        epoch's checkpoint) is dropped; a damaged line elsewhere is an error naming the file."""
        if not self.metrics.exists():
            return []
        lines = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines):
                    break
                raise ValueError(
                    f"{self.metrics} line {number} is not JSON ({error}); the file is damaged: "
                    "restore it or start the run again with --overwrite"
                ) from error
        return records

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop records after ``last_epoch`` (written by a run killed before its checkpoint),
        atomically: a kill during the rewrite leaves the old file."""
        kept = [r for r in self.read_metrics() if int(r.get("epoch", 0)) <= last_epoch]
        tmp = self.metrics.with_name(f".{self.metrics.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json_atomic(self.summary, summary)

    def write_failure(self, failure: dict[str, Any]) -> None:
        """Also for a run that failed while setting up, before its folder existed."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.failure, failure)

    def read_failure(self) -> dict[str, Any] | None:
        """The record of the run's last failure, if it has one that no finish cleared."""
        return read_failure(self.path)


def read_failure(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/failure.json`` (None when absent): a run that stopped with an error keeps
    its reason there, so a table can say why a seed is missing instead of dropping it."""
    path = Path(run_dir) / FAILURE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def failure_reason(message: str) -> str:
    """A failure message's first sentence: what went wrong, without the advice after it
    (the engine's errors name the problem first, then the fix)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    end = first.find(". ")
    return first[:end] if end > 0 else first.rstrip(".")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """NaN/inf become null (strict JSON); tensors and numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TensorBoardLogger:
    """Scalars to TensorBoard on rank 0; a no-op when TensorBoard is unavailable."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self.writer = None
            return
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def versions() -> dict[str, str | None]:
    """Versions of everything that can change a result."""
    import numpy
    import pywt

    try:
        import torchvision

        tv: str | None = torchvision.__version__
    except ImportError:  # pragma: no cover
        tv = None
    return {
        "figkd": figkd.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": tv,
        "numpy": numpy.__version__,
        "pywavelets": pywt.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else None,
        "platform": platform.platform(),
        "cpu_capability": cpu_capability(),
    }


#: the source tree's commit as this process loaded its code, once :func:`pin_git_commit` ran
_PINNED: list[dict[str, Any] | None] = []


def pin_git_commit() -> None:
    """Read the figkd source tree's commit now, as the one this process runs (the CLI calls
    this first, as it loads the code): a commit made while a long run trains, or waits for
    its teacher cache, must not be recorded as that run's code.  Later calls keep the first."""
    if not _PINNED:
        _PINNED.append(git_commit())


def git_commit(folder: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """HEAD commit of ``folder`` (default: the figkd source tree, or the commit pinned by
    :func:`pin_git_commit`) and whether it has local changes; None outside git."""
    if folder is None and _PINNED:
        return _PINNED[0]
    folder = Path(folder) if folder is not None else Path(figkd.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows: reports
    name it because times measured on one CPU say little about another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels dispatch to (``AVX512``, ``AVX2``, ...).

    CPU results are bit-identical only between machines that share it: an Intel Xeon and an
    AMD EPYC, both AVX512, retrained the same teacher file; an AVX2 EPYC did not
    (docs/reproduction.md section 6).
    """
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return str(get()) if get is not None else "unknown"


def device_description(device: torch.device) -> str:
    """The device a run trained on, as its summary records it (the GPU's or CPU's model)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({cpu_model()}, {cpu_capability()}, {torch.get_num_threads()} threads)"


def command_line() -> str:
    return " ".join(sys.argv)
