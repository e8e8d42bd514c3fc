"""CIFAR ResNets (He et al. 2016, section 4.2) as in RepDistiller / mdistiller.

Three stages of post-activation BasicBlocks on a 3x3 stem, no max-pool; depth
6n + 2.  The ``x4`` variants widen every stage four times (stem 32).  Module
names follow the public zoo so its released teacher checkpoints load as-is.
The fixed ``AvgPool(8)`` of the public code is replaced by global average
pooling, identical at 32x32 and usable at any input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import PreactBlock, StagedModel, init_weights
from figkd.models.registry import MODELS


class BasicBlock(PreactBlock):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU (``preact`` is the sum)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class CifarResNet(StagedModel):
    """``widths`` = (stem, stage1, stage2, stage3); ``depth`` = 6n + 2."""

    # the stages, registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        stem, *stage_widths = widths
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = stem
        self.stage_channels = list(stage_widths)
        self.embedding_dim = stage_widths[-1]

        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        for i, (cout, stride) in enumerate(zip(stage_widths, (1, 2, 2)), start=1):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                      for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(self.embedding_dim, num_classes)
        init_weights(self, conv="kaiming_fan_out", linear="default")

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.fc(embedding)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

# name -> (depth, widths, paper / other spellings)
CONFIGS: dict[str, tuple[int, tuple[int, ...], tuple[str, ...]]] = {
    "resnet8": (8, _NARROW, ("ResNet8", "ResNet-8")),
    "resnet14": (14, _NARROW, ("ResNet14", "ResNet-14")),
    "resnet20": (20, _NARROW, ("ResNet20", "ResNet-20")),
    "resnet32": (32, _NARROW, ("ResNet32", "ResNet-32")),
    "resnet44": (44, _NARROW, ("ResNet44", "ResNet-44")),
    "resnet56": (56, _NARROW, ("ResNet56", "ResNet-56")),
    "resnet110": (110, _NARROW, ("ResNet110", "ResNet-110")),
    "resnet8x4": (8, _WIDE, ("ResNet8x4", "ResNet-8x4")),
    "resnet32x4": (32, _WIDE, ("ResNet32x4", "ResNet-32x4")),
}

for _name, (_depth, _widths, _aliases) in CONFIGS.items():
    MODELS.add(_name, partial(CifarResNet, _depth, _widths), aliases=_aliases)
