"""Edge cases of the dataset readers that a mutation audit showed the other tests miss.

Every fixture is written here by hand, in the dataset's documented on-disk format, with
lossless PNGs whose red channel encodes an id of the image chosen by the test. The
expected labels come from the fixture itself (we know which id went into which class),
never from the reader, so a reader that maps a label from the wrong column, shifts a
line or splits a file wrongly fails here.
"""

from __future__ import annotations

import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from figkd import data
from figkd.data.base import ImageFileDataset, require_files
from figkd.data.cifar import CIFAR100
from figkd.data.cub200 import CUB200
from figkd.data.image_folder import ImageFolderDataset
from figkd.data.mit67 import MITIndoor67
from figkd.data.stanford40 import Stanford40
from figkd.data.stanford_dogs import StanfordDogs
from figkd.data.tiny_imagenet import TinyImageNet, extract_tiny_imagenet_tar

NotFound = data.DatasetNotFoundError


def _png(path: Path, ident: int) -> None:
    """A 3x2 PNG whose red channel is ``ident``: lossless, so the id reads back exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3, 2), (ident, 255 - ident, 77)).save(path)


def _ident(image: Image.Image) -> int:
    """The id :func:`_png` wrote into the image."""
    pixel = image.getpixel((0, 0))
    assert isinstance(pixel, tuple), "not an RGB image"
    red, green, blue = pixel
    assert (green, blue) == (255 - red, 77), "not an image written by _png"
    return int(red)


def _read(ds: ImageFileDataset) -> list[tuple[int, int]]:
    """``(image id, label)`` of every item, decoded through ``__getitem__``."""
    return [(_ident(image), label) for image, label in (ds[i] for i in range(len(ds)))]


# ---------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name,count", [
    ("tiny-imagenet", 200),  # cs231n: 200 classes
    ("cifar100", 100),
    ("cub200", 200),  # CUB-200-2011: 200 bird species
    ("stanford-dogs", 120),  # 120 breeds
    ("mit67", 67),  # 67 indoor categories
    ("stanford40", 40),  # 40 actions
])
def test_registry_class_counts_are_the_published_ones(name: str, count: int) -> None:
    """Model heads are sized from ``num_classes``; a wrong count breaks every checkpoint."""
    assert data.get_dataset_info(name).num_classes == count


# ------------------------------------------------------------------------- base module


@pytest.mark.parametrize("n_missing,shown,more", [(5, 5, ""), (6, 5, "... and 1 more")])
def test_require_files_names_at_most_five_missing_paths(
    tmp_path: Path, n_missing: int, shown: int, more: str
) -> None:
    """The message stays short for a dataset with thousands of missing files."""
    present = tmp_path / "here.png"
    _png(present, 1)
    missing = [tmp_path / f"gone_{k}.png" for k in range(n_missing)]
    with pytest.raises(RuntimeError) as info:
        require_files([present, *missing], "images", RuntimeError)
    message = str(info.value)
    assert message.startswith(f"{n_missing} of the {n_missing + 1} images are missing")
    listed = [line.strip() for line in message.splitlines()[1:] if "gone_" in line]
    assert listed == [str(p) for p in missing[:shown]]
    assert message.endswith(more)
    assert ("... and" in message) == bool(more)


def test_file_dataset_items_come_from_the_listed_file(tmp_path: Path) -> None:
    """``raw_image`` feeds the uint8 cache: it must decode sample ``i``'s own file."""
    samples = []
    for ident, label in [(11, 2), (22, 0), (33, 1)]:
        _png(tmp_path / f"{ident}.png", ident)
        samples.append((str(tmp_path / f"{ident}.png"), label))
    ds = ImageFileDataset(tmp_path, samples, ["a", "b", "c"], "train",
                          transform=_ident, target_transform=lambda t: 10 * t)
    assert [_ident(ds.raw_image(i)) for i in range(3)] == [11, 22, 33]
    assert [ds[i] for i in range(3)] == [(11, 20), (22, 0), (33, 10)]
    assert ds.targets == [2, 0, 1] and ds.class_to_idx == {"a": 0, "b": 1, "c": 2}


# ----------------------------------------------------------------------- Tiny-ImageNet

TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]  # unsorted, as the official file


def _tiny(root: Path, lines: list[str] | None = None, words: bool = True) -> dict[str, int]:
    """Tiny-ImageNet layout; returns {val file: expected label}. Train image ids are
    ``10 * label + k``; val image ``val_<id>.png`` has id ``<id>``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    if words:
        (root / "words.txt").write_text(
            "n01000000\tfirst, alpha\nn02000000\tsecond\nn03000000\tthird, gamma\n"
            "n09999999\tnot in this subset\n"
        )
    label = {"n01000000": 0, "n02000000": 1, "n03000000": 2}  # sorted wnid order
    for wnid in TINY_WNIDS:
        for k in range(2):
            _png(root / "train" / wnid / "images" / f"{wnid}_{k}.png", 10 * label[wnid] + k)
    # val: file -> wnid, deliberately not grouped by class
    val = {"val_5.png": "n02000000", "val_1.png": "n03000000", "val_9.png": "n01000000",
           "val_3.png": "n02000000"}
    for name in val:
        _png(root / "val" / "images" / name, int(name[4:-4]))
    if lines is None:
        lines = [f"{name}\t{wnid}\t0\t0\t2\t1" for name, wnid in val.items()]
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {name: label[wnid] for name, wnid in val.items()}


def test_tiny_imagenet_labels_follow_sorted_wnids_and_the_wnid_column(tmp_path: Path) -> None:
    """Train labels from the sorted wnid of the folder; test labels from column 2."""
    expected_val = _tiny(tmp_path)
    train = TinyImageNet(tmp_path, "train")
    assert train.classes == ["n01000000", "n02000000", "n03000000"]
    assert _read(train) == [(0, 0), (1, 0), (10, 1), (11, 1), (20, 2), (21, 2)]
    test = TinyImageNet(tmp_path, "test")
    assert [Path(p).name for p, _ in test.samples] == list(expected_val)  # annotation order
    assert _read(test) == [(int(n[4:-4]), t) for n, t in expected_val.items()]
    assert train.class_names == ["first", "second", "third"]


def test_tiny_imagenet_annotations_with_only_file_and_wnid_columns(tmp_path: Path) -> None:
    """``<file>\\t<wnid>`` is all the reader needs; the box columns are optional."""
    lines = ["val_5.png\tn02000000", "val_1.png\tn03000000", "val_9.png\tn01000000"]
    _tiny(tmp_path, lines)
    assert _read(TinyImageNet(tmp_path, "test")) == [(5, 1), (1, 2), (9, 0)]


def test_tiny_imagenet_without_words_txt_names_classes_by_wnid(tmp_path: Path) -> None:
    """words.txt is optional in the documented layout."""
    _tiny(tmp_path, words=False)
    assert TinyImageNet(tmp_path, "train").class_names == ["n01000000", "n02000000", "n03000000"]


@pytest.mark.parametrize("bad", ["val_3.png", "val_3.png n02000000", "val_3.png\tn07777777\t0"])
def test_tiny_imagenet_malformed_annotation_line_is_reported_by_number(
    tmp_path: Path, bad: str
) -> None:
    """A line without a tab-separated known wnid fails as a dataset error naming line 3."""
    lines = ["val_5.png\tn02000000\t0", "val_1.png\tn03000000\t0", bad]
    _tiny(tmp_path, lines)
    with pytest.raises(NotFound, match=r"val_annotations.txt, line 3: "):
        TinyImageNet(tmp_path, "test")


@pytest.mark.parametrize("victim", ["val/val_annotations.txt", "val/images"])
def test_tiny_imagenet_missing_val_part_is_a_dataset_error(tmp_path: Path, victim: str) -> None:
    """Either half of the val folder missing gives the explained error, not a bare OSError."""
    _tiny(tmp_path)
    path = tmp_path / victim
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(NotFound, match="is missing"):
        TinyImageNet(tmp_path, "test")


def test_tiny_imagenet_missing_val_image_is_named(tmp_path: Path) -> None:
    _tiny(tmp_path)
    (tmp_path / "val" / "images" / "val_9.png").unlink()
    with pytest.raises(NotFound, match=r"1 validation images .* \['val_9.png'\]"):
        TinyImageNet(tmp_path, "test")


def _tiny_tar(tmp_path: Path, tar_name: str, folder: str, with_wnids: bool = True) -> Path:
    source = tmp_path / "src" / folder
    _tiny(source)
    if not with_wnids:
        (source / "wnids.txt").unlink()
    tar_path = tmp_path / tar_name
    with tarfile.open(tar_path, "w") as archive:
        archive.add(source, arcname=folder)
    return tar_path


def test_extract_tiny_imagenet_tar_once_then_reuse(tmp_path: Path) -> None:
    """Extracts into a new nested folder, reuses a finished extraction, redoes an unfinished one."""
    tar_path = _tiny_tar(tmp_path, "tiny-imagenet-100a.tar", "tiny-imagenet-100a")
    dest = tmp_path / "cache" / "nested"  # neither folder exists yet
    folder = extract_tiny_imagenet_tar(tar_path, dest)
    assert folder == dest / "tiny-imagenet-100a"
    assert (folder / "wnids.txt").read_text().split() == TINY_WNIDS
    assert (folder / ".figkd-complete").is_file()
    (folder / "wnids.txt").write_text("edited\n")
    assert extract_tiny_imagenet_tar(tar_path, dest) == folder
    assert (folder / "wnids.txt").read_text() == "edited\n"  # not extracted again
    (folder / ".figkd-complete").unlink()  # as after an interrupted extraction
    extract_tiny_imagenet_tar(tar_path, dest)
    assert (folder / "wnids.txt").read_text().split() == TINY_WNIDS
    other = tmp_path / "existing"
    other.mkdir()
    assert extract_tiny_imagenet_tar(tar_path, other) == other / "tiny-imagenet-100a"
    assert len(TinyImageNet(other / "tiny-imagenet-100a", "train")) == 6


@pytest.mark.parametrize("tar_name,folder,with_wnids", [
    ("tiny-imagenet-100a.tar", "tiny-imagenet-100a", False),  # no wnids.txt inside
    ("other.tar", "tiny-imagenet-100a", True),  # unpacks to a folder of another name
])
def test_extract_tiny_imagenet_tar_without_the_dataset_is_an_error(
    tmp_path: Path, tar_name: str, folder: str, with_wnids: bool
) -> None:
    tar_path = _tiny_tar(tmp_path, tar_name, folder, with_wnids)
    with pytest.raises(NotFound, match="did not unpack to"):
        extract_tiny_imagenet_tar(tar_path, tmp_path / "out")
    assert not (tmp_path / "out" / tar_name.split(".")[0] / ".figkd-complete").exists()


# --------------------------------------------------------------------------- CIFAR-100


def _cifar_batch(n: int) -> np.ndarray:
    """Rows in the documented order: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    Red = 7 * row, green = 7 * column, blue = 100 + image index."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    data_rows = []
    for i in range(n):
        red, green, blue = 7 * rows, 7 * cols, np.full((32, 32), 100 + i)
        data_rows.append(np.concatenate([red.ravel(), green.ravel(), blue.ravel()]))
    return np.asarray(data_rows, dtype=np.uint8)


def _cifar(root: Path, fine: list[int], coarse: list[int], n: int | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    batch = {b"data": _cifar_batch(len(fine) if n is None else n), b"fine_labels": fine,
             b"coarse_labels": coarse, b"batch_label": b"training batch 1 of 1"}
    meta = {b"fine_label_names": [b"apple", b"bee", b"cat", b"dog"],
            b"coarse_label_names": [b"fruit", b"animal"]}
    for name, obj in (("train", batch), ("test", batch), ("meta", meta)):
        with open(root / name, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)


def test_cifar100_pixels_are_rgb_planes_in_row_major_order(tmp_path: Path) -> None:
    """A transposed or channel-swapped decode would silently train on scrambled images."""
    _cifar(tmp_path, fine=[3, 1, 0], coarse=[1, 1, 0])
    ds = CIFAR100(tmp_path, "train")
    assert ds.targets == [3, 1, 0] and ds.classes == ["apple", "bee", "cat", "dog"]
    for i in range(3):
        image, label = ds[i]
        assert label == [3, 1, 0][i] and image.size == (32, 32)
        for x, y in [(0, 0), (5, 2), (31, 30), (2, 17)]:
            assert image.getpixel((x, y)) == (7 * y, 7 * x, 100 + i)
    tensor = ds.images_uint8()
    assert tensor.shape == (3, 3, 32, 32)
    assert tensor[2, 0, 4, 9] == 28 and tensor[2, 1, 4, 9] == 63 and tensor[2, 2, 4, 9] == 102
    coarse = CIFAR100(tmp_path, "test", label_type="coarse")
    assert coarse.targets == [1, 1, 0] and coarse.classes == ["fruit", "animal"]


def test_cifar100_label_and_image_counts_must_agree(tmp_path: Path) -> None:
    _cifar(tmp_path, fine=[3, 1, 0], coarse=[1, 1, 0], n=2)
    with pytest.raises(NotFound, match="labels and images differ in count"):
        CIFAR100(tmp_path, "train")


# ------------------------------------------------------------------------ image folder


def test_image_folder_ignores_files_and_hidden_folders_beside_classes(tmp_path: Path) -> None:
    """A README or a hidden ``.ipynb_checkpoints`` must not become a class (labels would shift)."""
    for split, base in (("train", 0), ("test", 50)):
        _png(tmp_path / split / "b_cls" / "x.png", base + 1)
        _png(tmp_path / split / "a_cls" / "x.png", base + 0)
        _png(tmp_path / split / ".ipynb_checkpoints" / "x.png", 99)
        (tmp_path / split / "README.png").write_bytes(b"")  # a file, not a class folder
    train = ImageFolderDataset(tmp_path, "train")
    assert train.classes == ["a_cls", "b_cls"]
    assert _read(train) == [(0, 0), (1, 1)]
    assert _read(ImageFolderDataset(tmp_path, "test")) == [(50, 0), (51, 1)]


def test_image_folder_reads_nested_and_symlinked_subfolders(tmp_path: Path) -> None:
    """Documented: any depth below the class folder; symlinked folders count too."""
    root = tmp_path / "tree"
    _png(root / "train" / "cat" / "a.png", 1)
    _png(root / "train" / "cat" / "deeper" / "b.png", 2)
    _png(tmp_path / "elsewhere" / "c.png", 3)
    (root / "train" / "cat" / "linked").symlink_to(tmp_path / "elsewhere")
    _png(root / "train" / "dog" / "d.png", 4)
    assert _read(ImageFolderDataset(root, "train")) == [(1, 0), (2, 0), (3, 0), (4, 1)]


def test_image_folder_class_named_test_inside_train_tree_is_a_class(tmp_path: Path) -> None:
    """Only a bare tree drops test/ and val/ folders; under train/ they are class names."""
    for split, base in (("train", 0), ("test", 10)):
        _png(tmp_path / split / "test" / "x.png", base + 0)
        _png(tmp_path / split / "zebra" / "x.png", base + 1)
    assert ImageFolderDataset(tmp_path, "train").classes == ["test", "zebra"]
    assert _read(ImageFolderDataset(tmp_path, "test")) == [(10, 0), (11, 1)]


def test_image_folder_bare_tree_with_val_folder_is_train_only(tmp_path: Path) -> None:
    """``<root>/{cat,dog,val}``: val/ is not a class, and a bare tree has no test split."""
    _png(tmp_path / "cat" / "x.png", 1)
    _png(tmp_path / "dog" / "x.png", 2)
    _png(tmp_path / "val" / "cat" / "x.png", 3)
    train = ImageFolderDataset(tmp_path, "train")
    assert train.classes == ["cat", "dog"] and _read(train) == [(1, 0), (2, 1)]
    with pytest.raises(NotFound, match="no test tree"):
        ImageFolderDataset(tmp_path, "test")


def test_image_folder_prefers_test_over_val(tmp_path: Path) -> None:
    for split, ident in (("train", 1), ("val", 2), ("test", 3)):
        _png(tmp_path / split / "cat" / "x.png", ident)
    assert _read(ImageFolderDataset(tmp_path, "test")) == [(3, 0)]
    assert _read(ImageFolderDataset(tmp_path, "test", test_folder="val")) == [(2, 0)]


# -------------------------------------------------------------------------- CUB-200-2011


def _cub(root: Path, drop: tuple[str, int] | None = None, bad_line: str | None = None) -> None:
    """Ids listed out of order; class ids 1..3 listed out of order in classes.txt.
    Image id ``i`` has pixel id ``i``; its class is 1 + i % 3 and it is in train iff i is even."""
    ids = [5, 2, 6, 1, 4, 3]
    tables: dict[str, list[str]] = {"images.txt": [], "image_class_labels.txt": [],
                                    "train_test_split.txt": []}
    for i in ids:
        cls = 1 + i % 3
        rel = f"{cls:03d}.Bird_{cls}/img_{i}.png"
        _png(root / "images" / rel, i)
        tables["images.txt"].append(f"{i} {rel}")
        tables["image_class_labels.txt"].append(f"{i} {cls}")
        tables["train_test_split.txt"].append(f"{i} {1 if i % 2 == 0 else 0}")
    if drop is not None:
        name, image_id = drop
        tables[name] = [line for line in tables[name] if not line.startswith(f"{image_id} ")]
    if bad_line is not None:
        tables["image_class_labels.txt"].insert(1, bad_line)
    tables["classes.txt"] = ["3 003.Bird_3", "1 001.Bird_1", "2 002.Bird_2"]
    for name, lines in tables.items():
        (root / name).write_text("\n".join(lines) + "\n")


def test_cub200_split_flags_and_label_column(tmp_path: Path) -> None:
    """Train = flag 1, test = flag 0, in image-id order; label = class id - 1."""
    _cub(tmp_path)
    train, test = CUB200(tmp_path, "train"), CUB200(tmp_path, "test")
    assert train.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    # id -> class id 1 + id % 3 -> label id % 3
    assert _read(train) == [(2, 2), (4, 1), (6, 0)]
    assert _read(test) == [(1, 1), (3, 0), (5, 2)]


@pytest.mark.parametrize("bad", ["x7 2", "7", "-7 2"])
def test_cub200_malformed_id_line_is_reported_by_number(tmp_path: Path, bad: str) -> None:
    _cub(tmp_path, bad_line=bad)
    with pytest.raises(NotFound, match=r"image_class_labels.txt, line 2: expected"):
        CUB200(tmp_path, "train")


@pytest.mark.parametrize("table", ["image_class_labels.txt", "train_test_split.txt"])
def test_cub200_image_without_label_or_split_entry_is_an_error(tmp_path: Path, table: str) -> None:
    _cub(tmp_path, drop=(table, 3))
    with pytest.raises(NotFound, match="image id 3 lacks a label or a split entry"):
        CUB200(tmp_path, "test")


@pytest.mark.parametrize(
    "table,line,message",
    [
        ("image_class_labels.txt", "3 7", r"image id 3 class '7', which is not a class id"),
        ("image_class_labels.txt", "3 1b", r"image id 3 class '1b', which is not a class id"),
        ("train_test_split.txt", "3 2", r"image id 3 the value '2'; expected 1 \(train\) or 0"),
    ],
)
def test_cub200_label_or_split_value_outside_the_tables_is_an_error(
    tmp_path: Path, table: str, line: str, message: str
) -> None:
    """A class id missing from classes.txt, or a split flag other than 0/1, comes from mixed
    or damaged annotation files; a flag of 2 would otherwise drop the image from both splits
    without a word."""
    _cub(tmp_path)
    path = tmp_path / table
    lines = [line if old.startswith("3 ") else old for old in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    for split in ("train", "test"):  # image 3 is a test image; the train split must refuse too
        with pytest.raises(NotFound, match=message):
            CUB200(tmp_path, split)


# ------------------------------------------------------------------------ Stanford Dogs

DOG_BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def _dogs(root: Path, listing: list[tuple[str, int]]) -> None:
    """Images/<breed>/<k>.png with pixel id 10 * breed index + k, and both .mat lists set to
    ``listing`` ((path relative to Images/, 1-based label) pairs)."""
    from scipy.io import savemat

    for b, breed in enumerate(DOG_BREEDS):
        for k in range(2):
            _png(root / "Images" / breed / f"{k}.png", 10 * b + k)
    cells = np.empty((len(listing), 1), dtype=object)
    for n, (rel, _) in enumerate(listing):
        cells[n, 0] = np.array([rel])
    labels = np.array([label for _, label in listing], dtype=float).reshape(-1, 1)
    for split in ("train", "test"):
        savemat(str(root / f"{split}_list.mat"), {"file_list": cells, "labels": labels})


def test_stanford_dogs_labels_are_one_based_sorted_breed_numbers(tmp_path: Path) -> None:
    listing = [(f"{DOG_BREEDS[2]}/1.png", 3), (f"{DOG_BREEDS[0]}/0.png", 1),
               (f"{DOG_BREEDS[1]}/1.png", 2)]
    _dogs(tmp_path, listing)
    ds = StanfordDogs(tmp_path, "test")
    assert ds.classes == DOG_BREEDS
    assert _read(ds) == [(21, 2), (0, 0), (11, 1)]


@pytest.mark.parametrize("rel,label", [
    (f"{DOG_BREEDS[0]}/0.png", 2),  # label of the next breed
    (f"{DOG_BREEDS[2]}/0.png", 0),  # 0 would index the last breed from the end
    (f"{DOG_BREEDS[2]}/0.png", 4),  # past the last breed
])
def test_stanford_dogs_label_disagreeing_with_breed_folder_is_rejected(
    tmp_path: Path, rel: str, label: int
) -> None:
    """The lists' labels must name the image's own breed folder, or nothing is trusted."""
    _dogs(tmp_path, [(f"{DOG_BREEDS[1]}/0.png", 2), (rel, label)])
    with pytest.raises(NotFound, match=f"label {label}, but breed folder number"):
        StanfordDogs(tmp_path, "train")


# --------------------------------------------------------------------------- MIT Indoor 67


def _mit67(root: Path, train_lines: list[str]) -> None:
    for c, category in enumerate(["kitchen", "bar", "gameroom"]):  # sorted: bar, gameroom, kitchen
        for k in range(2):
            _png(root / "Images" / category / f"{k}.png", 10 * c + k)
    (root / "TrainImages.txt").write_text("\n".join(train_lines) + "\n")
    (root / "TestImages.txt").write_text("kitchen/1.png\n")


def test_mit67_labels_are_sorted_category_folders(tmp_path: Path) -> None:
    _mit67(tmp_path, ["kitchen/0.png", "bar/1.png", "gameroom/0.png"])
    train = MITIndoor67(tmp_path, "train")
    assert train.classes == ["bar", "gameroom", "kitchen"]
    assert _read(train) == [(0, 2), (11, 0), (20, 1)]
    assert _read(MITIndoor67(tmp_path, "test")) == [(1, 2)]


@pytest.mark.parametrize("bad", ["0.png", "gameroom", "attic/0.png"])
def test_mit67_malformed_split_line_is_reported_by_number(tmp_path: Path, bad: str) -> None:
    """A bare category name would otherwise list the folder itself as an image."""
    _mit67(tmp_path, ["kitchen/0.png", bad])
    with pytest.raises(NotFound, match=r"TrainImages.txt, line 2: "):
        MITIndoor67(tmp_path, "train")


def test_mit67_missing_images_folder_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "TrainImages.txt").write_text("kitchen/0.png\n")
    with pytest.raises(NotFound, match="is missing"):
        MITIndoor67(tmp_path, "train")


# ------------------------------------------------------------------- Stanford 40 Actions


def _stanford40(root: Path, header: bool, split_lines: list[str]) -> None:
    """Actions in actions.txt order (not sorted); image ``<action>_<NNN>.png`` has pixel id
    10 * (position in actions.txt) + NNN."""
    actions = ["writing_on_a_book", "applauding", "blowing_bubbles"]
    lines = ["action_name\tnumber_of_images"] if header else []
    lines += [f"{a}\t2" for a in actions]
    (root / "ImageSplits").mkdir(parents=True)
    (root / "ImageSplits" / "actions.txt").write_text("\n".join(lines) + "\n")
    for a, action in enumerate(actions):
        for k in (1, 2):
            _png(root / "JPEGImages" / f"{action}_{k:03d}.png", 10 * a + k)
    for split in ("train", "test"):
        (root / "ImageSplits" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")


@pytest.mark.parametrize("header", [True, False])
def test_stanford40_classes_in_actions_file_order_with_or_without_header(
    tmp_path: Path, header: bool
) -> None:
    """The header line is skipped only when present; dropping an action would shift labels."""
    _stanford40(tmp_path, header,
                ["blowing_bubbles_002.png", "writing_on_a_book_001.png", "applauding_002.png"])
    ds = Stanford40(tmp_path, "train")
    assert ds.classes == ["writing_on_a_book", "applauding", "blowing_bubbles"]
    assert _read(ds) == [(22, 2), (1, 0), (12, 1)]


def test_stanford40_unknown_action_is_reported_by_number(tmp_path: Path) -> None:
    _stanford40(tmp_path, True, ["applauding_001.png", "cooking_001.png"])
    with pytest.raises(NotFound, match=r"test.txt, line 2: 'cooking_001.png' names no action"):
        Stanford40(tmp_path, "test")


# Every reader rejects an unknown split name rather than guessing one.
READERS: list[Callable[..., object]] = [
    TinyImageNet, CUB200, StanfordDogs, MITIndoor67, Stanford40, ImageFolderDataset,
]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_unknown_split_is_a_value_error(tmp_path: Path, reader: Callable[..., object]) -> None:
    if reader is TinyImageNet:
        _tiny(tmp_path)
    elif reader is ImageFolderDataset:
        _png(tmp_path / "train" / "cat" / "x.png", 1)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        reader(tmp_path, "val")
