"""ResNet50 for CIFAR (RepDistiller / mdistiller ``resnetv2.ResNet50``).

The ImageNet bottleneck network (3, 4, 6, 3 blocks, expansion 4, stride on the
3x3 conv) with a 3x3 stride-1 stem and no max-pool, so 32x32 inputs keep 32,
16, 8 and 4 px grids.  Kaiming fan-out init, no zero-init of residual BNs.
The ImageNet model is ``resnet50_imagenet``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import PreactBlock, StagedModel, init_weights
from figkd.models.registry import register_model

EXPANSION = 4


class Bottleneck(PreactBlock):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1-BN + shortcut, then ReLU."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * EXPANSION
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)


class CifarResNetBottleneck(StagedModel):
    # the stages, registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 4, 6, 3),
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        planes = (64, 128, 256, 512)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = 64
        self.stage_channels = [p * EXPANSION for p in planes]
        self.embedding_dim = self.stage_channels[-1]
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (p, n, stride) in enumerate(zip(planes, depths, (1, 2, 2, 2)), start=1):
            blocks = [Bottleneck(cin if j == 0 else p * EXPANSION, p, stride if j == 0 else 1)
                      for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = p * EXPANSION
        self.linear = nn.Linear(self.embedding_dim, num_classes)
        init_weights(self, conv="kaiming_fan_out", linear="default")

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.linear(embedding)


@register_model("ResNet50", aliases=("ResNet-50", "resnet50_cifar"))
def resnet50_cifar(num_classes: int = 100, in_channels: int = 3) -> CifarResNetBottleneck:
    """The CIFAR/TinyImageNet teacher (no max-pool, 3x3 stem)."""
    return CifarResNetBottleneck(num_classes=num_classes, in_channels=in_channels)
