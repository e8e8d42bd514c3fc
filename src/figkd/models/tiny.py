"""``tiny_cnn``: a millisecond-scale conv net for the built-in 8x8 one-channel digits demo.

conv3x3-BN-ReLU stem at ``width`` channels, then two stride-2 conv3x3-BN-ReLU
stages (2x and 4x ``width``), global pooling and a linear layer.  The demo uses
``width=64`` as teacher and ``width=8`` as student.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from figkd.models.base import PreactBlock, StagedModel, conv_bn, init_weights
from figkd.models.registry import register_model


class ConvBNReLU(PreactBlock):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def preact(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class TinyCNN(StagedModel):
    native_input_size = 8

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.stem_channels = width
        self.stage_channels = [2 * width, 4 * width]
        self.embedding_dim = 4 * width
        self.stem = conv_bn(in_channels, width, 3)
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNReLU(cin, cout, 2))
            for cin, cout in ((width, 2 * width), (2 * width, 4 * width))
        )
        self.fc = nn.Linear(self.embedding_dim, num_classes)
        init_weights(self, conv="kaiming_fan_out", linear="default")

    def _stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def _stages(self) -> list[nn.Sequential]:
        # nn.ModuleList is not generic: its items type as nn.Module
        return [cast(nn.Sequential, stage) for stage in self.stages]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.fc(embedding)


@register_model("tiny_cnn")
def tiny_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> TinyCNN:
    """Demo model; pass ``in_channels=1`` for the digits."""
    return TinyCNN(num_classes=num_classes, in_channels=in_channels, width=width)

