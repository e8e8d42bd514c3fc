"""Edge cases of the dataset registry (``figkd.data.api``) and the bundled digits reader.

Expected values come from paths built by hand in ``tmp_path``, error texts written out in
full, and for digits from ``sklearn.datasets.load_digits`` plus a hand-written stratified
split that follows the rule documented in ``figkd.data.splits.stratified_split``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from figkd import data
from figkd.data import api
from figkd.data.digits import Digits

TEST_NAME = "zz-test-set"


class _FakeSet:
    """What a builder returns: ``targets``/``classes`` and the arguments it was built with."""

    def __init__(self, root: Path | None, split: str, transform: Any, **options: Any) -> None:
        self.root, self.split, self.transform, self.options = root, split, transform, options
        self.targets = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
        self.classes = ["a", "b"]

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, self.targets[index]

    def __len__(self) -> int:
        return len(self.targets)


def _builder(root: Path | None, split: str, transform: Any = None, size: int = 1) -> _FakeSet:
    return _FakeSet(root, split, transform, size=size)


def _bare_builder(root: Path | None, split: str, transform: Any = None) -> _FakeSet:
    return _FakeSet(root, split, transform)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private copy of the dataset registry, so test entries never leak into other tests."""
    monkeypatch.setattr(api.DATASETS, "_entries", dict(api.DATASETS._entries))
    monkeypatch.setattr(api.DATASETS, "_aliases", dict(api.DATASETS._aliases))
    yield


def _register(**kwargs: Any) -> None:
    builder = kwargs.pop("builder", _builder)
    name = kwargs.pop("name", TEST_NAME)
    api.register_dataset(name, **kwargs)(builder)


ROOT_HINT = "figkd study/pack: --data-root <folder>; from Python, pass root=<folder>"


# ---------------------------------------------------------------- register_dataset / entries


def test_register_dataset_stores_tuples_strips_layout_newlines_and_aliases(registry: None) -> None:
    """Lists become tuples; only the layout's leading/trailing newlines go (spaces stay)."""
    _register(aliases=["zz-alias"], folder_names=["A", "B"], presets=["p1", "p2"],
              layout="\n  top/\n  top/file.txt\n\n", num_classes=2, description="d")
    entry = data.get_dataset_info("zz-alias")
    assert entry.name == TEST_NAME and entry.builder is _builder
    assert entry.folder_names == ("A", "B") and entry.presets == ("p1", "p2")
    assert entry.layout == "  top/\n  top/file.txt"
    assert entry.default_preset == "p1" and entry.num_classes == 2
    assert entry.needs_root is True and entry.marker is None and entry.url == ""
    assert TEST_NAME in data.list_datasets("zz-*") and data.list_datasets("zz-*") == [TEST_NAME]


def test_entry_without_presets_has_no_default_and_options_skip_the_fixed_arguments(
    registry: None,
) -> None:
    """``default_preset`` is None without presets; ``options()`` drops root/split/transform."""
    _register()
    entry = data.get_dataset_info(TEST_NAME)
    assert entry.default_preset is None
    assert entry.options() == ["size"]


def test_register_dataset_rejects_a_taken_name(registry: None) -> None:
    """A second registration under the same name is an error, not a silent overwrite."""
    _register()
    with pytest.raises(ValueError, match=f"dataset name '{TEST_NAME}' is already registered"):
        _register()


# ---------------------------------------------------------------- dataset_error


def test_dataset_error_full_text_with_every_part(registry: None) -> None:
    """Every part in order: problem, tried paths, layout, address, root hint (text by hand)."""
    _register(folder_names=("one", "two"), layout="\nfolder/\n  x.txt\n",
              url="https://example.org/set")
    error = api.dataset_error(TEST_NAME, "broken.", ["/p/one (missing)", "/p/two (not a folder)"])
    assert isinstance(error, data.DatasetNotFoundError)
    assert str(error) == (
        "dataset 'zz-test-set': broken.\n"
        "Tried:\n"
        "  /p/one (missing)\n"
        "  /p/two (not a folder)\n"
        "Expected layout:\n"
        "  folder/\n"
        "    x.txt\n"
        "The dataset is published at https://example.org/set (figkd never downloads it).\n"
        f"Set data.root=<folder> ({ROOT_HINT}), or set FIGKD_DATA to a folder holding one of: "
        "one, two (./data/ is searched last)."
    )


def test_dataset_error_bare_entry_is_only_the_problem(registry: None) -> None:
    """No tried list, layout, url or folder names: the message is the problem line alone."""
    _register()
    assert str(api.dataset_error(TEST_NAME, "gone.")) == "dataset 'zz-test-set': gone."
    assert str(api.dataset_error(TEST_NAME, "gone.", [])) == "dataset 'zz-test-set': gone."


# ---------------------------------------------------------------- resolve_root


def test_resolve_root_is_none_for_datasets_without_files(registry: None, tmp_path: Path) -> None:
    """``needs_root=False`` ignores ``root`` entirely (digits is such a dataset)."""
    _register(needs_root=False, folder_names=("x",))
    assert api.resolve_root(TEST_NAME, tmp_path / "nowhere") is None
    assert api.resolve_root("digits") is None


def test_resolve_root_given_folder_itself_or_its_named_subfolder(
    registry: None, tmp_path: Path
) -> None:
    """``root=`` is used as is when it holds the marker, else its conventional sub-folder."""
    _register(folder_names=("sub",), marker="m.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.txt").write_text("")
    assert api.resolve_root(TEST_NAME, tmp_path) == tmp_path / "sub"
    (tmp_path / "m.txt").write_text("")
    assert api.resolve_root(TEST_NAME, tmp_path) == tmp_path
    assert api.resolve_root(TEST_NAME, str(tmp_path)) == tmp_path


def test_resolve_root_without_marker_accepts_any_folder(registry: None, tmp_path: Path) -> None:
    """Without a marker an existing folder is enough; a file is refused as 'not a folder'."""
    _register(folder_names=("sub",))
    assert api.resolve_root(TEST_NAME, tmp_path) == tmp_path
    (tmp_path / "plain").write_text("")
    with pytest.raises(data.DatasetNotFoundError) as info:
        api.resolve_root(TEST_NAME, tmp_path / "plain")
    tried = str(info.value).split("Tried:\n")[1].split("\nSet data.root")[0]
    assert tried == (
        f"  {tmp_path / 'plain'} (not a folder)\n  {tmp_path / 'plain' / 'sub'} (missing)"
    )


def test_resolve_root_expands_the_user_folder(
    registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~`` in ``root=`` and in ``$FIGKD_DATA`` means ``$HOME``."""
    _register(folder_names=("sub",))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "sub").mkdir()
    assert api.resolve_root(TEST_NAME, "~/sub") == tmp_path / "sub"
    monkeypatch.setenv("FIGKD_DATA", "~")
    monkeypatch.chdir(tmp_path / "sub")
    assert api.resolve_root(TEST_NAME) == tmp_path / "sub"


def test_resolve_root_without_default_location_needs_root(
    registry: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No folder names and no ``root=``: the error says so, in full."""
    _register(url="https://example.org/set")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DatasetNotFoundError) as info:
        api.resolve_root(TEST_NAME)
    assert str(info.value) == (
        "dataset 'zz-test-set': this dataset has no default location; set "
        f"data.root=<folder> ({ROOT_HINT}).\n"
        "The dataset is published at https://example.org/set (figkd never downloads it)."
    )


def test_resolve_root_env_folders_before_data_folders(
    registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order: every ``$FIGKD_DATA/<name>``, then every ``./data/<name>``; first valid wins."""
    _register(folder_names=("one", "two"), marker="m.txt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FIGKD_DATA", str(tmp_path / "env"))
    (tmp_path / "env" / "one").mkdir(parents=True)  # exists, but without the marker
    (tmp_path / "env" / "two").write_text("")  # a file
    with pytest.raises(data.DatasetNotFoundError) as info:
        api.resolve_root(TEST_NAME)
    tried = str(info.value).split("Tried:\n")[1].split("\nSet data.root")[0]
    assert tried == "\n".join([
        f"  {tmp_path / 'env' / 'one'} (exists but has no m.txt)",
        f"  {tmp_path / 'env' / 'two'} (not a folder)",
        f"  {tmp_path / 'data' / 'one'} (missing)",
        f"  {tmp_path / 'data' / 'two'} (missing)",
    ])
    (tmp_path / "data" / "two").mkdir(parents=True)
    (tmp_path / "data" / "two" / "m.txt").write_text("")
    assert api.resolve_root(TEST_NAME) == Path("data") / "two"
    (tmp_path / "env" / "one" / "m.txt").write_text("")
    assert api.resolve_root(TEST_NAME) == tmp_path / "env" / "one"


@pytest.mark.parametrize("env", [None, ""])
def test_resolve_root_unset_or_empty_env_searches_only_data(
    registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    """An unset or empty ``$FIGKD_DATA`` is skipped (not read as the current folder)."""
    _register(folder_names=("one",))
    monkeypatch.chdir(tmp_path)
    if env is None:
        monkeypatch.delenv("FIGKD_DATA", raising=False)
    else:
        monkeypatch.setenv("FIGKD_DATA", env)
    (tmp_path / "one").mkdir()  # would be found if "" were taken as "."
    with pytest.raises(data.DatasetNotFoundError) as info:
        api.resolve_root(TEST_NAME)
    assert f"Tried:\n  {tmp_path / 'data' / 'one'} (missing)\n" in str(info.value)
    (tmp_path / "data" / "one").mkdir(parents=True)
    assert api.resolve_root(TEST_NAME) == Path("data") / "one"


# ---------------------------------------------------------------- load_dataset


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_load_dataset_val_fraction_outside_zero_one(registry: None, fraction: float) -> None:
    """``val_fraction`` must be in [0, 1): the message names the value."""
    _register(needs_root=False)
    with pytest.raises(ValueError) as info:
        data.load_dataset(TEST_NAME, val_fraction=fraction)
    assert str(info.value) == f"val_fraction must be in [0, 1), got {fraction}"


def test_load_dataset_split_and_val_messages_in_full(registry: None) -> None:
    """The split errors, written out."""
    _register(needs_root=False)
    with pytest.raises(ValueError) as info:
        data.load_dataset(TEST_NAME, split="dev")
    assert str(info.value) == "unknown split 'dev'; valid splits: train, val, test"
    with pytest.raises(ValueError) as info:
        data.load_dataset(TEST_NAME, split="val")
    assert str(info.value) == (
        "split='val' needs a validation split carved from train: pass val_fraction>0 "
        "(e.g. val_fraction=0.1). The official evaluation split is split='test'."
    )


def test_load_dataset_unknown_options_sorted_with_accepted_list(registry: None) -> None:
    """Unknown options are listed sorted, with the builder's options or 'none'."""
    _register(needs_root=False)
    _register(name="zz-bare", builder=_bare_builder, needs_root=False)
    with pytest.raises(ValueError) as info:
        data.load_dataset(TEST_NAME, zeta=1, alpha=2)
    assert str(info.value) == (
        "dataset 'zz-test-set' does not accept option(s) alpha, zeta; accepted: size"
    )
    with pytest.raises(ValueError) as info:
        data.load_dataset("zz-bare", size=3)
    assert str(info.value) == "dataset 'zz-bare' does not accept option(s) size; accepted: none"


def test_load_dataset_passes_root_split_transform_and_options(
    registry: None, tmp_path: Path
) -> None:
    """The builder gets the resolved root, the split, the transform and the options."""
    _register(folder_names=("sub",))
    (tmp_path / "sub").mkdir()

    def transform(x: Any) -> Any:
        return x

    test = data.load_dataset(TEST_NAME, root=tmp_path / "sub", split="test",
                             transform=transform, size=7, val_fraction=0.5)
    assert isinstance(test, _FakeSet)  # test ignores the val carve
    assert (test.root, test.split, test.transform, test.options) == (
        tmp_path / "sub", "test", transform, {"size": 7})
    full = data.load_dataset(TEST_NAME, root=tmp_path / "sub", size=2)
    assert isinstance(full, _FakeSet) and full.split == "train" and full.options == {"size": 2}


def _hand_stratified(targets: list[int], fraction: float, seed: int) -> tuple[list, list]:
    """The documented rule of ``stratified_split``, written again: per class in label order,
    ``round(fraction * n)`` clipped to [1, n - 1] from one ``default_rng(seed)`` stream."""
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == label]
        if len(members) < 2:
            continue
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        val += [int(i) for i in rng.permutation(np.array(members))[:count]]
    val.sort()
    in_val = set(val)
    return [i for i in range(len(targets)) if i not in in_val], val


@pytest.mark.parametrize("seed", [0, 3])
def test_load_dataset_val_carve_matches_the_documented_rule(registry: None, seed: int) -> None:
    """``train`` and ``val`` are the two halves of the seeded stratified carve of train."""
    _register(needs_root=False)
    expected_train, expected_val = _hand_stratified([0] * 5 + [1] * 5, 0.4, seed)
    # 0.4 * 5 = 2 per class: 4 val, 6 train
    assert (len(expected_train), len(expected_val)) == (6, 4)
    train = data.load_dataset(TEST_NAME, val_fraction=0.4, val_seed=seed)
    val = data.load_dataset(TEST_NAME, split="val", val_fraction=0.4, val_seed=seed)
    assert train.indices == expected_train and train.split == "train"
    assert val.indices == expected_val and val.split == "val"
    assert val.targets == [0, 0, 1, 1] and val.classes == ["a", "b"]


def test_load_dataset_tiny_val_fraction_still_carves(registry: None) -> None:
    """A fraction just above 0 is a carve (at least one sample a class), not 'no carve'."""
    _register(needs_root=False)
    val = data.load_dataset(TEST_NAME, split="val", val_fraction=1e-9)
    assert len(val) == 2 and val.targets == [0, 1]
    train = data.load_dataset(TEST_NAME, val_fraction=0.999)
    assert len(train) == 2 and train.targets == [0, 1]  # at most n - 1 = 4 per class in val


# ---------------------------------------------------------------- digits


def _sklearn_digits() -> tuple[np.ndarray, list[int]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, [int(t) for t in bunch.target]


def test_digits_split_is_the_documented_stratified_carve() -> None:
    """20 % of every class, seed 0, by the documented rule, recomputed from sklearn labels."""
    _, targets = _sklearn_digits()
    expected_train, expected_test = _hand_stratified(targets, 0.2, 0)
    train, test = Digits("train"), Digits("test")
    assert test.indices == expected_test and train.indices == expected_train
    assert train.targets == [targets[i] for i in expected_train]
    assert test.targets == [targets[i] for i in expected_test]


def test_digits_pixels_are_sklearn_images_over_16() -> None:
    """Items are ``load_digits().images / 16`` as float32 (1, 8, 8) with the sklearn label."""
    images, targets = _sklearn_digits()
    test = Digits("test")
    expected = torch.from_numpy(images[test.indices] / 16.0).float().unsqueeze(1)
    got = torch.stack([test[i][0] for i in range(len(test))])
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert [test[i][1] for i in range(len(test))] == [targets[i] for i in test.indices]
    assert torch.equal(test.raw_image(3), expected[3])
    raw = test.images_uint8()
    assert raw.dtype == torch.uint8 and raw.shape == (359, 1, 8, 8)
    assert torch.equal(raw, torch.from_numpy(images[test.indices]).to(torch.uint8).unsqueeze(1))
    assert test.scale == 16.0


def test_digits_attributes_transform_and_repr() -> None:
    """Classes '0'..'9', the transform applied to each item, no root, a readable repr."""
    train = Digits("train", transform=lambda x: x * 2)
    assert train.classes == [str(d) for d in range(10)]
    assert train.class_to_idx == {str(d): d for d in range(10)}
    assert train.root is None and train.split == "train"
    images, _ = _sklearn_digits()
    expected = torch.from_numpy(images[train.indices[5]] / 8.0).float().unsqueeze(0)
    assert torch.equal(train[5][0], expected)  # (x / 16) * 2
    assert repr(train) == "Digits(split='train', samples=1438)"
    assert repr(Digits("test")) == "Digits(split='test', samples=359)"


@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_digits_rejects_other_splits(split: str) -> None:
    """Only 'train' and 'test' exist on the reader itself; the message names the value."""
    with pytest.raises(ValueError) as info:
        Digits(split)
    assert str(info.value) == f"Digits split must be 'train' or 'test', got {split!r}"


def test_digits_registry_entry() -> None:
    """Alias, class count, preset and 'no files needed', as registered."""
    info = data.get_dataset_info("sklearn-digits")
    assert info.name == "digits" and info.num_classes == 10
    assert info.default_preset == "digits" and info.needs_root is False
    assert info.options() == []
    test = data.load_dataset("digits", root="/does/not/matter", split="test")
    assert isinstance(test, Digits) and len(test) == 359


def test_load_dataset_default_val_seed_is_zero(registry: None) -> None:
    """Without ``val_seed`` the carve is the seed-0 one of the documented rule."""
    _register(needs_root=False)
    expected_train, expected_val = _hand_stratified([0] * 5 + [1] * 5, 0.4, 0)
    assert expected_val != _hand_stratified([0] * 5 + [1] * 5, 0.4, 1)[1]  # seeds differ here
    assert data.load_dataset(TEST_NAME, split="val", val_fraction=0.4).indices == expected_val
    assert data.load_dataset(TEST_NAME, val_fraction=0.4).indices == expected_train


def test_dataset_entry_defaults_and_frozen() -> None:
    """A bare ``DatasetEntry`` needs a root, has no folders/marker/presets, and is immutable."""
    entry = api.DatasetEntry(name="bare", builder=_bare_builder)
    assert entry.needs_root is True
    assert (entry.folder_names, entry.marker, entry.url, entry.layout) == ((), None, "", "")
    assert (entry.num_classes, entry.presets, entry.description) == (None, (), "")
    with pytest.raises(AttributeError):
        entry.needs_root = False  # type: ignore[misc]
