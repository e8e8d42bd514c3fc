"""ShuffleNet V1 (Zhang et al. 2018), g = 3, CIFAR variant as in RepDistiller / mdistiller.

A 1x1 stem (3 -> 24, no stride, no max-pool), three stages of 4/8/4 bottlenecks
with widths 240/480/960, the first block of each stage strided.  Bottleneck:
1x1 group conv (g = 1 when its input is the 24-channel stem) - BN - ReLU -
channel shuffle - 3x3 depthwise (stride) - BN - ReLU - 1x1 group conv - BN;
a strided block concatenates AvgPool3x3/s2 of its input (so its conv path makes
out - in channels), a stride-1 block adds the input; ReLU last, ``preact``
before it.  Default PyTorch init, as in the public code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import PreactBlock, StagedModel, channel_shuffle
from figkd.models.registry import register_model

STEM_CHANNELS = 24


class ShuffleV1Block(PreactBlock):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        self.first_groups = 1 if cin == STEM_CHANNELS else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        return out + x


class ShuffleNetV1(StagedModel):
    # the stages, registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, ...] = (240, 480, 960),
        depths: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = STEM_CHANNELS
        self.stage_channels = list(widths)
        self.embedding_dim = widths[-1]
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        cin = STEM_CHANNELS
        for i, (cout, n) in enumerate(zip(widths, depths), start=1):
            # the strided first block's conv path makes only the channels the concat lacks
            blocks = [ShuffleV1Block(cin, cout - cin, 2, groups)]
            blocks += [ShuffleV1Block(cout, cout, 1, groups) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.linear = nn.Linear(self.embedding_dim, num_classes)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.linear(embedding)


@register_model("ShuffleV1", aliases=("ShuffleNet-V1", "ShuffleNetV1", "shufflenetv1"))
def shufflev1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNet V1, g = 3, 1x width (RepDistiller's ``ShuffleV1``)."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)
