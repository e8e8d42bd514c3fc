"""Parameter and FLOP counts, measured with PyTorch's own ``FlopCounterMode``.

The KD literature reports "FLOPs" as multiply-accumulates (MACs) of the conv
and linear layers.  ``FlopCounterMode`` counts a multiply-add as 2 FLOPs and
ignores batch norm, activations, pooling and additions, so MACs = FLOPs / 2.
Parameters are the learnable tensors (BN running statistics excluded), which
is what the zoo's published counts include.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from figkd.models.base import ZooModel
from figkd.models.registry import create_model

#: FiGKD paper, Table 15 (TinyImageNet: 200 classes, 64x64): name -> (params M, FLOPs M)
PAPER_TABLE15: dict[str, tuple[float, float]] = {
    "resnet110": (1.74, 1029.58),
    "resnet32": (0.48, 281.56),
    "resnet32x4": (7.46, 4352.82),
    "resnet8x4": (1.26, 714.26),
    "wrn_40_2": (2.27, 1322.61),
    "wrn_16_2": (0.72, 409.30),
    "wrn_40_1": (0.58, 339.36),
    "vgg13": (9.51, 917.16),
    "vgg8": (4.02, 273.43),
    "ShuffleV1": (1.05, 42.88),
    "ResNet50": (23.91, 5246.70),
    "MobileNetV2": (0.94, 29.23),
    "ShuffleV2": (1.46, 186.82),
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _input_shape(model: ZooModel, input_size: int | tuple[int, int] | None) -> tuple[int, ...]:
    size = model.native_input_size if input_size is None else input_size
    h, w = (size, size) if isinstance(size, int) else size
    return (1, model.in_channels, h, w)


def count_flops(model: ZooModel, input_size: int | tuple[int, int] | None = None) -> int:
    """FLOPs of one forward pass on one image (``input_size`` defaults to the native size).

    The pass really runs on the model's device; a model on the ``meta`` device
    is counted from shapes alone, in milliseconds.
    """
    # each module's own flag: ``model.train(flag)`` would also flip a BN kept in eval mode
    modes = {module: module.training for module in model.modules()}
    model.eval()  # batch-1 BN statistics would fail on 1x1 maps in train mode
    try:
        param = next(model.parameters())
        x = torch.zeros(_input_shape(model, input_size), dtype=param.dtype, device=param.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for module, training in modes.items():
            module.training = training
    return int(counter.get_total_flops())


def count_macs(model: ZooModel, input_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass: the "FLOPs" of KD papers."""
    return count_flops(model, input_size) // 2


@dataclass(frozen=True)
class Complexity:
    name: str
    params: int
    macs: int
    input_size: int
    num_classes: int


def measure(name: str, num_classes: int = 100, input_size: int | None = None) -> Complexity:
    """Params and MACs of a registered model, built on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    size = model.native_input_size if input_size is None else input_size
    return Complexity(model.arch, count_parameters(model), count_macs(model, size), size,
                      num_classes)


def complexity_table(rows: Iterable[Complexity], compare_paper: bool = False) -> str:
    """Markdown table of params (M) and MACs (M); optionally next to Table 15's figures."""
    header = ["model", "input", "classes", "params (M)", "MACs (M)"]
    if compare_paper:
        header += ["paper params (M)", "paper FLOPs (M)", "MACs / paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name, f"{r.input_size}x{r.input_size}", str(r.num_classes),
                 f"{r.params / 1e6:.2f}", f"{r.macs / 1e6:.2f}"]
        if compare_paper:
            paper = PAPER_TABLE15.get(r.name)
            cells += (["", "", ""] if paper is None else
                      [f"{paper[0]:.2f}", f"{paper[1]:.2f}", f"{r.macs / 1e6 / paper[1]:.3f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
