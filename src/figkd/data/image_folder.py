"""Any ImageFolder-style tree: ``<root>/{train,test}/<class>/**/<image>``.

A bare ``<root>/<class>/<image>`` tree is accepted as a training set only. Class
indices come from the sorted class folders of the *training* tree and are reused for
the test tree, so a class missing from test cannot shift the labels.
"""

from __future__ import annotations

import os
from pathlib import Path

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import ImageFileDataset, Transform, is_image_file

FOLDER_LAYOUT = """
<root>/
  train/<class>/**/<image>     any depth below the class folder; .jpg .png .bmp ...
  test/<class>/**/<image>      (or val/); the test classes must also exist in train/
or, for a training set only:
<root>/<class>/**/<image>
"""
EVAL_FOLDERS = ("test", "val")


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _scan(folder: Path, names: list[str], class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    samples: list[tuple[str, int]] = []
    for name in names:
        if name not in class_to_idx:
            raise dataset_error(
                "image-folder",
                f"class folder {folder / name} has no counterpart in the training tree.",
            )
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames.sort()
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
        samples.extend((path, class_to_idx[name]) for path in found)
    return samples


class ImageFolderDataset(ImageFileDataset):
    """Images grouped in one folder per class; the class name is the folder name."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        test_folder: str | None = None,
    ) -> None:
        root = Path(root)
        train_dir = root / "train" if (root / "train").is_dir() else root
        classes = _class_folders(train_dir)
        if train_dir == root:
            classes = [c for c in classes if c not in EVAL_FOLDERS]
        if not classes:
            raise dataset_error("image-folder", f"{train_dir} holds no class folders.")
        class_to_idx = {c: i for i, c in enumerate(classes)}
        if split == "train":
            folder, names = train_dir, classes
        elif split == "test":
            names = [test_folder] if test_folder else list(EVAL_FOLDERS)
            found = [root / n for n in names if (root / n).is_dir()]
            if train_dir == root or not found:
                raise dataset_error(
                    "image-folder",
                    f"no test tree: expected {' or '.join(str(root / n) for n in names)} next to "
                    f"{root / 'train'}.",
                )
            folder = found[0]
            names = _class_folders(folder)
        else:
            raise ValueError(f"ImageFolderDataset split must be 'train' or 'test', got {split!r}")
        samples = _scan(folder, names, class_to_idx)
        if not samples:
            raise dataset_error("image-folder", f"{folder} holds no image files.")
        super().__init__(root, samples, classes, split, transform)
        self.folder = folder


@register_dataset(
    "image-folder",
    aliases=("imagefolder", "folder", "image_folder"),
    layout=FOLDER_LAYOUT,
    presets=("fine-grained-224", "fine-grained-32"),
    description="any ImageFolder-style tree of class folders; root= is required",
)
def build_image_folder(
    root: Path, split: str, transform: Transform | None = None, test_folder: str | None = None
) -> ImageFolderDataset:
    return ImageFolderDataset(root, split, transform, test_folder=test_folder)
