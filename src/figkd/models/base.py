"""What every zoo model shares: the features contract, pre-activation blocks, init schemes.

Feature-based distillers, t-SNE plots and checkpoint checks all talk to models
through :class:`ZooModel`, so every family exposes the same attributes and the
same ``forward_features`` dictionary (mdistiller's ``feats`` / ``preact_feats``
/ ``pooled_feat``, split into named entries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Literal, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``(preact, activate)`` of a block: its output before the last activation, and that activation
PreactSplit = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


class Features(TypedDict):
    """The dictionary returned by ``forward_features``."""

    stem: Tensor
    stages: list[Tensor]
    preact_stages: list[Tensor]
    #: the map global average pooling turns into ``embedding``: the last stage, or the output
    #: of a head conv / BN-ReLU after it (class activation maps are computed on it)
    pooled_map: Tensor
    embedding: Tensor
    logits: Tensor


class ZooModel(nn.Module):
    """Base class: ``forward`` gives logits only, ``forward_features`` gives everything.

    Subclasses set ``num_classes``, ``embedding_dim`` (the FC input size),
    ``stem_channels`` and ``stage_channels`` (channels of each ``"stages"``
    entry).  ``native_input_size`` is the resolution the family was designed
    for; ``arch`` is the registry name, filled in by ``create_model``.
    """

    native_input_size: ClassVar[int] = 32
    arch: str = ""

    num_classes: int
    in_channels: int
    embedding_dim: int
    stem_channels: int
    stage_channels: list[int]

    def forward_features(self, x: Tensor) -> Features:
        raise NotImplementedError

    def classifier_name(self) -> str:
        """Qualified name of the final linear layer (its weight's rows are the classes)."""
        linears = [n for n, m in self.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError(f"{type(self).__name__} has no nn.Linear classifier")
        return linears[-1]


class PreactBlock(nn.Module):
    """A block computing ``activate(preact(x))``; stages report the tensor before ``activate``.

    Splitting the two lets ``forward_features`` return mdistiller's
    ``preact_feats`` without running any layer twice.
    """

    def preact(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def activate(self, pre: Tensor) -> Tensor:
        return F.relu(pre)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.preact(x))


def zoo_model(model: nn.Module) -> ZooModel:
    """``model`` typed as a zoo model, to call ``forward_features`` / ``classifier_name``.

    Only for the type checker (``nn.Module.__getattr__`` types any other attribute as
    ``Tensor | Module``); nothing is checked, so any module with those methods works.
    """
    return cast(ZooModel, model)


class StagedModel(ZooModel):
    """A model that is ``stem -> stages -> head (pooling) -> classifier``.

    Subclasses implement the four hooks; ``forward`` and ``forward_features``
    follow from them, so the two can never disagree.
    """

    def _stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _stages(self) -> Sequence[Iterable[nn.Module]]:
        """The blocks of each stage, in order (views into the registered modules).

        Each stage only needs iterating (an ``nn.Sequential``, a list of blocks, ...).
        """
        raise NotImplementedError

    def _head_map(self, x: Tensor) -> Tensor:
        """Last stage output -> the map that is pooled (identity unless the head has layers)."""
        return x

    def _head(self, x: Tensor) -> Tensor:
        """Last stage output -> pooled, flattened embedding."""
        return pool_flatten(self._head_map(x))

    def _classify(self, embedding: Tensor) -> Tensor:
        raise NotImplementedError

    def _split_preact(self, block: nn.Module) -> PreactSplit | None:
        """(preact, activate) functions of ``block``, or None if it has no activation at the end.

        Blocks without one (e.g. MobileNetV2's linear bottleneck) report their
        output as the pre-activation.  Override for foreign block types.
        """
        if isinstance(block, PreactBlock):
            return block.preact, block.activate
        return None

    def _run_stage(self, blocks: Iterable[nn.Module], x: Tensor) -> tuple[Tensor, Tensor]:
        """Run ``blocks`` in order; return (output, pre-activation of the last block)."""
        *head, last = blocks
        for block in head:
            x = block(x)
        split = self._split_preact(last)
        if split is None:
            out = last(x)
            return out, out
        preact, activate = split
        pre = preact(x)
        return activate(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        x = self._stem(x)
        for blocks in self._stages():
            for block in blocks:
                x = block(x)
        return self._classify(self._head(x))

    def forward_features(self, x: Tensor) -> Features:
        stem = self._stem(x)
        h = stem
        stages: list[Tensor] = []
        preacts: list[Tensor] = []
        for blocks in self._stages():
            h, pre = self._run_stage(blocks, h)
            stages.append(h)
            preacts.append(pre)
        pooled_map = self._head_map(h)
        embedding = pool_flatten(pooled_map)
        return Features(
            stem=stem,
            stages=stages,
            preact_stages=preacts,
            pooled_map=pooled_map,
            embedding=embedding,
            logits=self._classify(embedding),
        )


def pool_flatten(x: Tensor) -> Tensor:
    """Global average pooling to (B, C): the adaptive stand-in for the zoo's fixed AvgPool."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


LinearInit = Literal["default", "zero_bias", "normal"]


def init_weights(
    model: nn.Module, *, conv: Literal["kaiming_fan_out", "default"], linear: LinearInit
) -> None:
    """Apply one of the zoo's init schemes.

    ``kaiming_fan_out`` is N(0, 2 / (k*k*out)), which is both torchvision's
    ``kaiming_normal_(mode="fan_out")`` and the WRN/VGG/MobileNetV2 formula;
    conv biases are zeroed.  BN gets weight 1, bias 0.  ``linear``: keep
    PyTorch's default, zero only the bias (WRN), or N(0, 0.01) with zero bias
    (VGG, MobileNetV2).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and conv == "kaiming_fan_out":
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """conv (no bias) -> BN [-> ReLU], 'same' padding; keys .0 (conv), .1 (BN)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: (B, g*c, H, W) -> interleave the g groups.

    The reshape copies into NCHW order; a channels_last input gets a
    channels_last output back, so the next conv sees the format it was given.
    """
    b, c, h, w = x.shape
    out = x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    if groups > 1 and x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out
