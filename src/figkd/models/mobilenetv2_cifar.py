"""MobileNetV2 for CIFAR as the KD literature uses it (RepDistiller's ``mobile_half``).

Expansion T = 6, width multiplier 0.5, plain ReLU (not ReLU6), a stride-2 3x3
stem (so 32x32 inputs run on a 16x16 grid), the 1x1 expansion conv kept even
when t = 1, no dropout, and a 1280-wide head (the multiplier never shrinks it).
Stages group the seven inverted-residual settings as the public code's features
do: (0, 1), (2,), (3, 4), (5, 6).  The blocks end in a linear projection, so the
pre-activation features equal the stage outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn

from figkd.models.base import StagedModel, conv_bn, init_weights
from figkd.models.registry import register_model

#: (expansion t, channels c at width 1, repeats n, stride s); t = 1 for the first row
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
#: which settings (indices into ``blocks``) form each reported stage
STAGE_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1), (2,), (3, 4), (5, 6))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN; residual iff shape kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *conv_bn(cin, hidden, 1),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *conv_bn(hidden, cout, 1, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(StagedModel):
    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expansion: int = 6,
        settings: Sequence[tuple[int, int, int, int]] = SETTINGS,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        cin = int(32 * width_mult)
        self.stem_channels = cin
        self.conv1 = conv_bn(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        widths = []
        for t, c, n, s in settings:
            cout = int(c * width_mult)
            t = 1 if t == 1 else expansion  # the first setting never expands
            layers = [InvertedResidual(cin if i == 0 else cout, cout, s if i == 0 else 1, t)
                      for i in range(n)]
            self.blocks.append(nn.Sequential(*layers))
            widths.append(cout)
            cin = cout
        self.stage_channels = [widths[group[-1]] for group in STAGE_GROUPS]
        self.embedding_dim = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn(cin, self.embedding_dim, 1)
        self.classifier = nn.Sequential(nn.Linear(self.embedding_dim, num_classes))
        init_weights(self, conv="kaiming_fan_out", linear="normal")

    def _stem(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def _stages(self) -> list[list[nn.Module]]:
        # nn.ModuleList is not generic: its items (nn.Sequential here) type as nn.Module
        return [[blk for i in group for blk in cast(nn.Sequential, self.blocks[i])]
                for group in STAGE_GROUPS]

    def _head_map(self, x: Tensor) -> Tensor:
        return self.conv2(x)  # the 1x1 conv-BN-ReLU head

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.classifier(embedding)


@register_model("MobileNetV2", aliases=("MobileNet-V2", "mobile_half"))
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2Cifar:
    """The CIFAR/TinyImageNet student (width 0.5); ImageNet-style is ``mobilenetv2_imagenet``."""
    return MobileNetV2Cifar(num_classes=num_classes, in_channels=in_channels)
