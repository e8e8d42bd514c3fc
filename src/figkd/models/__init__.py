"""The model zoo: every teacher and student of the paper behind one registry.

>>> from figkd.models import create_model, list_models
>>> model = create_model("resnet8x4", num_classes=100)
>>> logits = model(images)                        # doctest: +SKIP
>>> feats = model.forward_features(images)        # doctest: +SKIP
>>> sorted(feats)                                 # doctest: +SKIP
['embedding', 'logits', 'pooled_map', 'preact_stages', 'stages', 'stem']

CIFAR-style models (native 32x32, any size via global pooling) keep the public
KD zoo's names (``resnet8x4``, ``wrn_40_2``, ``vgg13``, ``ShuffleV1``,
``MobileNetV2``, ``ResNet50``, ...) with the paper's spellings as aliases;
ImageNet-style models (224x224) end in ``_imagenet``.  One file per family.
"""

from figkd.models import (  # noqa: F401  (importing a family registers it)
    mobilenet_imagenet,
    mobilenetv2_cifar,
    resnet50_cifar,
    resnet_cifar,
    resnet_imagenet,
    shufflenetv1,
    shufflenetv2,
    tiny,
    vgg,
    wrn,
)
from figkd.models.base import Features, PreactBlock, StagedModel, ZooModel
from figkd.models.checkpoint import (
    CheckpointInfo,
    CheckpointMismatchError,
    extract_state_dict,
    load_checkpoint,
)
from figkd.models.complexity import (
    PAPER_TABLE15,
    Complexity,
    complexity_table,
    count_flops,
    count_macs,
    count_parameters,
    measure,
)
from figkd.models.registry import MODELS, aliases_of, create_model, list_models, register_model

__all__ = [
    "MODELS",
    "PAPER_TABLE15",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "Complexity",
    "Features",
    "PreactBlock",
    "StagedModel",
    "ZooModel",
    "aliases_of",
    "complexity_table",
    "count_flops",
    "count_macs",
    "count_parameters",
    "create_model",
    "extract_state_dict",
    "list_models",
    "load_checkpoint",
    "measure",
    "register_model",
]
