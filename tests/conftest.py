"""Fixtures shared across test files (fake CIFAR-100 copies, one-thread loss tests, the
studies' unit tier, the scripts of tools/ and benchmarks/)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from figkd.config import Config, config_from_dict
from figkd.data.synthetic import write_fake_cifar100

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str) -> ModuleType:
    """The script ``REPO/relative`` (tools/ and benchmarks/ are not packages) as module ``name``.

    Registered in ``sys.modules`` before it runs: a dataclass in it looks its module up there.
    """
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {relative} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Loss tests on tiny tensors: one intra-op thread avoids OpenMP spin-wait overhead on a
    busy 2-core machine.  Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local ``cifar-100-python`` copy in the official pickle format: 2 train, 1 test image a class."""
    root = tmp_path_factory.mktemp("fake_cifar100")
    write_fake_cifar100(root, train_per_class=2, test_per_class=1)
    return root


#: ``key=value`` overrides for one CPU epoch of tiny_cnn (width 4) on the bundled digits: the
#: command-line twin of :func:`digits_config`; callers add the step count they need
DIGITS_OVERRIDES = [
    "model.name=tiny_cnn",
    "model.args.width=4",
    "data.dataset=digits",
    "data.num_workers=0",
    "train.epochs=1",
    "train.device=cpu",
    "train.num_threads=1",
    "train.progress=none",
]


def tiny_run_overrides(root: Path) -> list[str]:
    """``key=value`` overrides that turn any shipped config into a two-step CPU run on ``root``."""
    return [
        f"data.root={root}",
        "data.batch_size=16",
        "data.eval_batch_size=100",
        "data.num_workers=0",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.device=cpu",
        "train.num_threads=1",
        "train.progress=none",
    ]


def digits_config(out: Path, name: str, **sections: Any) -> Config:
    """A few steps of tiny_cnn (width 4) on the bundled digits: a real engine run in well under
    a second.  ``sections`` update the config's sections, e.g. ``train={"epochs": 2}``."""
    data: dict[str, Any] = {
        "experiment": name,
        "output_dir": str(out),
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "data": {"dataset": "digits", "num_workers": 0},
        "train": {
            "epochs": 1,
            "device": "cpu",
            "num_threads": 1,
            "progress": "none",
            "max_steps_per_epoch": 3,
        },
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def unit_tier(**changes: Any) -> Any:
    """The study tests' tier: tiny_cnn width 8 -> width 4, one seed, CPU-sized batches, no
    workers, one thread; ``changes`` replace fields (epochs, seeds, pairs, ...)."""
    from figkd.analysis import study as S

    tier = S.Tier(
        name="unit",
        description="unit test",
        pairs=(S.Pair("tiny_cnn", "tiny_cnn", {"width": 8}, {"width": 4}),),
        epochs=1,
        teacher_epochs=1,
        seeds=(0,),
        val_fraction=0.25,
        batch_size=16,
        num_workers=0,
        threads=1,
    )
    return S.tier_with(tier, **changes)
