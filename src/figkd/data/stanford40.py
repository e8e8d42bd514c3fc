"""Stanford 40 Actions with its official ``ImageSplits/{train,test}.txt`` (4,000 / 5,532)."""

from __future__ import annotations

from pathlib import Path

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import ImageFileDataset, Transform, read_lines, require_files

STANFORD40_URL = (
    "http://vision.stanford.edu/Datasets/40actions.html "
    "(Stanford40_JPEGImages.zip, Stanford40_ImageSplits.zip)"
)
STANFORD40_LAYOUT = """
Stanford40/
  JPEGImages/<action>_<NNN>.jpg
  ImageSplits/actions.txt      header line, then "<action>\\t<number of images>", 40 lines
  ImageSplits/train.txt        "<action>_<NNN>.jpg", 4,000 lines (100 per action)
  ImageSplits/test.txt         "<action>_<NNN>.jpg", 5,532 lines
"""


class Stanford40(ImageFileDataset):
    """Stanford 40 Actions; ``classes`` are the action names in ``actions.txt`` order."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"Stanford40 split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        splits_dir, images_dir = root / "ImageSplits", root / "JPEGImages"
        actions_file, split_file = splits_dir / "actions.txt", splits_dir / f"{split}.txt"
        for path in (actions_file, split_file):
            if not path.is_file():
                raise dataset_error("stanford40", f"{path} is missing.")
        lines = read_lines(actions_file)
        if lines and lines[0].lower().startswith("action_name"):
            lines = lines[1:]
        classes = [line.split()[0] for line in lines]
        class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = []
        for number, name in enumerate(read_lines(split_file), start=1):
            action = Path(name).stem.rsplit("_", 1)[0]
            if action not in class_to_idx:
                raise dataset_error(
                    "stanford40",
                    f"{split_file}, line {number}: {name!r} names no action of {actions_file}.",
                )
            samples.append((str(images_dir / name), class_to_idx[action]))
        require_files(
            [Path(p) for p, _ in samples],
            f"images listed in {split_file.name}",
            lambda problem: dataset_error("stanford40", problem),
        )
        super().__init__(root, samples, classes, split, transform)


@register_dataset(
    "stanford40",
    aliases=("stanford-40", "stanford40-actions", "stanford_40"),
    folder_names=("Stanford40", "stanford40", "StanfordActionDataset"),
    marker="ImageSplits",
    url=STANFORD40_URL,
    layout=STANFORD40_LAYOUT,
    num_classes=40,
    presets=("fine-grained-224", "fine-grained-32"),
    description="Stanford 40 Actions: 4,000 train / 5,532 test images, 40 actions",
)
def build_stanford40(root: Path, split: str, transform: Transform | None = None) -> Stanford40:
    return Stanford40(root, split, transform)
