"""Edge cases of the state behind exact resume: checkpoints, the run folder's files,
seeding and global RNG state.

References: NumPy's own ``RandomState``, Python's ``random.Random`` and a fresh
``torch.Generator`` seeded with values worked out by hand in each test; ``hashlib`` over
the file's bytes for digests; the model's own ``state_dict`` for saved weights.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytest
import torch
from torch import nn

from figkd.engine import run_dir, seeding
from figkd.engine.checkpoint import load_teacher, model_payload, save_atomic, unwrap
from figkd.engine.run_dir import (
    RunDir,
    TensorBoardLogger,
    cpu_model,
    device_description,
    git_commit,
)
from figkd.engine.seeding import (
    get_rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
    worker_init_fn,
)
from figkd.models import create_model
from figkd.models.tiny import TinyCNN

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


@pytest.fixture
def global_rng() -> Iterator[None]:
    """Put the global torch/numpy/python RNGs back as they were: other tests draw from them."""
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    torch.set_rng_state(saved[0])
    np.random.set_state(saved[1])
    random.setstate(saved[2])


@pytest.fixture
def deterministic_flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore torch's determinism switches; ``monkeypatch`` restores the environment."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


# --------------------------------------------------------------------------- seeding


@pytest.mark.parametrize(
    ("seed", "numpy_seed"),
    [
        (1234, 1234),  # below 2**32: numpy gets the seed itself
        (2**32 + 1234, 1234),  # 4294968530 mod 4294967296 = 1234: numpy refuses seeds >= 2**32
    ],
)
def test_seed_everything_seeds_each_library_from_the_one_seed(
    global_rng: None, seed: int, numpy_seed: int
) -> None:
    seed_everything(seed)
    got = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(got[0], torch.rand(4, generator=torch.Generator().manual_seed(seed)))
    assert np.array_equal(got[1], np.random.RandomState(numpy_seed).rand(4))
    assert got[2] == random.Random(seed).random()


def test_worker_init_fn_follows_torchs_per_worker_seed(global_rng: None) -> None:
    # torch gives each DataLoader worker a 64-bit seed; 2**40 + 77 mod 2**32 = 77
    torch.manual_seed(2**40 + 77)
    worker_init_fn(3)
    assert np.array_equal(np.random.rand(4), np.random.RandomState(77).rand(4))
    assert random.random() == random.Random(2**40 + 77).random()


def test_set_deterministic_switches_every_flag_both_ways(deterministic_flags: None) -> None:
    set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # before cuBLAS's first use
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


def test_set_deterministic_off_leaves_the_cublas_setting_alone(deterministic_flags: None) -> None:
    set_deterministic(False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


# --------------------------------------------------------------------------- CUDA RNG state
# A checkpoint written on a GPU must resume on a CPU machine, and one written on a CPU must
# not touch CUDA.  torch.cuda's entry points are replaced by recorders, so these run anywhere.


class _CudaRecorder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, available: bool, initialised: bool) -> None:
        self.restored: list[Any] = []
        self.read = 0
        monkeypatch.setattr(seeding.torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(seeding.torch.cuda, "is_initialized", lambda: initialised)
        monkeypatch.setattr(seeding.torch.cuda, "get_rng_state_all", self._get)
        monkeypatch.setattr(seeding.torch.cuda, "set_rng_state_all", self.restored.append)

    def _get(self) -> list[torch.Tensor]:
        self.read += 1
        return [torch.arange(4, dtype=torch.uint8)]


@pytest.mark.parametrize(
    ("available", "initialised", "saved"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_cuda_rng_state_is_saved_only_when_cuda_is_in_use(
    monkeypatch: pytest.MonkeyPatch, available: bool, initialised: bool, saved: bool
) -> None:
    cuda = _CudaRecorder(monkeypatch, available, initialised)
    state = get_rng_state()
    assert ("cuda" in state) is saved and cuda.read == int(saved)
    if saved:
        assert torch.equal(state["cuda"][0], torch.arange(4, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("available", "has_cuda", "restored"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_cuda_rng_state_is_restored_only_where_cuda_exists(
    monkeypatch: pytest.MonkeyPatch, global_rng: None, available: bool, has_cuda: bool,
    restored: bool,
) -> None:
    state = get_rng_state()  # before the recorder: a CPU-only state
    cuda_state = [torch.arange(5, dtype=torch.uint8)]
    if has_cuda:
        state["cuda"] = cuda_state
    cuda = _CudaRecorder(monkeypatch, available, initialised=True)
    set_rng_state(state)
    assert cuda.restored == ([cuda_state] if restored else [])


# --------------------------------------------------------------------------- checkpoints


def test_save_atomic_creates_missing_folders_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "last.pt"  # neither folder exists yet
    save_atomic({"epoch": 1, "w": torch.arange(3)}, path)
    save_atomic({"epoch": 2, "w": torch.arange(4)}, path)  # the folder exists now
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


class _DDPLike(nn.Module):
    """Holds the real model as ``.module``, like DistributedDataParallel."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class _CompiledLike(nn.Module):
    """Holds the real model as ``._orig_mod``, like ``torch.compile``'s wrapper."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_unwrap_strips_ddp_and_compile_wrappers_in_any_order() -> None:
    model = nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(_DDPLike(model)) is model
    assert unwrap(_CompiledLike(model)) is model
    assert unwrap(_DDPLike(_CompiledLike(model))) is model
    assert unwrap(_CompiledLike(_DDPLike(model))) is model


def test_model_payload_of_a_wrapped_zoo_model_is_a_teacher_file() -> None:
    model = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)
    assert isinstance(model, TinyCNN)
    payload = model_payload(_DDPLike(_CompiledLike(model)), epoch=3)
    assert set(payload) == {"format", "model", "arch", "num_classes", "epoch"}
    assert (payload["format"], payload["arch"], payload["num_classes"]) == (1, "tiny_cnn", 10)
    assert payload["epoch"] == 3
    own = model.state_dict()
    assert list(payload["model"]) == list(own)  # no "module." / "_orig_mod." prefixes
    for key, value in own.items():
        assert torch.equal(payload["model"][key], value)
    with torch.no_grad():  # a copy: training on does not change what was saved
        model.fc.bias.add_(1.0)
    assert not torch.equal(payload["model"]["fc.bias"], model.fc.bias)


def test_model_payload_of_a_plain_module_names_its_class_and_no_classes() -> None:
    """No zoo ``arch`` and no ``num_classes``: the class name, and 0 (= unknown, which
    load_teacher does not check) rather than a class count the file never had."""
    payload = model_payload(nn.Linear(4, 2))
    assert (payload["arch"], payload["num_classes"]) == ("Linear", 0)


def test_load_teacher_with_default_channels_and_options(tmp_path: Path) -> None:
    """A CIFAR teacher saved by ``figkd train``, loaded as a library user would: RGB input and
    the architecture's own options are the defaults."""
    torch.manual_seed(0)
    saved = create_model("resnet8", num_classes=10)
    path = save_atomic(model_payload(saved), tmp_path / "teacher.pt")
    model, record = load_teacher("resnet8", path, 10)
    assert record == {
        "checkpoint": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "arch": "resnet8",
        "num_classes": 10,
    }
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- the run folder


def test_run_dir_layout_and_create_twice(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "runs" / "exp" / "seed0")
    assert (run.config, run.metrics, run.summary) == (
        tmp_path / "runs/exp/seed0/config.yaml",
        tmp_path / "runs/exp/seed0/metrics.jsonl",
        tmp_path / "runs/exp/seed0/summary.json",
    )
    assert run.tensorboard == tmp_path / "runs/exp/seed0/tensorboard"
    assert (run.last, run.best) == (
        tmp_path / "runs/exp/seed0/checkpoints/last.pt",
        tmp_path / "runs/exp/seed0/checkpoints/best.pt",
    )
    run.create()  # three missing levels
    run.create()  # a resumed run creates it again
    assert run.checkpoints.is_dir()


def test_metrics_lines_round_trip_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_metrics() == []  # no file yet: a fresh run
    run.append_metrics({"epoch": 1, "loss": torch.tensor(0.5), "acc": float("nan")})
    run.append_metrics({"epoch": 2, "loss": np.float32(0.25)})
    assert run.metrics.read_text() == (
        '{"epoch": 1, "loss": 0.5, "acc": null}\n{"epoch": 2, "loss": 0.25}\n'
    )
    with open(run.metrics, "a") as handle:
        handle.write('{"epoch": 3, "lo')  # killed mid-append
    assert run.read_metrics() == [
        {"epoch": 1, "loss": 0.5, "acc": None},
        {"epoch": 2, "loss": 0.25},
    ]


def test_a_damaged_line_before_the_last_names_its_number(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is not JSON"):
        run.read_metrics()


def test_truncate_metrics_keeps_epochs_up_to_the_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics.write_text(
        '{"note": "no epoch"}\n{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n{"epoch": 3, "a": 3}\n'
    )
    run.truncate_metrics(2)  # epoch 2 is in last.pt; 3 was logged by a run killed after it
    assert run.metrics.read_text() == (
        '{"note": "no epoch"}\n{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n'
    )
    run.truncate_metrics(0)  # a record without an epoch counts as epoch 0
    assert run.metrics.read_text() == '{"note": "no epoch"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left


def test_summary_is_strict_json_with_two_space_indent(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_summary({
        "best": torch.tensor([0.5]),  # one element: a number, as a 0-d tensor would be
        "scalar": torch.tensor(2.0),
        "curve": torch.tensor([1.0, 2.0]),
        "steps": np.int64(7),
        "inf": float("inf"),
        "pair": (1, float("-inf")),
        3: "three",  # type: ignore[dict-item]  # a non-str key on purpose: written as "3"
        "name": "x",
    })
    assert run.summary.read_text() == (
        '{\n  "best": 0.5,\n  "scalar": 2.0,\n  "curve": [\n    1.0,\n    2.0\n  ],\n'
        '  "steps": 7,\n  "inf": null,\n  "pair": [\n    1,\n    null\n  ],\n  "3": "three",\n'
        '  "name": "x"\n}\n'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


class _Writer:
    """Stands in for TensorBoard's SummaryWriter: records what it is given."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.flushed = self.closed = 0

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.scalars.append((key, value, step))

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1


def test_tensorboard_logger_writes_finite_scalars_only() -> None:
    logger = TensorBoardLogger.__new__(TensorBoardLogger)
    writer = _Writer()
    logger.writer = cast("SummaryWriter", writer)
    values = {"a": 1.5, "none": None, "nan": math.nan, "inf": -math.inf, "b": 0.0}
    logger.scalars(values, 4)  # type: ignore[arg-type]  # None on purpose: skipped like nan/inf
    assert writer.scalars == [("a", 1.5, 4), ("b", 0.0, 4)] and writer.flushed == 1
    logger.close()
    assert writer.closed == 1


def test_tensorboard_logger_without_tensorboard_is_a_no_op() -> None:
    logger = TensorBoardLogger.__new__(TensorBoardLogger)
    logger.writer = None
    logger.scalars({"a": 1.0}, 1)
    logger.close()


def test_versions_record_cudnn_only_where_it_exists() -> None:
    cudnn = run_dir.versions()["cudnn"]
    if torch.backends.cudnn.is_available():
        assert cudnn is not None and cudnn != "None"
    else:
        assert cudnn is None


def test_versions_and_the_study_machine_line_name_the_cpu_kernels_instruction_set() -> None:
    # CPU results are bit-identical only between machines whose kernels share it (AVX2 and
    # AVX512 trained different teacher files from one config, docs/reproduction.md section 6)
    from figkd.analysis.study import machine

    capability = torch.backends.cpu.get_cpu_capability()
    assert run_dir.versions()["cpu_capability"] == capability
    assert f"({capability}), " in machine()


def _git(folder: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True)


def test_git_commit_reads_the_given_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git must not find a repository above tmp_path; the figkd tree itself may well be one
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    assert git_commit(repo) is None  # a repository without a commit has no HEAD to record
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    head = (repo / ".git/refs/heads/main").read_text().strip()  # the ref file, not rev-parse
    assert git_commit(repo) == {"commit": head, "dirty": False}
    (repo / "a.txt").write_text("two\n")
    assert git_commit(repo) == {"commit": head, "dirty": True}


def test_the_pinned_commit_is_the_code_the_process_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit made while a run trains is not the run's code: the CLI pins HEAD at start."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    first = (repo / ".git/refs/heads/main").read_text().strip()
    # the source tree is this repository; nothing pinned yet in this test
    monkeypatch.setattr(run_dir, "figkd", SimpleNamespace(__file__=str(repo / "__init__.py")))
    monkeypatch.setattr(run_dir, "_PINNED", [])
    assert git_commit() == {"commit": first, "dirty": False}  # unpinned: HEAD now
    run_dir.pin_git_commit()
    (repo / "a.txt").write_text("two\n")
    _git(repo, "commit", "-q", "-am", "two")
    second = (repo / ".git/refs/heads/main").read_text().strip()
    assert second != first
    assert git_commit() == {"commit": first, "dirty": False}  # what the process loaded
    run_dir.pin_git_commit()  # a second pin keeps the first
    assert git_commit() == {"commit": first, "dirty": False}
    assert git_commit(repo) == {"commit": second, "dirty": False}  # a folder is read now


def test_the_cli_pins_the_commit_before_it_runs_a_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from figkd.cli import main

    monkeypatch.setattr(run_dir, "_PINNED", [])
    assert main(["models"]) == 0
    capsys.readouterr()
    assert len(run_dir._PINNED) == 1


def test_cpu_device_description_names_the_cpu_model() -> None:
    """The summary's device line names the CPU as /proc/cpuinfo does (platform.processor() is
    only "x86_64" on Linux); a machine without it falls back to platform."""
    threads = torch.get_num_threads()
    described = device_description(torch.device("cpu"))
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    capability = torch.backends.cpu.get_cpu_capability()  # the kernels' instruction set
    if names:
        assert described == f"cpu ({names[0]}, {capability}, {threads} threads)"
    else:
        assert described == f"cpu ({cpu_model()}, {capability}, {threads} threads)"


@pytest.mark.parametrize(
    ("cpuinfo", "processor", "expected"),
    [
        ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\nflags\t: sse\n", "",
         "Intel(R) Xeon(R) Gold 6338"),
        ("model name\t: Some CPU: rev 2\n", "", "Some CPU: rev 2"),  # split at the first colon
        ("processor\t: 0\nflags\t: sse\n", "Xeon", "Xeon"),  # no model name line (ARM)
        (None, "", "x86_64"),  # no /proc/cpuinfo (macOS), platform.processor() empty
    ],
)
def test_cpu_model_reads_cpuinfo_then_falls_back_to_platform(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: str | None, processor: str,
    expected: str,
) -> None:
    from figkd.engine import run_dir

    fake = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        fake.write_text(cpuinfo)
    real_path = run_dir.Path
    monkeypatch.setattr(
        run_dir, "Path", lambda p: fake if str(p) == "/proc/cpuinfo" else real_path(p)
    )
    monkeypatch.setattr(platform, "processor", lambda: processor)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert run_dir.cpu_model() == expected
