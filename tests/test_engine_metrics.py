"""Accuracy and running means against NumPy and hand-worked cases.

Every accuracy the study reports goes through ``topk_correct`` and the meters, so they are
checked here on their own, and once end to end: ``evaluate_model`` over a test split whose
size (359 digits) no batch size divides, against a plain NumPy argmax over the same logits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from figkd.config import config_from_dict
from figkd.engine.data import build_data
from figkd.engine.distributed import DistContext
from figkd.engine.metrics import SumMeter, topk_correct
from figkd.engine.trainer import evaluate_model
from figkd.models import create_model


def _numpy_topk_hits(logits: np.ndarray, targets: np.ndarray, k: int) -> int:
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return int((order == targets[:, None]).any(axis=1).sum())


def test_topk_correct_worked_by_hand() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.2],  # ranks: 1, 2, 3, 0
            [2.0, 1.0, 0.0, 3.0],  # ranks: 3, 0, 1, 2
            [0.0, 0.3, 0.2, 0.1],  # ranks: 1, 2, 3, 0
        ]
    )
    targets = torch.tensor([1, 1, 0])
    hits = topk_correct(logits, targets, (1, 2, 3, 4))
    # sample 0: target first; sample 1: target third; sample 2: target last
    assert {k: int(v) for k, v in hits.items()} == {1: 1, 2: 1, 3: 2, 4: 3}


@pytest.mark.parametrize("classes", [3, 10, 100])
def test_topk_correct_matches_numpy_and_caps_k_at_the_class_count(classes: int) -> None:
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(257, classes))
    targets = rng.integers(0, classes, 257)
    hits = topk_correct(torch.tensor(logits), torch.tensor(targets), (1, 5, 200))
    assert int(hits[1]) == _numpy_topk_hits(logits, targets, 1)
    assert int(hits[5]) == _numpy_topk_hits(logits, targets, min(5, classes))
    assert int(hits[200]) == 257  # k >= C: every target is among the top C


def test_sum_meter_weights_each_batch_by_its_size() -> None:
    meter = SumMeter()
    meter.add({"loss": torch.tensor(2.0), "ce": 1.0}, 3)
    meter.add({"loss": torch.tensor(5.0), "ce": 4.0}, 1)
    meter.add_sums({"top1": torch.tensor(3.0)}, 0)  # counts: already summed, no samples added
    # loss: (3 * 2 + 1 * 5) / 4 = 2.75; ce: (3 * 1 + 4) / 4 = 1.75; top1: 3 / 4
    assert meter.means() == {"ce": 1.75, "loss": 2.75, "top1": 0.75}
    keys, vector = meter.state()
    assert keys == ["ce", "loss", "top1"]
    assert vector.dtype == torch.float64 and vector.tolist() == [7.0, 11.0, 3.0, 4.0]


def test_sum_meter_add_sums_counts_samples_and_accumulates() -> None:
    meter = SumMeter()
    meter.add_sums({"correct": 2}, 5)
    meter.add_sums({"correct": 3}, 5)
    assert meter.count == 10 and meter.means() == {"correct": 0.5}


def test_an_empty_meter_reads_as_no_values() -> None:
    keys, vector = SumMeter().state()
    assert keys == [] and vector.tolist() == [0.0] and SumMeter().means() == {}


def test_means_from_an_empty_count_are_nan_not_a_division_error() -> None:
    means = SumMeter.means_from(["a", "b"], torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))
    assert list(means) == ["a", "b"] and all(math.isnan(v) for v in means.values())
    assert SumMeter.means_from(["a"], torch.tensor([6.0, 3.0])) == {"a": 2.0}


@pytest.mark.parametrize("batch_size", [64, 100])
def test_evaluate_model_equals_numpy_accuracy_over_a_ragged_last_batch(batch_size: int) -> None:
    cfg = config_from_dict(
        {
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "data": {"dataset": "digits", "batch_size": batch_size, "num_workers": 0},
        }
    )
    device = torch.device("cpu")
    bundle = build_data(cfg, DistContext(), device)
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=bundle.num_classes, in_channels=bundle.in_channels, width=4)
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for images, labels, _ in bundle.test.epoch(0):
            logits.append(model(images).double().numpy())
            targets.append(labels.numpy())
    logits_np, targets_np = np.concatenate(logits), np.concatenate(targets)
    assert len(targets_np) == 359 and 359 % batch_size != 0

    result = evaluate_model(model, bundle.test, device=device)
    shifted = logits_np - logits_np.max(axis=1, keepdims=True)
    ce = -(shifted[np.arange(359), targets_np] - np.log(np.exp(shifted).sum(axis=1))).mean()
    top1 = 100 * _numpy_topk_hits(logits_np, targets_np, 1) / 359
    top5 = 100 * _numpy_topk_hits(logits_np, targets_np, 5) / 359
    assert 0 < top1 < top5 < 100  # counts that a wrong sum or divisor would change
    assert result["top1"] == pytest.approx(top1, abs=1e-9)
    assert result["top5"] == pytest.approx(top5, abs=1e-9)
    assert result["loss"] == pytest.approx(ce, rel=1e-5)
