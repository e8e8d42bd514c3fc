"""CIFAR ResNet, WRN and VGG values against the public zoo's architectures.

The shape tests cannot see a residual subtracted instead of added, a shortcut fed the
wrong tensor or a misplaced ReLU, and the zoo's published parameter counts stop at the
models the papers use.  Here each model is recomputed with ``torch.nn.functional`` from
the architecture in ../shared/reference (section 3), using the module's own weights,
and parameter counts of the other depths / widths are derived by hand from the same
tables (checked first against the published counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from functional_weights import Weights, check_features
from torch import Tensor, nn

from figkd.models import Features, ZooModel, count_parameters, create_model
from figkd.models.resnet_cifar import CifarResNet
from figkd.models.wrn import WideResNet

B = 2
NUM_CLASSES = 7

# reference section 3: (stem, stage widths); the x4 models widen every stage four times
RESNET_NARROW = (16, (16, 32, 64))
RESNET_WIDE = (32, (64, 128, 256))
RESNETS = {
    "resnet8": (8, RESNET_NARROW), "resnet14": (14, RESNET_NARROW),
    "resnet20": (20, RESNET_NARROW), "resnet32": (32, RESNET_NARROW),
    "resnet44": (44, RESNET_NARROW), "resnet56": (56, RESNET_NARROW),
    "resnet110": (110, RESNET_NARROW), "resnet8x4": (8, RESNET_WIDE),
    "resnet32x4": (32, RESNET_WIDE),
}
WRNS = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
# conv widths per block: the zoo's cfg S (vgg8), A, B (vgg13), D, E; A, D and E are Simonyan
# & Zisserman's Table 1 columns (VGG-11/16/19) cut at their max-pools
VGGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
# published counts at 100 classes (reference section 3), to validate the formulas below
PUBLISHED_100 = {
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "resnet20": 278_324,
    "resnet32": 472_756, "resnet56": 861_620, "resnet110": 1_736_564,
    "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg13": 9_462_180,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no OpenMP spin


# ----------------------------------------------------------------- hand-derived counts
def conv(k: int, cin: int, cout: int, bias: bool = False) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # gamma and beta; running statistics are buffers


def fc(d: int, classes: int) -> int:
    return d * classes + classes


def resnet_count(depth: int, widths: tuple[int, tuple[int, ...]], classes: int) -> int:
    """3x3 stem + BN; n post-act BasicBlocks per stage; 1x1 conv + BN shortcut on a change."""
    n = (depth - 2) // 6
    stem, stages = widths
    total, cin = conv(3, 3, stem) + bn(stem), stem
    for cout, stride in zip(stages, (1, 2, 2)):
        for j in range(n):
            c, s = (cin, stride) if j == 0 else (cout, 1)
            total += conv(3, c, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
            if s != 1 or c != cout:
                total += conv(1, c, cout) + bn(cout)
        cin = cout
    return total + fc(stages[-1], classes)


def wrn_count(depth: int, k: int, classes: int) -> int:
    """Bare 3x3 stem; pre-act blocks (BN on the input) with a 1x1 shortcut when in != out."""
    n = (depth - 4) // 6
    total, cin = conv(3, 3, 16), 16
    for cout in (16 * k, 32 * k, 64 * k):
        for j in range(n):
            c = cin if j == 0 else cout
            total += bn(c) + conv(3, c, cout) + bn(cout) + conv(3, cout, cout)
            if c != cout:
                total += conv(1, c, cout)
        cin = cout
    return total + bn(64 * k) + fc(64 * k, classes)


def vgg_count(cfg: list[list[int]], classes: int) -> int:
    """Every conv keeps its bias even before BN (reference section 3)."""
    total, cin = 0, 3
    for widths in cfg:
        for cout in widths:
            total += conv(3, cin, cout, bias=True) + bn(cout)
            cin = cout
    return total + fc(cfg[-1][-1], classes)


def count_of(name: str, classes: int) -> int:
    if name in RESNETS:
        return resnet_count(*RESNETS[name], classes)
    if name in WRNS:
        return wrn_count(*WRNS[name], classes)
    return vgg_count(VGGS[name], classes)


def test_hand_formulas_reproduce_the_published_counts() -> None:
    # validates the formulas before they stand in for the counts nobody published
    assert resnet_count(8, RESNET_WIDE, 100) == (
        conv(3, 3, 32) + bn(32)
        + conv(3, 32, 64) + bn(64) + conv(3, 64, 64) + bn(64) + conv(1, 32, 64) + bn(64)
        + conv(3, 64, 128) + bn(128) + conv(3, 128, 128) + bn(128) + conv(1, 64, 128) + bn(128)
        + conv(3, 128, 256) + bn(256) + conv(3, 256, 256) + bn(256) + conv(1, 128, 256) + bn(256)
        + 256 * 100 + 100
    ) == 1_233_540
    for name, published in PUBLISHED_100.items():
        assert count_of(name, 100) == published, name


@pytest.mark.parametrize("name", [*RESNETS, *WRNS, *VGGS])
def test_parameter_counts_of_every_depth_and_width(name: str) -> None:
    # resnet8/14/44, wrn_16_1 and vgg11/16/19 have no published count to compare with
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES)
    assert count_parameters(model) == count_of(name, NUM_CLASSES)


def test_stage_block_counts() -> None:
    # n = (d - 2) / 6 blocks per ResNet stage and (d - 4) / 6 per WRN stage
    with torch.device("meta"):
        for name, (depth, _) in RESNETS.items():
            model = create_model(name, num_classes=NUM_CLASSES)
            assert isinstance(model, CifarResNet)
            assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [
                (depth - 2) // 6
            ] * 3, name
        for name, (depth, _) in WRNS.items():
            model = create_model(name, num_classes=NUM_CLASSES)
            assert isinstance(model, WideResNet)
            blocks = [model.block1, model.block2, model.block3]
            assert [len(b.layer) for b in blocks] == [(depth - 4) // 6] * 3, name


# --------------------------------------------------------- functional re-implementations
def prepared(name: str, seed: int) -> ZooModel:
    """float64, eval mode, with non-trivial BN statistics and affine parameters.

    Identity BN statistics would hide a BN applied to the wrong tensor or left out.
    """
    torch.manual_seed(seed)
    model = create_model(name, num_classes=NUM_CLASSES).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
                m.weight.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
                m.bias.copy_(0.2 * torch.randn(c, generator=g, dtype=torch.float64))
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g, dtype=torch.float64))
    return model


def images(size: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g, dtype=torch.float64)


def resnet_reference(w: Weights, x: Tensor, depth: int) -> Features:
    """mdistiller resnet.py: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; strides 1, 2, 2."""
    n = (depth - 2) // 6
    h = F.relu(w.bn(F.conv2d(x, w["conv1.weight"], stride=1, padding=1), "bn1"))
    stem, stages, preacts = h, [], []
    for i, stride in enumerate((1, 2, 2), start=1):
        for j in range(n):
            p, s = f"layer{i}.{j}", stride if j == 0 else 1
            out = F.relu(w.bn(F.conv2d(h, w[f"{p}.conv1.weight"], stride=s, padding=1),
                              f"{p}.bn1"))
            out = w.bn(F.conv2d(out, w[f"{p}.conv2.weight"], stride=1, padding=1), f"{p}.bn2")
            if s != 1 or h.shape[1] != out.shape[1]:
                shortcut = w.bn(F.conv2d(h, w[f"{p}.downsample.0.weight"], stride=s),
                                f"{p}.downsample.1")
            else:
                shortcut = h
            pre = out + shortcut
            h = F.relu(pre)
        stages.append(h)
        preacts.append(pre)
    embedding = F.avg_pool2d(h, 8).flatten(1)  # the zoo's AvgPool(8) on the 8x8 last grid
    logits = F.linear(embedding, w["fc.weight"], w["fc.bias"])
    return Features(stem=stem, stages=stages, preact_stages=preacts,
                    pooled_map=h, embedding=embedding, logits=logits)


# resnet8x4 has a conv shortcut in every stage (32 -> 64 at stride 1), resnet20 identity
# shortcuts after each stage's first block and none at all in stage 1
@pytest.mark.parametrize("name", ["resnet8x4", "resnet20"])
def test_cifar_resnet_equals_a_functional_reimplementation(name: str) -> None:
    model = prepared(name, seed=3)
    x = images(32)
    w = Weights(model)
    ref = resnet_reference(w, x, RESNETS[name][0])
    assert w.unread() == set()  # no layer the reference does not have
    assert all(bool((p < 0).any()) for p in ref["preact_stages"])  # ReLU placement matters
    check_features(model, x, ref)


def wrn_reference(w: Weights, x: Tensor, depth: int, k: int) -> Features:
    """mdistiller wrn.py: BN-ReLU-conv-BN-ReLU-conv + shortcut; the pre-activated input feeds
    the 1x1 shortcut when in != out, the raw input is added when in == out."""
    n = (depth - 4) // 6
    h = F.conv2d(x, w["conv1.weight"], stride=1, padding=1)
    stem, stages, preacts = h, [], []
    cin = 16
    for i, (cout, stride) in enumerate(zip((16 * k, 32 * k, 64 * k), (1, 2, 2)), start=1):
        for j in range(n):
            p = f"block{i}.layer.{j}"
            c, s = (cin, stride) if j == 0 else (cout, 1)
            pre = w.bn(h, f"{p}.bn1")
            if j == 0 and i > 1:
                preacts.append(pre)  # previous stage's output through this bn1
            act = F.relu(pre)
            out = F.relu(w.bn(F.conv2d(act, w[f"{p}.conv1.weight"], stride=s, padding=1),
                              f"{p}.bn2"))
            out = F.conv2d(out, w[f"{p}.conv2.weight"], stride=1, padding=1)
            shortcut = h if c == cout else F.conv2d(act, w[f"{p}.convShortcut.weight"], stride=s)
            h = out + shortcut
        stages.append(h)
        cin = cout
    pre = w.bn(h, "bn1")
    preacts.append(pre)
    pooled = F.relu(pre)
    embedding = F.avg_pool2d(pooled, 8).flatten(1)
    logits = F.linear(embedding, w["fc.weight"], w["fc.bias"])
    return Features(stem=stem, stages=stages, preact_stages=preacts,
                    pooled_map=pooled, embedding=embedding, logits=logits)


# wrn_16_1's first block is 16 -> 16 (identity on the raw input); wrn_16_2's is 16 -> 32
@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_16_2"])
def test_wrn_equals_a_functional_reimplementation(name: str) -> None:
    model = prepared(name, seed=5)
    x = images(32, seed=1)
    w = Weights(model)
    ref = wrn_reference(w, x, *WRNS[name])
    assert w.unread() == set()
    check_features(model, x, ref)


def vgg_reference(w: Weights, x: Tensor, cfg: Sequence[Sequence[int]]) -> Features:
    """mdistiller vgg.py: conv(+bias)-BN-ReLU per width, the block's last ReLU applied
    outside; max-pool before blocks 1-3, and before block 4 only when the input is 64 px."""
    side = x.shape[-1]
    h = x
    outs, preacts = [], []
    for b, widths in enumerate(cfg):
        if b in (1, 2, 3) or (b == 4 and side == 64):
            h = F.max_pool2d(h, 2)
        for i in range(len(widths)):
            conv_key, bn_key = f"block{b}.{3 * i}", f"block{b}.{3 * i + 1}"
            h = w.bn(F.conv2d(h, w[f"{conv_key}.weight"], w[f"{conv_key}.bias"], padding=1),
                     bn_key)
            if i < len(widths) - 1:
                h = F.relu(h)
        preacts.append(h)
        h = F.relu(h)
        outs.append(h)
    embedding = h.mean(dim=(2, 3))
    logits = F.linear(embedding, w["classifier.weight"], w["classifier.bias"])
    return Features(stem=outs[0], stages=outs[1:], preact_stages=preacts[1:],
                    pooled_map=h, embedding=embedding, logits=logits)


# vgg8 at 64 px runs the 4th max-pool (the TinyImageNet case); vgg13 has 2 convs per block
@pytest.mark.parametrize(("name", "size", "last_side"),
                         [("vgg8", 32, 4), ("vgg8", 64, 4), ("vgg13", 32, 4)])
def test_vgg_equals_a_functional_reimplementation(name: str, size: int, last_side: int) -> None:
    model = prepared(name, seed=7)
    x = images(size, seed=2)
    w = Weights(model)
    ref = vgg_reference(w, x, VGGS[name])
    assert w.unread() == set()
    assert ref["pooled_map"].shape[-1] == last_side
    check_features(model, x, ref)


# ------------------------------------------------------------------------ initialisation
# reference section 3: convs N(0, 2 / (k*k*out)) (fan-out, not fan-in), conv biases 0, BN
# weight 1 and bias 0; the FC layer keeps PyTorch's default U(+-1/sqrt(in)) in the ResNets,
# gets bias 0 in WRN and N(0, 0.01) with bias 0 in VGG
@pytest.mark.parametrize(("name", "fc_init"),
                         [("resnet8x4", "default"), ("wrn_16_2", "zero_bias"), ("vgg8", "normal")])
def test_initialisation_follows_the_zoo(name: str, fc_init: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            std = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
            # >= 2048 draws: the sample std is within ~1.6 % (1 sigma) of the true one
            if m.weight.numel() >= 2048:
                assert abs(m.weight.std().item() / std - 1) < 0.1
                assert abs(m.weight.mean().item()) < 0.1 * std
            if m.bias is not None:
                assert not m.bias.any()
        elif isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and not m.bias.any()
    head = model.get_submodule(model.classifier_name())
    assert isinstance(head, nn.Linear)
    bound = 1 / math.sqrt(head.in_features)
    if fc_init == "normal":
        assert abs(head.weight.std().item() / 0.01 - 1) < 0.05
    else:  # uniform on [-bound, bound]: std = bound / sqrt(3)
        assert head.weight.abs().max().item() <= bound
        assert abs(head.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
    if fc_init == "default":
        assert head.bias.abs().max().item() <= bound and head.bias.abs().min().item() > 0
    else:
        assert not head.bias.any()
