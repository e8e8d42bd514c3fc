"""ShuffleNet V2 1x (Ma et al. 2018), CIFAR variant as in RepDistiller / mdistiller.

A 1x1 stem (3 -> 24, no stride, no max-pool); each stage is a two-branch
DownBlock (stride 2) then 3/7/3 basic units (widths 116/232/464); head 1x1
conv 464 -> 1024 - BN - ReLU, global pooling.  A basic unit splits channels
50/50, transforms one half (1x1-BN-ReLU, 3x3 dw-BN, 1x1-BN-ReLU), concatenates
and shuffles (g = 2).  Its ``preact`` is the unshuffled concatenation before
the last ReLU, as in the public code.  Default PyTorch init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import PreactBlock, StagedModel, channel_shuffle
from figkd.models.registry import register_model

STEM_CHANNELS = 24


def _dw(c: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)


def _pw(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class BasicUnit(PreactBlock):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = _pw(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _dw(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _pw(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def preact(self, x: Tensor) -> Tensor:
        keep, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        return torch.cat([keep, out], 1)

    def activate(self, pre: Tensor) -> Tensor:
        # the kept half is already a ReLU output, so ReLU on the whole concat
        # equals the public code's ReLU on the transformed half only
        return channel_shuffle(F.relu(pre), 2)


class DownBlock(nn.Module):
    """Left: dw3x3/s2-BN, 1x1-BN-ReLU; right: 1x1-BN-ReLU, dw3x3/s2-BN, 1x1-BN-ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = _dw(cin, 2)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = _pw(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _pw(cin, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _dw(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _pw(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(StagedModel):
    # the stages, registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, ...] = (116, 232, 464),
        depths: tuple[int, ...] = (3, 7, 3),
        head_channels: int = 1024,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = STEM_CHANNELS
        self.stage_channels = list(widths)
        self.embedding_dim = head_channels
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        cin = STEM_CHANNELS
        for i, (cout, n) in enumerate(zip(widths, depths), start=1):
            blocks = [DownBlock(cin, cout), *(BasicUnit(cout) for _ in range(n))]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.conv2 = nn.Conv2d(cin, head_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.linear = nn.Linear(head_channels, num_classes)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def _head_map(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(x)))  # the 1x1 conv-BN-ReLU head

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.linear(embedding)


@register_model("ShuffleV2", aliases=("ShuffleNet-V2", "ShuffleNetV2", "shufflenetv2"))
def shufflev2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2, 1x width (RepDistiller's ``ShuffleV2``)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
