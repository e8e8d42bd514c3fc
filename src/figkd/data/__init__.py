"""Datasets, paper transform presets and the in-memory fast path.

    from figkd.data import load_dataset, build_transforms
    train = load_dataset("cifar100", split="train", transform=build_transforms("cifar", train=True))
    test = load_dataset("cifar100", split="test", transform=build_transforms("cifar", train=False))

Roots resolve from ``root=``, then ``$FIGKD_DATA/<folder>``, then ``./data/<folder>``;
nothing is ever downloaded. See docs/data.md for each dataset's layout and source.
"""

from figkd.data import (  # noqa: F401  (importing a reader registers it)
    cifar,
    cub200,
    digits,
    image_folder,
    mit67,
    shards,
    stanford40,
    stanford_dogs,
    synthetic,
    tiny_imagenet,
)
from figkd.data.api import (
    DATA_ENV,
    DATASETS,
    SPLITS,
    DatasetEntry,
    dataset_error,
    get_dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_root,
)
from figkd.data.base import (
    CorruptImageError,
    DatasetNotFoundError,
    ImageFileDataset,
    load_rgb,
)
from figkd.data.batch_loader import BatchAugment, GPUBatchLoader, epoch_generator
from figkd.data.cache import TensorImageCache, build_uint8_cache, decode_to_uint8
from figkd.data.cifar import CIFAR100
from figkd.data.cub200 import CUB200
from figkd.data.digits import Digits
from figkd.data.image_folder import ImageFolderDataset
from figkd.data.mit67 import MITIndoor67
from figkd.data.paired import PairedViews, build_paired_transforms
from figkd.data.randaugment import Cutout, RandAugment
from figkd.data.shards import ShardDataset, read_shards, write_shards
from figkd.data.splits import DatasetSubset, stratified_split
from figkd.data.stanford40 import Stanford40
from figkd.data.stanford_dogs import StanfordDogs
from figkd.data.tiny_imagenet import TinyImageNet, extract_tiny_imagenet_tar
from figkd.data.transforms import (
    PRESETS,
    LargeImagePreset,
    SmallImagePreset,
    build_transforms,
    get_preset,
    list_presets,
    register_preset,
)

__all__ = [
    "CIFAR100",
    "CUB200",
    "DATASETS",
    "DATA_ENV",
    "PRESETS",
    "SPLITS",
    "BatchAugment",
    "CorruptImageError",
    "Cutout",
    "DatasetEntry",
    "DatasetNotFoundError",
    "DatasetSubset",
    "Digits",
    "GPUBatchLoader",
    "ImageFileDataset",
    "ImageFolderDataset",
    "LargeImagePreset",
    "MITIndoor67",
    "PairedViews",
    "RandAugment",
    "ShardDataset",
    "SmallImagePreset",
    "Stanford40",
    "StanfordDogs",
    "TensorImageCache",
    "TinyImageNet",
    "build_paired_transforms",
    "build_transforms",
    "build_uint8_cache",
    "dataset_error",
    "decode_to_uint8",
    "epoch_generator",
    "extract_tiny_imagenet_tar",
    "get_dataset_info",
    "get_preset",
    "list_datasets",
    "list_presets",
    "load_dataset",
    "load_rgb",
    "read_shards",
    "register_dataset",
    "register_preset",
    "resolve_root",
    "stratified_split",
    "write_shards",
]
