"""The validation split carved from train: stratified, disjoint, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from figkd import data
from figkd.data import synthetic
from figkd.data.splits import stratified_split


def test_stratified_split_is_disjoint_complete_and_proportional():
    targets = [c for c in range(10) for _ in range(50 + 5 * c)]  # unbalanced classes
    train, val = stratified_split(targets, 0.1, seed=3)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(targets)))
    assert train == sorted(train) and val == sorted(val)
    labels = np.asarray(targets)
    for c in range(10):
        n_c = int((labels == c).sum())
        assert int((labels[val] == c).sum()) == round(0.1 * n_c)


def test_stratified_split_is_seeded():
    targets = [c for c in range(5) for _ in range(40)]
    first = stratified_split(targets, 0.25, seed=7)
    assert stratified_split(targets, 0.25, seed=7) == first
    assert stratified_split(targets, 0.25, seed=8)[1] != first[1]
    # The split only depends on the labels, so the same labels in another list agree.
    assert stratified_split(list(targets), 0.25, seed=7) == first


def test_every_class_keeps_a_training_sample():
    train, val = stratified_split([0, 0, 1, 2, 2, 2], 0.9, seed=0)
    assert {0, 1, 2} <= {[0, 0, 1, 2, 2, 2][i] for i in train}
    assert len(val) == 1 + 0 + 2
    for fraction in (0.0, 1.0):  # both ends are refused: 0 carves nothing, 1 leaves no train
        with pytest.raises(ValueError, match="val_fraction must be in"):
            stratified_split([0, 0, 1, 1], fraction)


def test_every_class_gives_at_least_one_validation_sample():
    # 0.01 * 20 rounds to 0 samples: each class still gives one, and keeps the other 19
    train, val = stratified_split([c for c in range(3) for _ in range(20)], 0.01)
    assert len(val) == 3 and sorted(i // 20 for i in val) == [0, 1, 2] and len(train) == 57
    assert stratified_split([c for c in range(3) for _ in range(20)], 0.01, seed=0) == (train, val)


def test_single_sample_classes_leave_validation_empty():
    train, val = stratified_split([0, 1, 2], 0.5)
    assert (train, val) == ([0, 1, 2], [])


def test_load_dataset_val_split_excludes_val_from_train(tmp_path):
    folder = synthetic.write_fake_cub200(tmp_path, num_classes=4, train_per_class=10,
                                         test_per_class=2)
    full = data.load_dataset("cub200", root=folder)
    train = data.load_dataset("cub200", root=folder, val_fraction=0.2, val_seed=1)
    val = data.load_dataset("cub200", root=folder, split="val", val_fraction=0.2, val_seed=1)
    test = data.load_dataset("cub200", root=folder, split="test", val_fraction=0.2)
    assert (len(full), len(train), len(val), len(test)) == (40, 32, 8, 8)
    assert np.bincount(val.targets).tolist() == [2, 2, 2, 2]
    train_paths, val_paths = {p for p, _ in train.samples}, {p for p, _ in val.samples}
    assert not train_paths & val_paths and train_paths | val_paths == {p for p, _ in full.samples}
    assert val.classes == full.classes and val.split == "val"
    assert [val[i][1] for i in range(len(val))] == val.targets
    other = data.load_dataset("cub200", root=folder, split="val", val_fraction=0.2, val_seed=2)
    assert {p for p, _ in other.samples} != val_paths


def test_val_on_digits_and_transform_pass_through():
    transform = data.build_transforms("digits", train=False)
    val = data.load_dataset("digits", split="val", val_fraction=0.1, transform=transform)
    train = data.load_dataset("digits", split="train", val_fraction=0.1)
    assert len(val) + len(train) == 1438
    assert val.transform is transform and abs(float(val[0][0].mean())) < 3
