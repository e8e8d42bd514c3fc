"""Tiny fake copies of each dataset in its official on-disk format.

The tests build readers against these (no real data needed), and other parts of
figkd can use them for end-to-end checks. Every image of class ``c`` is a solid
:func:`class_color` ``(c)`` patch, so a test can check a label by looking at pixels.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class (for up to ~200 classes)."""
    return ((37 * label + 20) % 256, (91 * label + 60) % 256, (151 * label + 110) % 256)


def _save(path: Path, label: int, size: tuple[int, int], gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, class_color(label))
    if gray:
        image = image.convert("L")
    image.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)


def write_fake_cifar100(
    root: str | Path, train_per_class: int = 2, test_per_class: int = 1, num_classes: int = 100
) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` pickles; class ``c`` is ``class_color(c)``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for _ in range(per_class) for c in range(num_classes)]
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            data[i] = np.array(class_color(label), dtype=np.uint8)[:, None, None]
            data[i, 0, 0, 0] = i % 256  # one pixel differs per image
        batch = {
            b"data": data.reshape(len(labels), -1), b"fine_labels": labels,
            b"coarse_labels": [c // 5 for c in labels], b"batch_label": split.encode(),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }
        with open(folder / split, "wb") as handle:
            pickle.dump(batch, handle)
    meta = {
        b"fine_label_names": [f"class_{c:03d}".encode() for c in range(num_classes)],
        b"coarse_label_names": [f"super_{c:02d}".encode() for c in range(max(1, num_classes // 5))],
    }
    with open(folder / "meta", "wb") as handle:
        pickle.dump(meta, handle)
    return folder


def write_fake_tiny_imagenet(
    root: str | Path,
    num_classes: int = 3,
    train_per_class: int = 4,
    val_per_class: int = 2,
    size: int = 64,
    gray_every: int = 3,
) -> Path:
    """Official Tiny-ImageNet layout; ``wnids.txt`` deliberately unsorted, every
    ``gray_every``-th image single-channel (as some real ones are)."""
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{9000000 - 1000 * c:08d}" for c in range(num_classes)]  # descending order
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {w}, other name\n" for w in wnids))
    label_of = {w: i for i, w in enumerate(sorted(wnids))}
    count = 0
    for wnid in wnids:
        boxes = []
        for k in range(train_per_class):
            name = f"{wnid}_{k}.JPEG"
            _save(folder / "train" / wnid / "images" / name, label_of[wnid], (size, size),
                  gray=gray_every > 0 and count % gray_every == 0)
            boxes.append(f"{name}\t0\t0\t{size - 1}\t{size - 1}\n")
            count += 1
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines, k = [], 0
    for j in range(val_per_class):
        for wnid in reversed(wnids):
            name = f"val_{k * 3 + 1}.JPEG"  # gaps in the numbering, as in the real subset
            _save(folder / "val" / "images" / name, label_of[wnid], (size, size),
                  gray=gray_every > 0 and k % gray_every == 1)
            lines.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}\n")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


def _size(i: int) -> tuple[int, int]:
    """Varying image sizes, as in the real fine-grained sets."""
    return (40 + 7 * (i % 4), 36 + 5 * (i % 3))


def write_fake_cub200(
    root: str | Path, num_classes: int = 3, train_per_class: int = 3, test_per_class: int = 2
) -> Path:
    folder = Path(root) / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    image_id = 1
    for c in range(num_classes):
        class_name = f"{c + 1:03d}.Bird_{c}"
        classes.append(f"{c + 1} {class_name}\n")
        flags = np.random.default_rng(c).permutation([1] * train_per_class + [0] * test_per_class)
        for k, flag in enumerate(flags):  # train and test interleaved, as in the official file
            rel = f"{class_name}/Bird_{c}_{k:04d}.jpg"
            _save(folder / "images" / rel, c, _size(image_id))
            images.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c + 1}\n")
            split.append(f"{image_id} {int(flag)}\n")
            image_id += 1
    (folder / "images.txt").write_text("".join(images))
    (folder / "image_class_labels.txt").write_text("".join(labels))
    (folder / "classes.txt").write_text("".join(classes))
    (folder / "train_test_split.txt").write_text("".join(split))
    return folder


def write_fake_stanford_dogs(
    root: str | Path, num_classes: int = 3, train_per_class: int = 3, test_per_class: int = 2
) -> Path:
    from scipy.io import savemat

    folder = Path(root) / "stanford-dogs"
    breeds = [f"n0208{5620 + c}-Breed_{c}" for c in range(num_classes)]
    lists: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    i = 0
    for c, breed in enumerate(breeds):
        wnid = breed.split("-")[0]
        for k in range(train_per_class + test_per_class):
            rel = f"{breed}/{wnid}_{k}.jpg"
            _save(folder / "Images" / rel, c, _size(i))
            which = "train" if k < train_per_class else "test"
            lists[which][0].append(rel)
            lists[which][1].append(c + 1)
            i += 1
    for which, (files, labels) in lists.items():
        cells = np.empty((len(files), 1), dtype=object)
        for n, rel in enumerate(files):
            cells[n, 0] = np.array([rel])
        savemat(str(folder / f"{which}_list.mat"),
                {"file_list": cells, "labels": np.array(labels, dtype=float).reshape(-1, 1)})
    return folder


def write_fake_mit67(
    root: str | Path, num_classes: int = 3, train_per_class: int = 3, test_per_class: int = 2
) -> Path:
    folder = Path(root) / "mit67"
    categories = [f"scene_{chr(ord('a') + c)}" for c in range(num_classes)]
    train: list[str] = []
    test: list[str] = []
    i = 0
    for c, category in enumerate(categories):
        for k in range(train_per_class + test_per_class):
            rel = f"{category}/img_{k:03d}.jpg"
            _save(folder / "Images" / rel, c, _size(i))
            (train if k < train_per_class else test).append(rel + "\n")
            i += 1
    (folder / "TrainImages.txt").write_text("".join(train))
    (folder / "TestImages.txt").write_text("".join(test))
    return folder


def write_fake_stanford40(
    root: str | Path, num_classes: int = 3, train_per_class: int = 3, test_per_class: int = 2
) -> Path:
    folder = Path(root) / "Stanford40"
    actions = [f"action_{chr(ord('a') + c)}" for c in range(num_classes)]
    train: list[str] = []
    test: list[str] = []
    header = ["action_name\tnumber_of_images\n"]
    i = 0
    for c, action in enumerate(actions):
        header.append(f"{action}\t{train_per_class + test_per_class}\n")
        for k in range(train_per_class + test_per_class):
            name = f"{action}_{k + 1:03d}.jpg"
            _save(folder / "JPEGImages" / name, c, _size(i))
            (train if k < train_per_class else test).append(name + "\n")
            i += 1
    splits = folder / "ImageSplits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "actions.txt").write_text("".join(header))
    (splits / "train.txt").write_text("".join(train))
    (splits / "test.txt").write_text("".join(test))
    return folder


def write_fake_image_folder(
    root: str | Path, classes: tuple[str, ...] = ("cat", "dog", "emu"),
    train_per_class: int = 3, test_per_class: int = 2, ext: str = ".png",
) -> Path:
    folder = Path(root) / "image-folder"
    i = 0
    for c, name in enumerate(classes):
        for k in range(train_per_class):
            _save(folder / "train" / name / f"{k}{ext}", c, _size(i))
            i += 1
        for k in range(test_per_class):
            _save(folder / "test" / name / f"{k}{ext}", c, _size(i))
            i += 1
    return folder
