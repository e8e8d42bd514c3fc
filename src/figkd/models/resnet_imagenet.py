"""ImageNet-style ResNet18/34/50 (torchvision's architectures) for the 224x224 FGVR setting.

The classes subclass :class:`torchvision.models.ResNet`, so parameter names are
torchvision's and its ImageNet weights load directly (see
``load_checkpoint(..., exclude_classifier=True)`` to fine-tune on other
classes).  Stages are ``layer1`` ... ``layer4``; a stage's pre-activation is
its last block's residual sum before the final ReLU.  ``stem`` is the output
of conv-BN-ReLU-maxpool, the tensor fed to ``layer1``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv

from figkd.models.base import PreactSplit, StagedModel
from figkd.models.registry import MODELS


def _basic_preact(b: tv.BasicBlock, x: Tensor) -> Tensor:
    out = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
    return out + (x if b.downsample is None else b.downsample(x))


def _bottleneck_preact(b: tv.Bottleneck, x: Tensor) -> Tensor:
    out = b.relu(b.bn1(b.conv1(x)))
    out = b.relu(b.bn2(b.conv2(out)))
    out = b.bn3(b.conv3(out))
    return out + (x if b.downsample is None else b.downsample(x))


#: torchvision block type -> its forward without the final ReLU
PREACT: dict[type[nn.Module], Callable[..., Tensor]] = {
    tv.BasicBlock: _basic_preact,
    tv.Bottleneck: _bottleneck_preact,
}


class ResNetImageNet(StagedModel, tv.ResNet):
    native_input_size = 224

    # the torchvision.models.ResNet modules used here (torchvision is untyped)
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu: nn.ReLU
    maxpool: nn.MaxPool2d
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential
    fc: nn.Linear

    def __init__(
        self,
        block: type[tv.BasicBlock | tv.Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        tv.ResNet.__init__(self, block, layers, num_classes=num_classes)
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = 64
        self.stage_channels = [64 * block.expansion * 2**i for i in range(4)]
        self.embedding_dim = self.stage_channels[-1]

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.fc(embedding)

    def _split_preact(self, block: nn.Module) -> PreactSplit:
        # torchvision blocks end in ReLU; PREACT recomputes them without it
        return partial(PREACT[type(block)], block), F.relu


# name -> (block, blocks per stage)
CONFIGS: dict[str, tuple[type[tv.BasicBlock | tv.Bottleneck], list[int]]] = {
    "resnet18_imagenet": (tv.BasicBlock, [2, 2, 2, 2]),
    "resnet34_imagenet": (tv.BasicBlock, [3, 4, 6, 3]),
    "resnet50_imagenet": (tv.Bottleneck, [3, 4, 6, 3]),
}


def _factory(block: type, layers: list[int]) -> Callable[..., ResNetImageNet]:
    def build(num_classes: int = 1000, in_channels: int = 3) -> ResNetImageNet:
        return ResNetImageNet(block, layers, num_classes=num_classes, in_channels=in_channels)

    return build


for _name, (_block, _layers) in CONFIGS.items():
    _depth = _name.split("_")[0].removeprefix("resnet")
    MODELS.add(_name, _factory(_block, _layers), aliases=(f"ResNet{_depth}-ImageNet",))
