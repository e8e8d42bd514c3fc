"""Stanford Dogs with its official ``train_list.mat`` / ``test_list.mat`` (12,000 / 8,580).

The split lists are MATLAB files, read with ``scipy.io.loadmat``; scipy is imported
only when this reader runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from figkd.data.api import dataset_error, register_dataset
from figkd.data.base import ImageFileDataset, Transform, require_files

DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/ (images.tar, lists.tar)"
DOGS_LAYOUT = """
stanford-dogs/               (images.tar and lists.tar extracted into one folder)
  Images/<wnid>-<Breed>/<wnid>_<k>.jpg
  train_list.mat             file_list (relative to Images/), labels (1..120)
  test_list.mat              the same for the test images
"""


def _load_list(path: Path) -> tuple[list[str], list[int]]:
    try:
        from scipy.io import loadmat
    except ImportError as error:  # pragma: no cover - scipy is a test dependency
        raise ImportError(
            "reading Stanford Dogs' .mat split files needs scipy: pip install scipy"
        ) from error
    if not path.is_file():
        raise dataset_error("stanford-dogs", f"{path} is missing.")
    try:
        mat: dict[str, Any] = loadmat(str(path))
        files = [str(entry[0][0]) for entry in mat["file_list"]]
        labels = [int(v) for v in mat["labels"].reshape(-1)]
    except (KeyError, IndexError, ValueError, OSError) as error:
        raise dataset_error("stanford-dogs", f"cannot read {path}: {error!r}.") from error
    if len(files) != len(labels):
        raise dataset_error("stanford-dogs", f"{path}: file_list and labels differ in length.")
    return files, labels


class StanfordDogs(ImageFileDataset):
    """Stanford Dogs; ``classes`` are the breed folder names (``n02085620-Chihuahua``)."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"StanfordDogs split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        files, labels = _load_list(root / f"{split}_list.mat")
        # Label k is the k-th breed folder in sorted order (that is how the lists were
        # made); check it, so a re-ordered Images/ folder cannot silently mislabel.
        images_dir = root / "Images"
        if not images_dir.is_dir():
            raise dataset_error("stanford-dogs", f"{images_dir} is missing.")
        classes = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
        for rel, label in zip(files, labels):
            folder = rel.split("/")[0]
            if not 1 <= label <= len(classes) or classes[label - 1] != folder:
                raise dataset_error(
                    "stanford-dogs",
                    f"{split}_list.mat gives {rel!r} label {label}, but breed folder number "
                    f"{label} in sorted order is not {folder!r}; Images/ looks incomplete.",
                )
        samples = [(str(root / "Images" / rel), label - 1) for rel, label in zip(files, labels)]
        require_files(
            [Path(p) for p, _ in samples],
            f"images listed in {split}_list.mat",
            lambda problem: dataset_error("stanford-dogs", problem),
        )
        super().__init__(root, samples, classes, split, transform)


@register_dataset(
    "stanford-dogs",
    aliases=("dogs", "stanford_dogs", "stanforddogs"),
    folder_names=("stanford-dogs", "StanfordDogs", "stanford_dogs", "dogs"),
    marker="train_list.mat",
    url=DOGS_URL,
    layout=DOGS_LAYOUT,
    num_classes=120,
    presets=("fine-grained-224", "fine-grained-32"),
    description="Stanford Dogs: 12,000 train / 8,580 test images, 120 breeds",
)
def build_stanford_dogs(root: Path, split: str, transform: Transform | None = None) -> StanfordDogs:
    return StanfordDogs(root, split, transform)
