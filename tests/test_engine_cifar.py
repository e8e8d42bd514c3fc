"""The shipped CIFAR-100 configs run end to end on a fake local copy of CIFAR-100.

``figkd.data.synthetic`` writes the official ``cifar-100-python`` pickles (2
train and 1 test image per class), so the README's one-command quick tour --
train a teacher config, distil with a FiGKD config -- is exercised with the
real readers, augmentation, 100-class FiGKD grid and teacher hand-off.  The
default test swaps in ResNet-8 for speed; the real ResNet32x4 -> ResNet8x4
pair runs in the slow suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_run_overrides

from figkd.cli import main
from figkd.config import load_config
from figkd.engine import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"


@pytest.fixture
def cifar(fake_cifar100: Path) -> Path:
    return fake_cifar100


_small = tiny_run_overrides


def _quick_tour(
    cifar: Path, out: Path, teacher: str, student: str, substitute: str | None = None
) -> dict:
    """``figkd train`` the teacher config, then ``figkd distill`` the FiGKD pair config."""
    swap = [f"model.name={substitute}"] if substitute else []
    teacher_cfg = CONFIGS / "teacher" / f"{teacher}.yaml"
    assert main(["train", str(teacher_cfg), *_small(cifar), *swap, "--output-dir", str(out)]) == 0
    ckpt = out / f"cifar100/teacher/{teacher}/seed0/checkpoints/last.pt"
    pair = CONFIGS / "figkd" / f"{teacher}_{student}.yaml"
    swap += [f"teacher.name={substitute}"] if substitute else []
    assert (
        main(
            [
                "distill",
                str(pair),
                *_small(cifar),
                *swap,
                "--teacher",
                str(ckpt),
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    return json.loads((out / f"cifar100/figkd/{teacher}_{student}/seed0/summary.json").read_text())


def test_quick_tour_on_a_local_cifar_copy(cifar: Path, tmp_path: Path) -> None:
    summary = _quick_tour(cifar, tmp_path, "resnet32x4", "resnet8x4", substitute="resnet8")
    assert summary["dataset"] == "cifar100" and summary["data_path"] == "fast"
    assert summary["teacher"]["num_classes"] == 100
    assert set(summary["final"]["train"]) == {"loss", "ce", "detail", "top1"}
    assert summary["paper"] == {
        "top1": 78.05,
        "table": 1,
        "note": "same number in Table 11 (level 1), 12 (std 0.0), 13 (2D), 16 (Haar)",
    }


@pytest.mark.slow
def test_quick_tour_with_the_papers_models(cifar: Path, tmp_path: Path) -> None:
    summary = _quick_tour(cifar, tmp_path, "resnet32x4", "resnet8x4")
    assert summary["teacher"]["arch"] == "resnet32x4" and summary["model"] == "resnet8x4"


def test_teacher_cache_is_refused_when_images_are_augmented(cifar: Path, tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "kd/resnet32x4_resnet8x4.yaml",
        [
            *_small(cifar),
            "model.name=resnet8",
            "teacher.name=resnet8",
            "teacher.cache_logits=true",
            f"output_dir={tmp_path}",
        ],
    )
    assert (
        main(
            [
                "train",
                str(CONFIGS / "teacher/resnet32x4.yaml"),
                *_small(cifar),
                "model.name=resnet8",
                "--output-dir",
                str(tmp_path),
                "--name",
                "t",
            ]
        )
        == 0
    )
    cfg.teacher.checkpoint = str(tmp_path / "t/seed0/checkpoints/last.pt")
    with pytest.raises(
        ValueError, match="teacher.cache_logits needs training images without random"
    ):
        Trainer(cfg, tmp_path / "run").fit()
