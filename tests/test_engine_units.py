"""Engine pieces: schedules, atomic checkpoints, teacher checks, RNG state, switches, two views."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import digits_config
from torch import Tensor

from figkd.config import Config, config_from_dict
from figkd.engine import Trainer, load_teacher, load_weights_only, lr_at, model_payload, save_atomic
from figkd.engine.seeding import get_rng_state, set_rng_state
from figkd.losses import DistillationLoss
from figkd.models import CheckpointMismatchError, create_model

digits = digits_config


def test_multistep_schedule_is_the_papers() -> None:
    cfg = Config()
    lrs = {e: lr_at(e, cfg, 0.05) for e in (1, 150, 151, 180, 181, 210, 211, 240)}
    assert lrs == pytest.approx(
        {1: 0.05, 150: 0.05, 151: 0.005, 180: 0.005, 181: 5e-4, 210: 5e-4, 211: 5e-5, 240: 5e-5}
    )
    cfg.schedule.warmup_epochs = 4
    assert [lr_at(e, cfg, 0.1) for e in (1, 2, 4, 5)] == pytest.approx([0.025, 0.05, 0.1, 0.1])
    cfg.schedule.name = "cosine"
    cfg.schedule.warmup_epochs = 0
    assert lr_at(1, cfg, 0.1) == pytest.approx(0.1) and lr_at(121, cfg, 0.1) == pytest.approx(0.05)
    # cos(pi * 60 / 240) = sqrt(2) / 2: the LR a quarter of the way through
    assert lr_at(61, cfg, 0.1) == pytest.approx(0.05 * (1 + math.sqrt(2) / 2))
    cfg.schedule.name = "constant"
    assert [lr_at(e, cfg, 0.1) for e in (1, 151, 240)] == [0.1, 0.1, 0.1]


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"a": torch.ones(2)}, path)
    with pytest.raises((AttributeError, TypeError, RuntimeError)):  # pickling fails mid-write
        save_atomic({"a": lambda: 0}, path)
    assert torch.equal(load_weights_only(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_teacher_class_count_and_architecture_mismatch_show_both_values(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    save_atomic(
        model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)), path
    )
    model, record = load_teacher("tiny_cnn", path, 10, in_channels=1, args={"width": 4})
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert record["num_classes"] == 10 and len(record["sha256"]) == 64
    with pytest.raises(CheckpointMismatchError, match=r"has 10 classes but the dataset .* has 100"):
        load_teacher("tiny_cnn", path, 100, in_channels=1, args={"width": 4})
    with pytest.raises(
        CheckpointMismatchError, match=r"architecture 'tiny_cnn' .* teacher.name is 'resnet8x4'"
    ):
        load_teacher("resnet8x4", path, 10)
    with pytest.raises(ValueError, match="SHA-256"):
        load_teacher("tiny_cnn", path, 10, in_channels=1, args={"width": 4}, sha256="0" * 64)
    # a bare state dict (no recorded arch or classes) is checked by shape
    bare = tmp_path / "bare.pt"
    torch.save(create_model("tiny_cnn", num_classes=10, in_channels=1, width=4).state_dict(), bare)
    with pytest.raises(CheckpointMismatchError, match="100"):
        load_teacher("tiny_cnn", bare, 100, in_channels=1, args={"width": 4})
    with pytest.raises(FileNotFoundError, match="figkd train"):
        load_teacher("tiny_cnn", tmp_path / "missing.pt", 10)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    save_atomic({"rng": get_rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_rng_state(load_weights_only(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


@pytest.mark.parametrize(
    "switches", [{"amp": "bf16"}, {"channels_last": True}, {"deterministic": True}]
)
def test_runtime_switches_train(tmp_path: Path, switches: dict[str, Any]) -> None:
    summary = Trainer(digits(tmp_path, "s", train=switches), tmp_path / "run").fit()
    assert summary["final"]["train"]["loss"] < 10 and summary["final"]["test"]["top1"] >= 0


def test_progress_lines_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Trainer(
        digits(tmp_path, "p", train={"progress": "lines", "log_every": 2}), tmp_path / "run"
    ).fit()
    captured = capsys.readouterr()
    assert "epoch 1/1 step 2/3 loss" in captured.err
    assert "epoch 1/1  lr 0.05  loss" in captured.out and "test top1" in captured.out


class TwoViewCE(DistillationLoss):
    """A fake two-view method: CE on both views, no teacher."""

    term_names = ("weak", "strong")
    needs_teacher = False
    num_views: ClassVar[int] = 2

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **context: Any
    ) -> dict[str, Tensor]:
        self.epochs.append(context["epoch"])
        ce = torch.nn.functional.cross_entropy
        assert not torch.equal(student_logits, context["student_logits_strong"])
        return {
            "weak": ce(student_logits, targets),
            "strong": ce(context["student_logits_strong"], targets),
        }


def test_two_view_method_gets_paired_batches_from_the_pipeline(tmp_path: Path) -> None:
    loss = TwoViewCE()
    summary = Trainer(
        digits(tmp_path, "mv", train={"epochs": 2}), tmp_path / "run", loss=loss
    ).fit()
    assert loss.epochs == [1, 1, 1, 2, 2, 2]
    assert summary["data_path"] == "fast"  # paired views come batch-wise from the uint8 cache
    assert set(summary["final"]["train"]) == {"loss", "weak", "strong", "top1"}


def test_cached_teacher_logits_train_like_live_ones(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.pt"
    save_atomic(
        model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)), teacher
    )
    results = []
    for cache in (False, True):
        cfg = digits(
            tmp_path,
            f"c{cache}",
            loss={"name": "kd"},
            teacher={
                "name": "tiny_cnn",
                "args": {"width": 8},
                "checkpoint": str(teacher),
                "cache_logits": cache,
            },
        )
        Trainer(cfg, tmp_path / f"c{cache}").fit()
        results.append(load_weights_only(tmp_path / f"c{cache}/checkpoints/last.pt")["model"])
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # torch.compile builds C++ kernels: ~20 s on 2 CPU cores
def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    eager = Trainer(digits(tmp_path, "e", train={"epochs": 2}), tmp_path / "e").fit()
    compiled = Trainer(
        digits(tmp_path, "c", train={"epochs": 2, "compile": True}), tmp_path / "c"
    ).fit()
    assert compiled["final"]["train"]["loss"] == pytest.approx(
        eager["final"]["train"]["loss"], rel=1e-3
    )
    a = load_weights_only(tmp_path / "e/checkpoints/last.pt")["model"]
    b = load_weights_only(tmp_path / "c/checkpoints/last.pt")["model"]  # saved without _orig_mod.
    assert a.keys() == b.keys()


@pytest.mark.parametrize("loader", ["fast", "torch"])
def test_a_training_split_smaller_than_one_batch_is_named(tmp_path: Path, loader: str) -> None:
    # digits: 1437 training images, 10 % held out for validation -> 1295 left to train on
    cfg = digits(tmp_path, "big", data={"batch_size": 2048, "loader": loader,
                                        "val_fraction": 0.1})
    with pytest.raises(ValueError, match=r"has 1295 images .* fewer than one batch of "
                                         r"data\.batch_size=2048.*lower data\.batch_size"):
        Trainer(cfg, tmp_path / "run").fit()


def test_labels_outside_the_class_list_are_refused_before_training(tmp_path: Path) -> None:
    """A copy whose labels exceed its class list (e.g. two datasets mixed) must stop with the
    split and data.root named, not train (CPU) or hit a device-side assert (CUDA)."""
    import pickle

    from figkd.data import synthetic

    folder = synthetic.write_fake_cifar100(tmp_path / "cifar", num_classes=5)
    with open(folder / "meta", "rb") as handle:
        meta = pickle.load(handle)
    meta[b"fine_label_names"] = meta[b"fine_label_names"][:3]  # labels 0..4, 3 names
    with open(folder / "meta", "wb") as handle:
        pickle.dump(meta, handle)
    for loader in ("fast", "torch"):
        cfg = config_from_dict({
            "experiment": loader, "output_dir": str(tmp_path / "runs"),
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "data": {"dataset": "cifar100", "root": str(folder.parent), "loader": loader,
                     "num_workers": 0, "batch_size": 4, "val_fraction": 0},
            "train": {"epochs": 1, "device": "cpu", "progress": "none"},
        })
        with pytest.raises(ValueError, match=r"train split of 'cifar100'.*labels in \[0, 4\] "
                                             r"but 3 classes.*data.root"):
            Trainer(cfg, tmp_path / "runs" / loader).fit()


@pytest.mark.parametrize(
    ("device", "args", "expected"),
    [
        ("cpu", {}, True),
        ("cuda", {}, False),
        ("cuda", {"validate": True}, True),
        ("cpu", {"validate": False}, False),
    ],
)
def test_losses_check_their_inputs_except_where_the_trainer_checks_for_them(
    device: str, args: dict, expected: bool
) -> None:
    """On CUDA a per-step check would sync the host; the trainer checks finiteness instead."""
    from figkd.engine.trainer import build_method

    cfg = config_from_dict({"loss": {"name": "kd", "args": args}})
    loss = build_method(cfg, torch.device(device))  # building a loss needs no GPU
    assert loss.validate is expected


def test_train_preset_is_the_config_s_or_the_dataset_s_default_and_never_none() -> None:
    from types import SimpleNamespace

    from figkd.engine.data import train_preset

    def cfg(dataset: str, preset: str | None) -> Any:
        return SimpleNamespace(data=SimpleNamespace(dataset=dataset, preset=preset))

    assert train_preset(cfg("tiny-imagenet", None)).name == "tiny-imagenet-64"
    assert train_preset(cfg("tiny-imagenet", "tiny-imagenet-32")).name == "tiny-imagenet-32"
    # uint8-shards has no default preset: load_config refuses it, and so does an unchecked config
    with pytest.raises(ValueError, match="'uint8-shards' has no default preset: set data.preset"):
        train_preset(cfg("uint8-shards", None))
