"""ImageNet-style MobileNetV1 and MobileNetV2 for the 224x224 FGVR setting.

MobileNetV1 (Howard et al. 2017, width 1.0) is not in torchvision; this is the
version of the KD codebases (CRD/ReviewKD/mdistiller ImageNet students): a
3x3/s2 conv-BN-ReLU stem, 13 depthwise-separable blocks (dw3x3-BN-ReLU,
1x1-BN-ReLU), global pooling and one linear layer, default PyTorch init.  Its
parameters sit in a ``model`` sequential as there, so their checkpoints load.
Stages end where the KD code taps features: blocks 1-3 (128 ch, 56 px), 4-5
(256, 28), 6-11 (512, 14), 12-13 (1024, 7); pre-activation = before the last ReLU.

MobileNetV2 is torchvision's (width 1.0, ReLU6, dropout 0.2), subclassed so its
weights load; stages group ``features`` at each resolution: 24, 32, 96, 320 ch.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn
from torchvision.models import mobilenetv2 as tv

from figkd.models.base import PreactBlock, StagedModel, conv_bn, init_weights
from figkd.models.registry import register_model

#: (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks
V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
#: [start, stop) indices into ``model`` of each reported stage (index 0 is the stem)
V1_STAGES: tuple[tuple[int, int], ...] = ((1, 4), (4, 6), (6, 12), (12, 14))


class DepthwiseSeparable(nn.Sequential, PreactBlock):
    """dw3x3-BN-ReLU-1x1-BN-ReLU; ``preact`` stops before the last ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(*conv_bn(cin, cin, 3, stride, groups=cin), *conv_bn(cin, cout, 1))

    def preact(self, x: Tensor) -> Tensor:
        for layer in list(self)[:-1]:
            x = layer(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return PreactBlock.forward(self, x)


class MobileNetV1(StagedModel):
    native_input_size = 224

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = 32
        layers: list[nn.Module] = [conv_bn(in_channels, 32, 3, 2)]
        cin = 32
        for cout, stride in V1_BLOCKS:
            layers.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*layers)
        self.stage_channels = [V1_BLOCKS[stop - 2][0] for _, stop in V1_STAGES]
        self.embedding_dim = cin
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, conv="default", linear="default")

    def _stem(self, x: Tensor) -> Tensor:
        return self.model[0](x)

    def _stages(self) -> list[nn.Sequential]:
        return [self.model[start:stop] for start, stop in V1_STAGES]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.fc(embedding)


#: [start, stop) indices into torchvision's ``features`` of each stage (0 = stem, 18 = head conv)
V2_STAGES: tuple[tuple[int, int], ...] = ((1, 4), (4, 7), (7, 14), (14, 18))


class MobileNetV2ImageNet(StagedModel, tv.MobileNetV2):
    native_input_size = 224

    # the torchvision.models.MobileNetV2 attributes used here (torchvision is untyped)
    features: nn.Sequential
    classifier: nn.Sequential
    last_channel: int

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        tv.MobileNetV2.__init__(self, num_classes=num_classes)
        # features[0] is a Conv2dNormActivation (an nn.Sequential) led by the stem conv;
        # features[1:] are InvertedResiduals, which record their out_channels
        stem = cast(nn.Sequential, self.features[0])
        if in_channels != 3:
            old = cast(nn.Conv2d, stem[0])
            conv = nn.Conv2d(in_channels, old.out_channels, 3, 2, 1, bias=False)
            stem[0] = conv
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = cast(nn.Conv2d, stem[0]).out_channels
        self.stage_channels = [
            cast(int, self.features[stop - 1].out_channels) for _, stop in V2_STAGES
        ]
        self.embedding_dim = self.last_channel

    def _stem(self, x: Tensor) -> Tensor:
        return self.features[0](x)

    def _stages(self) -> list[nn.Sequential]:
        return [self.features[start:stop] for start, stop in V2_STAGES]

    def _head_map(self, x: Tensor) -> Tensor:
        return self.features[-1](x)  # the 1x1 conv-BN-ReLU6 head

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.classifier(embedding)


@register_model("mobilenetv1_imagenet", aliases=("MobileNetV1", "MobileNet-V1"))
def mobilenetv1_imagenet(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV1:
    """MobileNetV1 1.0x for 224 px (the paper's FGVR teacher); no CIFAR variant exists."""
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels)


@register_model("mobilenetv2_imagenet", aliases=("MobileNetV2-ImageNet",))
def mobilenetv2_imagenet(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV2ImageNet:
    """torchvision's MobileNetV2 1.0x for 224 px (the CIFAR student is ``MobileNetV2``)."""
    return MobileNetV2ImageNet(num_classes=num_classes, in_channels=in_channels)

