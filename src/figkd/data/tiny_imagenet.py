"""Tiny-ImageNet in its official layout (``wnids.txt``, ``train/<wnid>/images``, ``val/``).

The labelled ``val`` folder is figkd's "test" split: the official test images carry no
labels. Classes are the wnids of ``wnids.txt`` sorted alphabetically, which is the order
an ImageFolder over ``train/`` gives (the official ``wnids.txt`` itself is not sorted),
so labels agree with checkpoints trained by ImageFolder-based code such as mdistiller.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import ImageFileDataset, Transform, is_image_file, read_lines

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_LAYOUT = """
tiny-imagenet-200/                 (or tiny-imagenet-100a/, the 100-class subset)
  wnids.txt                        one wnid per line
  words.txt                        optional: "<wnid>\\t<names>"
  train/<wnid>/images/*.JPEG       training images, 500 per class
  val/images/val_<k>.JPEG          labelled validation images (figkd's "test" split)
  val/val_annotations.txt          "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
"""


class TinyImageNet(ImageFileDataset):
    """Tiny-ImageNet; ``classes`` are wnids, ``class_names`` the first name from words.txt."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        root = Path(root)
        wnids_file = root / "wnids.txt"
        if not wnids_file.is_file():
            raise dataset_error("tiny-imagenet", f"{wnids_file} is missing.")
        wnids = sorted(set(read_lines(wnids_file)))
        class_to_idx = {w: i for i, w in enumerate(wnids)}
        if split == "train":
            samples = self._train_samples(root, wnids)
        elif split == "test":
            samples = self._val_samples(root, class_to_idx)
        else:
            raise ValueError(f"TinyImageNet split must be 'train' or 'test', got {split!r}")
        super().__init__(root, samples, wnids, split, transform)
        self.wnids = wnids
        self.class_names = self._class_names(root, wnids)

    @staticmethod
    def _train_samples(root: Path, wnids: list[str]) -> list[tuple[str, int]]:
        samples: list[tuple[str, int]] = []
        for label, wnid in enumerate(wnids):
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise dataset_error("tiny-imagenet", f"training folder {folder} is missing.")
            names = sorted(n for n in os.listdir(folder) if is_image_file(n))
            if not names:
                raise dataset_error("tiny-imagenet", f"training folder {folder} holds no images.")
            samples.extend((str(folder / n), label) for n in names)
        return samples

    @staticmethod
    def _val_samples(root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        annotations = root / "val" / "val_annotations.txt"
        images = root / "val" / "images"
        if not annotations.is_file() or not images.is_dir():
            raise dataset_error("tiny-imagenet", f"{annotations} or {images}/ is missing.")
        present = set(os.listdir(images))
        samples: list[tuple[str, int]] = []
        missing: list[str] = []
        for number, line in enumerate(read_lines(annotations), start=1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_to_idx:
                raise dataset_error(
                    "tiny-imagenet",
                    f"{annotations}, line {number}: expected '<file>\\t<wnid>...' with a wnid "
                    f"from wnids.txt, got {line!r}.",
                )
            if fields[0] not in present:
                missing.append(fields[0])
            samples.append((str(images / fields[0]), class_to_idx[fields[1]]))
        if missing:
            raise dataset_error(
                "tiny-imagenet",
                f"{len(missing)} validation images listed in {annotations} are missing from "
                f"{images}, e.g. {missing[:3]}.",
            )
        return samples

    @staticmethod
    def _class_names(root: Path, wnids: list[str]) -> list[str]:
        words = root / "words.txt"
        names = {}
        if words.is_file():
            for line in read_lines(words):
                wnid, _, text = line.partition("\t")
                names[wnid] = text.split(",")[0].strip()
        return [names.get(w, w) for w in wnids]


@register_dataset(
    "tiny-imagenet",
    aliases=("tinyimagenet", "tiny_imagenet", "tiny-imagenet-200"),
    folder_names=("tiny-imagenet-200", "tiny-imagenet-100a", "tiny-imagenet"),
    marker="wnids.txt",
    url=TINY_URL,
    layout=TINY_LAYOUT,
    num_classes=200,
    presets=("tiny-imagenet-64", "tiny-imagenet-32", "tiny-imagenet-64-crop"),
    description="Tiny-ImageNet: 500 train / 50 val (our 'test') 64x64 images per class",
)
def build_tiny_imagenet(root: Path, split: str, transform: Transform | None = None) -> TinyImageNet:
    return TinyImageNet(root, split, transform)


def extract_tiny_imagenet_tar(tar_path: str | Path, dest: str | Path) -> Path:
    """Unpack a local Tiny-ImageNet tar (e.g. ``tiny-imagenet-100a.tar``) into ``dest`` once.

    Returns the dataset folder. A ``.figkd-complete`` marker written after a full
    extraction makes later calls free and lets an interrupted extraction be redone.
    Nothing is downloaded.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    folder = dest / tar_path.name.split(".")[0]
    marker = folder / ".figkd-complete"
    if marker.exists():
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as archive:
        archive.extractall(dest, filter="data")
    if not (folder / "wnids.txt").is_file():
        raise dataset_error("tiny-imagenet", f"{tar_path} did not unpack to {folder}/wnids.txt.")
    marker.write_text("extracted by figkd\n")
    return folder
