"""CUB-200-2011 with its official split file ``train_test_split.txt`` (5,994 / 5,794 images)."""

from __future__ import annotations

from pathlib import Path

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import ImageFileDataset, Transform, read_lines, require_files

CUB_URL = (
    "https://www.vision.caltech.edu/datasets/cub_200_2011/ "
    "(CUB_200_2011.tgz, data.caltech.edu/records/65de6-vzc59)"
)
CUB_LAYOUT = """
CUB_200_2011/
  images/<NNN.Class_name>/<file>.jpg
  images.txt               "<image_id> <path relative to images/>"
  image_class_labels.txt   "<image_id> <class_id 1..200>"
  train_test_split.txt     "<image_id> <1 = train, 0 = test>"
  classes.txt              "<class_id> <NNN.Class_name>"
"""


def _id_table(path: Path) -> dict[int, str]:
    """``"<id> <value>"`` lines -> {id: value}; a malformed line is reported with its number."""
    table: dict[int, str] = {}
    for number, line in enumerate(read_lines(path), start=1):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value:
            raise dataset_error(
                "cub200", f"{path}, line {number}: expected '<id> <value>', got {line!r}."
            )
        table[int(key)] = value.strip()
    return table


class CUB200(ImageFileDataset):
    """CUB-200-2011; ``classes`` are the official class names (``001.Black_footed_Albatross``)."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"CUB200 split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        needed = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
        for name in needed:
            if not (root / name).is_file():
                raise dataset_error("cub200", f"{root / name} is missing.")
        images = _id_table(root / "images.txt")
        labels = _id_table(root / "image_class_labels.txt")
        is_train = _id_table(root / "train_test_split.txt")
        class_table = _id_table(root / "classes.txt")
        class_ids = sorted(class_table)
        classes = [class_table[i] for i in class_ids]
        index_of = {cid: i for i, cid in enumerate(class_ids)}
        wanted = "1" if split == "train" else "0"
        samples = []
        for image_id in sorted(images):
            if image_id not in labels or image_id not in is_train:
                raise dataset_error(
                    "cub200", f"image id {image_id} lacks a label or a split entry."
                )
            label, flag = labels[image_id], is_train[image_id]
            if not label.isdigit() or int(label) not in index_of:
                raise dataset_error(
                    "cub200",
                    f"image_class_labels.txt gives image id {image_id} class {label!r}, which "
                    "is not a class id of classes.txt: the annotation files come from "
                    "different copies; re-extract them all from CUB_200_2011.tgz.",
                )
            if flag not in ("0", "1"):
                raise dataset_error(
                    "cub200",
                    f"train_test_split.txt gives image id {image_id} the value {flag!r}; "
                    "expected 1 (train) or 0 (test); re-extract the file from CUB_200_2011.tgz.",
                )
            if flag == wanted:
                path = root / "images" / images[image_id]
                samples.append((str(path), index_of[int(label)]))
        require_files(
            [Path(p) for p, _ in samples],
            f"{split} images listed in images.txt",
            lambda problem: dataset_error("cub200", problem),
        )
        super().__init__(root, samples, classes, split, transform)


@register_dataset(
    "cub200",
    aliases=("cub", "cub-200", "cub200-2011", "CUB_200_2011"),
    folder_names=("CUB_200_2011", "cub200", "CUB-200-2011"),
    marker="images.txt",
    url=CUB_URL,
    layout=CUB_LAYOUT,
    num_classes=200,
    presets=("fine-grained-224", "fine-grained-32"),
    description="Caltech-UCSD Birds 200-2011: 5,994 train / 5,794 test images, 200 species",
)
def build_cub200(root: Path, split: str, transform: Transform | None = None) -> CUB200:
    return CUB200(root, split, transform)
