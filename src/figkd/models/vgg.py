"""CIFAR VGG with batch norm (Simonyan & Zisserman 2015), as in RepDistiller / mdistiller.

Five conv blocks (conv3x3 *with* bias - BN - ReLU); the last ReLU of every block
is applied in ``forward`` so the block outputs are the pre-activation features.
Max-pools follow blocks 0-2; the pool after block 3 runs only for inputs of 64
px and more (the public code runs it for exactly 64 px, so blocks 3 and 4 share
a 4x4 grid at both 32 and 64 px).  Global average pooling, then one linear layer.
Names ``vgg8`` ... ``vgg19`` are the batch-norm models (``vgg13`` = vgg13_bn).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import Features, ZooModel, init_weights, pool_flatten
from figkd.models.registry import MODELS

#: input side from which the 4th max-pool runs (public code: ``if h == 64``)
POOL3_MIN_INPUT = 64


def _make_block(widths: Sequence[int], cin: int) -> nn.Sequential:
    """conv-BN-ReLU per width, without the final ReLU."""
    layers: list[nn.Module] = []
    for cout in widths:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """``cfg`` lists the conv widths of each of the five blocks."""

    # the blocks, registered with add_module in __init__ (block0 is the stem)
    block0: nn.Sequential
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential

    def __init__(
        self, cfg: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = cfg[0][-1]
        self.stage_channels = [widths[-1] for widths in cfg[1:]]
        self.embedding_dim = cfg[-1][-1]
        cin = in_channels
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _make_block(widths, cin))
            cin = widths[-1]
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        init_weights(self, conv="kaiming_fan_out", linear="normal")

    def _blocks(self) -> list[nn.Sequential]:
        return [self.block1, self.block2, self.block3, self.block4]

    @staticmethod
    def _pools_before(x: Tensor) -> tuple[bool, ...]:
        """Whether a 2x2 max-pool precedes blocks 1-4 for input ``x``."""
        return (True, True, True, x.shape[-2] >= POOL3_MIN_INPUT)

    def forward(self, x: Tensor) -> Tensor:
        pools = self._pools_before(x)
        x = F.relu(self.block0(x))
        for block, pool in zip(self._blocks(), pools):
            x = F.relu(block(F.max_pool2d(x, 2) if pool else x))
        return self.classifier(pool_flatten(x))

    def forward_features(self, x: Tensor) -> Features:
        pools = self._pools_before(x)
        stem = F.relu(self.block0(x))
        h = stem
        stages, preacts = [], []
        for block, pool in zip(self._blocks(), pools):
            pre = block(F.max_pool2d(h, 2) if pool else h)
            h = F.relu(pre)
            preacts.append(pre)
            stages.append(h)
        embedding = pool_flatten(h)
        return Features(
            stem=stem,
            stages=stages,
            preact_stages=preacts,
            pooled_map=h,
            embedding=embedding,
            logits=self.classifier(embedding),
        )


CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)
    ),
}

for _name, _cfg in CONFIGS.items():
    _depth = _name.removeprefix("vgg")
    MODELS.add(_name, partial(VGG, _cfg), aliases=(f"VGG{_depth}", f"VGG-{_depth}", f"{_name}_bn"))
