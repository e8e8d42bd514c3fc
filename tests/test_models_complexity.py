"""Parameter counts against the public zoo, and params / FLOPs against the paper's Table 15.

Our FLOPs are MACs of conv and linear layers from ``FlopCounterMode`` (FLOPs / 2).
Table 15 (200 classes, 64x64) agrees within 1 % for five of its 13 models.  For
seven more the gap is fully explained by what the paper's counter adds: 4
operations per batch-norm output element (thop's rule: 2 per element, doubled
for the affine part), plus, for WRN, the three BNs that mdistiller's forward
re-runs to build its pre-activation features.  ``test_table15_gap_is_bn_counting``
reconstructs those figures to 0.05 %.  ShuffleV1's 42.88 M is not a 64-px count
of the published architecture under any rule (docs/models.md).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from figkd.models import (
    PAPER_TABLE15,
    ZooModel,
    count_flops,
    count_macs,
    count_parameters,
    create_model,
)

# RepDistiller / mdistiller constructors, C = 100 (../shared/reference, section 3)
REFERENCE_PARAMS_100 = {
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "MobileNetV2": 812_836,
    "ResNet50": 23_705_252,
}
REFERENCE_PARAMS_200 = {
    "resnet8x4": 1_259_240,
    "resnet32x4": 7_459_560,
    "resnet20": 284_824,
    "resnet32": 479_256,
    "resnet56": 868_120,
    "resnet110": 1_743_064,
    "wrn_16_2": 716_184,
    "wrn_40_1": 576_280,
    "wrn_40_2": 2_268_056,
    "vgg8": 4_016_328,
    "vgg13": 9_513_480,
    "ShuffleV1": 1_045_358,
    "ShuffleV2": 1_458_028,
    "MobileNetV2": 940_936,
    "ResNet50": 23_910_152,
}
# torchvision's documented counts (1000 classes); MobileNetV1 1.0x from the MobileNet paper (4.2 M)
IMAGENET_PARAMS_1000 = {
    "resnet18_imagenet": 11_689_512,
    "resnet34_imagenet": 21_797_672,
    "resnet50_imagenet": 25_557_032,
    "mobilenetv2_imagenet": 3_504_872,
    "mobilenetv1_imagenet": 4_231_976,
}
# torchvision's documented GFLOPS (its "FLOPs" are MACs) at 224 px, 1000 classes
IMAGENET_GMACS_224 = {
    "resnet18_imagenet": 1.81,
    "resnet34_imagenet": 3.66,
    "resnet50_imagenet": 4.09,
    "mobilenetv2_imagenet": 0.30,
}

# Table 15 figures our MACs match within 1 %
TABLE15_WITHIN_1PCT = {"resnet32x4", "resnet8x4", "wrn_40_2", "vgg13", "vgg8"}
# ... and why the others do not (ratios = our MACs / paper figure)
TABLE15_EXPLAINED = {
    "resnet110": "paper adds 4 ops per BN output element (ours 0.984)",
    "resnet32": "paper adds 4 ops per BN output element (ours 0.982)",
    "wrn_16_2": "BN ops + mdistiller's re-run preact BNs (ours 0.988)",
    "wrn_40_1": "BN ops + mdistiller's re-run preact BNs (ours 0.982)",
    "ResNet50": "paper adds 4 ops per BN output element (ours 0.9895)",
    "MobileNetV2": "BN-heavy depthwise net: BN ops are 12 % of the paper's figure (ours 0.884)",
    "ShuffleV2": "BN ops are 5 % of the paper's figure (ours 0.952)",
    "ShuffleV1": "not a 64-px count: ours is 3.6x the paper's figure; 32 px is within 10 %",
}

@functools.cache
def model_for(name: str, num_classes: int) -> ZooModel:
    """Built on the meta device: counting needs shapes only, so nothing is computed."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes)


@functools.cache
def macs_of(name: str, num_classes: int, size: int) -> int:
    return count_macs(model_for(name, num_classes), size)


@pytest.mark.parametrize(("name", "expected"), sorted(REFERENCE_PARAMS_100.items()))
def test_parameter_counts_equal_the_public_zoo_at_100_classes(name: str, expected: int) -> None:
    assert count_parameters(model_for(name, 100)) == expected


@pytest.mark.parametrize(("name", "expected"), sorted(REFERENCE_PARAMS_200.items()))
def test_parameter_counts_equal_the_public_zoo_at_200_classes(name: str, expected: int) -> None:
    model = model_for(name, 200)
    assert count_parameters(model) == expected
    # the reference's rule: count(C) = count(100) + (C - 100) * (embedding_dim + 1)
    assert expected == REFERENCE_PARAMS_100[name] + 100 * (model.embedding_dim + 1)


@pytest.mark.parametrize(("name", "expected"), sorted(IMAGENET_PARAMS_1000.items()))
def test_imagenet_parameter_counts(name: str, expected: int) -> None:
    assert count_parameters(model_for(name, 1000)) == expected


@pytest.mark.parametrize(("name", "gmacs"), sorted(IMAGENET_GMACS_224.items()))
def test_imagenet_macs_match_torchvision_docs(name: str, gmacs: float) -> None:
    macs = macs_of(name, 1000, 224)
    assert macs / 1e9 == pytest.approx(gmacs, abs=0.005)


def test_counter_counts_multiply_adds_of_convs_and_linears_only() -> None:
    class Net(ZooModel):
        native_input_size = 8

        def __init__(self) -> None:
            super().__init__()
            self.in_channels = 3
            self.conv = nn.Conv2d(3, 4, 3, padding=1, groups=1)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.dw(self.conv(x))))
            return self.fc(x.mean((2, 3)))

    net = Net().train()
    conv, dw, fc = 8 * 8 * 4 * 3 * 9, 8 * 8 * 4 * 9, 4 * 5
    assert count_macs(net) == conv + dw + fc
    assert count_flops(net, (8, 8)) == 2 * (conv + dw + fc)
    assert net.training, "counting must restore the training mode"


def test_meta_device_count_equals_a_real_forward_count() -> None:
    real = create_model("resnet8x4", num_classes=200)
    assert count_macs(real, 64) == macs_of("resnet8x4", 200, 64)


def test_macs_scale_with_input_area() -> None:
    quadrupled = 4 * macs_of("resnet8x4", 200, 32)
    assert macs_of("resnet8x4", 200, 64) == pytest.approx(quadrupled, rel=1e-3)


@pytest.mark.parametrize("name", sorted(PAPER_TABLE15))
def test_table15_parameters(name: str) -> None:
    """All 13 parameter figures agree to the paper's precision (0.01 M)."""
    params_m = count_parameters(model_for(name, 200)) / 1e6
    assert params_m == pytest.approx(PAPER_TABLE15[name][0], abs=0.005)


@pytest.mark.parametrize("name", sorted(PAPER_TABLE15))
def test_table15_flops_within_1pct_or_explained(name: str) -> None:
    ratio = macs_of(name, 200, 64) / 1e6 / PAPER_TABLE15[name][1]
    if name in TABLE15_WITHIN_1PCT:
        assert ratio == pytest.approx(1.0, abs=0.01)
    else:
        assert name in TABLE15_EXPLAINED, f"{name}: MACs/paper = {ratio:.3f} needs an explanation"
        assert abs(ratio - 1.0) > 0.01, f"{name} now matches: move it to TABLE15_WITHIN_1PCT"
    assert TABLE15_WITHIN_1PCT | TABLE15_EXPLAINED.keys() == PAPER_TABLE15.keys()


def bn_output_elements(model: ZooModel, size: int) -> int:
    """Output elements of every BatchNorm2d call in one forward pass on one image."""
    total = 0

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.in_channels, size, size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total


def thop_style_ops(model: ZooModel, size: int) -> int:
    """Our MACs plus what thop adds: 4 ops per BN output element (2, doubled when affine).

    mdistiller's WRN forward also applies the next stage's ``bn1`` (and the head
    BN) once more to build ``preact_feats``; thop counts those calls too.
    """
    ops = macs_of(model.arch, model.num_classes, size) + 4 * bn_output_elements(model, size)
    if model.arch.startswith("wrn"):
        with torch.no_grad():
            x = torch.zeros(1, model.in_channels, size, size, device="meta")
            feats = model.eval().forward_features(x)
        ops += 4 * sum(t.numel() for t in feats["preact_stages"])
    return ops


@pytest.mark.parametrize("name", sorted(set(PAPER_TABLE15) - {"ShuffleV1"}))
def test_table15_gap_is_bn_counting(name: str) -> None:
    """The paper's FLOPs = our MACs + BN ops, to 0.05 %, for 12 of 13 models.

    This also confirms that the architectures (incl. MobileNetV2 and ShuffleV2,
    which run only with our adaptive pooling at 64 px) are the paper's.
    """
    reconstructed = thop_style_ops(model_for(name, 200), 64) / 1e6
    assert reconstructed == pytest.approx(PAPER_TABLE15[name][1], rel=5e-4)


def test_table15_shufflenetv1_is_not_a_64px_count() -> None:
    """Documented exception: 42.88 M is far below any 64-px count of the public ShuffleV1.

    At 32 px our MACs are 38.79 M (0.905 of it) and the thop-style count 42.26 M
    (0.986); no 64-px reading of the published architecture comes near.
    """
    model = model_for("ShuffleV1", 200)
    paper = PAPER_TABLE15["ShuffleV1"][1]
    assert macs_of("ShuffleV1", 200, 64) / 1e6 / paper > 3.5
    assert thop_style_ops(model, 64) / 1e6 / paper > 3.5
    assert macs_of("ShuffleV1", 200, 32) / 1e6 / paper == pytest.approx(0.905, abs=0.002)
    assert thop_style_ops(model, 32) / 1e6 / paper == pytest.approx(0.986, abs=0.002)
