"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-d-k, as in RepDistiller / mdistiller.

Pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut), a bare 3x3
stem and a BN-ReLU head; dropout 0.  Because the blocks are pre-activation, a
stage's output is the raw residual sum (the next stage's input), and its
"pre-activation" feature is that sum after the *next* block's ``bn1`` (the last
stage: after the head BN) -- mdistiller's ``preact_feats``.  We take those
from the BNs the forward pass runs anyway, so ``forward_features`` updates no
BN statistics twice.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models.base import Features, ZooModel, init_weights, pool_flatten
from figkd.models.registry import MODELS


class WideBasicBlock(nn.Module):
    """When in != out, the pre-activated input feeds both the conv path and the 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def from_bn1(self, x: Tensor, bn1_x: Tensor) -> Tensor:
        """The block given its raw input and ``self.bn1(x)`` (so callers can keep the latter)."""
        act = F.relu(bn1_x)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.from_bn1(x, self.bn1(x))


class NetworkBlock(nn.Module):
    """One stage; the ``layer`` attribute keeps the public zoo's checkpoint keys."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
              for i in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """WRN-``depth``-``widen_factor``; depth = 6n + 4."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_channels = 16
        self.stage_channels = widths
        self.embedding_dim = widths[-1]

        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, 16, widths[0], 1)
        self.block2 = NetworkBlock(n, widths[0], widths[1], 2)
        self.block3 = NetworkBlock(n, widths[1], widths[2], 2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self, conv="kaiming_fan_out", linear="zero_bias")

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(pool_flatten(F.relu(self.bn1(x))))

    def forward_features(self, x: Tensor) -> Features:
        stem = self.conv1(x)
        h = self.block1(stem)
        stages = [h]
        preacts = []
        for stage in (self.block2, self.block3):
            first_block, *rest = stage.layer
            first = cast(WideBasicBlock, first_block)  # NetworkBlock holds only these
            pre = first.bn1(h)
            preacts.append(pre)
            h = first.from_bn1(h, pre)
            for block in rest:
                h = block(h)
            stages.append(h)
        pre = self.bn1(h)
        preacts.append(pre)
        pooled_map = F.relu(pre)  # the head BN-ReLU
        embedding = pool_flatten(pooled_map)
        return Features(
            stem=stem,
            stages=stages,
            preact_stages=preacts,
            pooled_map=pooled_map,
            embedding=embedding,
            logits=self.fc(embedding),
        )


# name -> (depth, widen factor)
CONFIGS: dict[str, tuple[int, int]] = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}

for _name, (_depth, _k) in CONFIGS.items():
    _aliases = (f"WRN-{_depth}-{_k}", f"wrn-{_depth}-{_k}", f"WRN_{_depth}_{_k}")
    MODELS.add(_name, partial(WideResNet, _depth, _k), aliases=_aliases)
