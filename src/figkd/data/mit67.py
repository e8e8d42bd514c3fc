"""MIT Indoor 67 with its official ``TrainImages.txt`` / ``TestImages.txt`` (80 / 20 per class)."""

from __future__ import annotations

from pathlib import Path

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import ImageFileDataset, Transform, read_lines, require_files

MIT67_URL = (
    "https://web.mit.edu/torralba/www/indoor.html "
    "(indoorCVPR_09.tar, TrainImages.txt, TestImages.txt)"
)
MIT67_LAYOUT = """
mit67/                     (indoorCVPR_09.tar extracted, plus the two split files)
  Images/<category>/<file>.jpg
  TrainImages.txt          "<category>/<file>.jpg", 5,360 lines
  TestImages.txt           "<category>/<file>.jpg", 1,340 lines
"""

SPLIT_FILES = {"train": "TrainImages.txt", "test": "TestImages.txt"}


class MITIndoor67(ImageFileDataset):
    """MIT Indoor 67; ``classes`` are the category folder names in sorted order."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        if split not in SPLIT_FILES:
            raise ValueError(f"MITIndoor67 split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        images_dir = root / "Images"
        split_file = root / SPLIT_FILES[split]
        if not images_dir.is_dir() or not split_file.is_file():
            raise dataset_error("mit67", f"{images_dir}/ or {split_file} is missing.")
        classes = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
        class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = []
        for number, line in enumerate(read_lines(split_file), start=1):
            category = line.split("/")[0]
            if "/" not in line or category not in class_to_idx:
                raise dataset_error(
                    "mit67",
                    f"{split_file}, line {number}: {line!r} does not start with a category "
                    f"folder of {images_dir}.",
                )
            samples.append((str(images_dir / line), class_to_idx[category]))
        require_files(
            [Path(p) for p, _ in samples],
            f"images listed in {split_file.name}",
            lambda problem: dataset_error("mit67", problem),
        )
        super().__init__(root, samples, classes, split, transform)


@register_dataset(
    "mit67",
    aliases=("mit-indoor-67", "mitindoor67", "indoor67", "MIT67"),
    folder_names=("mit67", "MIT67", "indoorCVPR_09", "mit-indoor-67"),
    marker="TrainImages.txt",
    url=MIT67_URL,
    layout=MIT67_LAYOUT,
    num_classes=67,
    presets=("fine-grained-224", "fine-grained-32"),
    description="MIT Indoor 67: 5,360 train / 1,340 test images, 67 scene categories",
)
def build_mit67(root: Path, split: str, transform: Transform | None = None) -> MITIndoor67:
    return MITIndoor67(root, split, transform)
