"""ShuffleNet V1/V2, MobileNetV1/V2, the ImageNet ResNets, the CIFAR ResNet-50 and tiny_cnn
against their published architectures.

The shape tests in test_models_forward.py cannot see a residual subtracted instead of added,
a pooling window of the wrong size that keeps the output shape, or a stem conv whose kernel or
padding changed without changing the grid.  Here every family's forward pass is recomputed in
float64 with ``torch.nn.functional`` from the module's own weights, following the architecture
as published (the ShuffleNet V1/V2 and MobileNetV2 papers as mdistiller's CIFAR code builds
them, ../shared/reference section 3, and the KD codebases' MobileNetV1), or compared with
torchvision's own model (the ImageNet ResNets and MobileNetV2, whose weights load unchanged).
Parameter counts of configurations nobody published are derived by hand from the same
architecture, after the same formulas reproduce the published counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from functional_weights import Weights, check_features, close
from torch import Tensor, nn

from figkd.models import MODELS, Features, ZooModel, count_macs, count_parameters, create_model
from figkd.models.mobilenet_imagenet import (
    MobileNetV1,
    MobileNetV2ImageNet,
    mobilenetv1_imagenet,
    mobilenetv2_imagenet,
)
from figkd.models.mobilenetv2_cifar import MobileNetV2Cifar
from figkd.models.resnet50_cifar import CifarResNetBottleneck
from figkd.models.resnet_imagenet import ResNetImageNet
from figkd.models.shufflenetv1 import ShuffleNetV1
from figkd.models.shufflenetv2 import ShuffleNetV2

B = 2
NUM_CLASSES = 7


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no OpenMP spin


# ----------------------------------------------------------------- hand-derived counts
def conv(k: int, cin: int, cout: int, groups: int = 1) -> int:
    """A bias-free k x k conv: each of ``cout`` filters sees ``cin / groups`` channels."""
    return k * k * (cin // groups) * cout


def bn(c: int) -> int:
    return 2 * c  # gamma and beta; running statistics are buffers


def fc(d: int, classes: int) -> int:
    return d * classes + classes


def shufflev1_count(classes: int, widths: tuple[int, ...] = (240, 480, 960),
                    depths: tuple[int, ...] = (4, 8, 4), g: int = 3) -> int:
    """1x1 stem 3 -> 24 + BN; bottleneck mid = out / 4 with 1x1 group convs (g = 1 on the
    24-channel stem) around a 3x3 depthwise conv; a strided first block makes out - in."""
    total, cin = conv(1, 3, 24) + bn(24), 24
    for cout, n in zip(widths, depths):
        for j in range(n):
            c_in, c_out = (cin, cout - cin) if j == 0 else (cout, cout)
            mid = c_out // 4
            g1 = 1 if c_in == 24 else g
            total += conv(1, c_in, mid, g1) + bn(mid) + conv(3, mid, mid, mid) + bn(mid)
            total += conv(1, mid, c_out, g) + bn(c_out)
        cin = cout
    return total + fc(widths[-1], classes)


def shufflev2_count(classes: int, widths: tuple[int, ...] = (116, 232, 464),
                    head: int = 1024) -> int:
    """1x1 stem 3 -> 24 + BN; per stage a two-branch DownBlock and n basic units on half the
    channels; 1x1 head 464 -> 1024 + BN."""
    total, cin = conv(1, 3, 24) + bn(24), 24
    for cout, n in zip(widths, (3, 7, 3)):
        mid = cout // 2
        total += conv(3, cin, cin, cin) + bn(cin) + conv(1, cin, mid) + bn(mid)  # left
        total += conv(1, cin, mid) + bn(mid) + conv(3, mid, mid, mid) + bn(mid)  # right
        total += conv(1, mid, mid) + bn(mid)
        total += n * (2 * conv(1, mid, mid) + conv(3, mid, mid, mid) + 3 * bn(mid))
        cin = cout
    return total + conv(1, cin, head) + bn(head) + fc(head, classes)


MNV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))  # MobileNetV2 paper, Table 2: t, c, n, s


def mobilenetv2_count(classes: int, width: float = 0.5, t: int = 6) -> int:
    """3x3/s2 stem to 32w channels; inverted residuals (1x1 expand, 3x3 depthwise, 1x1
    project, each + BN); the paper keeps the 1280 head unless the multiplier exceeds 1."""
    cin = int(32 * width)
    total = conv(3, 3, cin) + bn(cin)
    for row, (_, c, n, _) in enumerate(MNV2_SETTINGS):
        cout = int(c * width)
        for _ in range(n):
            hidden = cin * (1 if row == 0 else t)
            total += conv(1, cin, hidden) + bn(hidden) + conv(3, hidden, hidden, hidden)
            total += bn(hidden) + conv(1, hidden, cout) + bn(cout)
            cin = cout
    head = int(1280 * width) if width > 1 else 1280
    return total + conv(1, cin, head) + bn(head) + fc(head, classes)


MNV1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
               (1024, 2), (1024, 1))  # Howard et al. 2017, Table 1


def mobilenetv1_count(classes: int) -> int:
    total, cin = conv(3, 3, 32) + bn(32), 32
    for cout, _ in MNV1_BLOCKS:
        total += conv(3, cin, cin, cin) + bn(cin) + conv(1, cin, cout) + bn(cout)
        cin = cout
    return total + fc(1024, classes)


def resnet50_cifar_count(classes: int, depths: tuple[int, ...] = (3, 4, 6, 3)) -> int:
    """3x3 stem 64; bottlenecks (1x1, 3x3, 1x1 x4) of 3, 4, 6, 3 blocks; 1x1 conv + BN
    shortcut when the stride or width changes."""
    total, cin = conv(3, 3, 64) + bn(64), 64
    for planes, n, stride in zip((64, 128, 256, 512), depths, (1, 2, 2, 2)):
        for j in range(n):
            c, s = (cin, stride) if j == 0 else (4 * planes, 1)
            total += conv(1, c, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
            total += conv(1, planes, 4 * planes) + bn(4 * planes)
            if s != 1 or c != 4 * planes:
                total += conv(1, c, 4 * planes) + bn(4 * planes)
        cin = 4 * planes
    return total + fc(2048, classes)


def tiny_count(classes: int, width: int, channels: int) -> int:
    return (conv(3, channels, width) + bn(width) + conv(3, width, 2 * width) + bn(2 * width)
            + conv(3, 2 * width, 4 * width) + bn(4 * width) + fc(4 * width, classes))


def test_hand_formulas_reproduce_the_published_counts() -> None:
    """The formulas are validated first: public zoo counts (reference section 3) at 100 and
    200 classes, MobileNet 1.0-224's 4.2 M (its paper; torchvision-style count 4,231,976)."""
    assert shufflev1_count(100) == 949_258 and shufflev1_count(200) == 1_045_358
    assert shufflev2_count(100) == 1_355_528 and shufflev2_count(200) == 1_458_028
    assert mobilenetv2_count(100) == 812_836 and mobilenetv2_count(200) == 940_936
    assert resnet50_cifar_count(100) == 23_705_252 and resnet50_cifar_count(200) == 23_910_152
    assert mobilenetv1_count(1000) == 4_231_976
    # tiny_cnn, width 16, one channel, 10 classes (docs/models.md: 0.02 M):
    # 144 + 32 + 4608 + 64 + 18432 + 128 + 650
    assert tiny_count(10, 16, 1) == 24_058


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ShuffleV1", shufflev1_count(NUM_CLASSES)), ("ShuffleV2", shufflev2_count(NUM_CLASSES)),
     ("MobileNetV2", mobilenetv2_count(NUM_CLASSES)),
     ("ResNet50", resnet50_cifar_count(NUM_CLASSES)),
     ("mobilenetv1_imagenet", mobilenetv1_count(NUM_CLASSES))],
)
def test_parameter_counts_at_another_class_count(name: str, expected: int) -> None:
    """The registered models at 7 classes: nobody published these, the formulas give them."""
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES)
    assert count_parameters(model) == expected


@pytest.mark.parametrize(("width", "expansion"), [(1.0, 6), (2.0, 6), (0.5, 4)])
def test_mobilenetv2_width_and_expansion_variants(width: float, expansion: int) -> None:
    """RepDistiller's ``mobilenetv2_T_w(T, W)``: the paper widens the 1280 head only for
    multipliers above 1 (2.0 -> 2560; 1.0 keeps 1280)."""
    with torch.device("meta"):
        model = MobileNetV2Cifar(num_classes=NUM_CLASSES, width_mult=width, expansion=expansion)
    head = int(1280 * width) if width > 1 else 1280
    assert model.embedding_dim == head
    assert count_parameters(model) == mobilenetv2_count(NUM_CLASSES, width, expansion)
    # stem 32w; stages end at settings 1, 2, 4, 6: 24w, 32w, 96w, 320w channels
    assert model.stem_channels == int(32 * width)
    assert model.stage_channels == [int(c * width) for c in (24, 32, 96, 320)]


def test_shufflenetv1_with_two_groups() -> None:
    """ShuffleNet paper Table 1, g = 2: stages 200, 400, 800 (the CIFAR stem kept)."""
    with torch.device("meta"):
        model = ShuffleNetV1(num_classes=NUM_CLASSES, widths=(200, 400, 800), groups=2)
    assert count_parameters(model) == shufflev1_count(NUM_CLASSES, (200, 400, 800), g=2)


def test_shufflenetv2_half_width() -> None:
    """ShuffleNet V2 paper Table 5 (and mdistiller's ``net_size`` 0.5): 48, 96, 192, head 1024."""
    with torch.device("meta"):
        model = ShuffleNetV2(num_classes=NUM_CLASSES, widths=(48, 96, 192))
    assert count_parameters(model) == shufflev2_count(NUM_CLASSES, (48, 96, 192))


def test_cifar_resnet101_bottleneck() -> None:
    """mdistiller resnetv2.py's ResNet101: the same bottleneck net with 3, 4, 23, 3 blocks."""
    with torch.device("meta"):
        model = CifarResNetBottleneck(depths=(3, 4, 23, 3), num_classes=NUM_CLASSES)
    assert count_parameters(model) == resnet50_cifar_count(NUM_CLASSES, (3, 4, 23, 3))
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]


def test_imagenet_models_built_bare_are_the_1000_class_rgb_nets() -> None:
    """With no arguments, the classes and factories build what torchvision's constructors and
    the KD codebases' MobileNet build: 1000 classes from 3-channel images (compared by the
    names and shapes of every parameter and buffer)."""
    def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    with torch.device("meta"):
        resnet18 = shapes(torchvision.models.resnet18())
        bare = ResNetImageNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2])
        assert shapes(bare) == resnet18
        assert shapes(MODELS.get("resnet18_imagenet")()) == resnet18
        mnv2 = shapes(torchvision.models.mobilenet_v2())
        assert shapes(MobileNetV2ImageNet()) == mnv2
        assert shapes(mobilenetv2_imagenet()) == mnv2
        for mnv1 in (shapes(MobileNetV1()), shapes(mobilenetv1_imagenet())):
            assert mnv1["model.0.0.weight"] == (32, 3, 3, 3)
            assert mnv1["fc.weight"] == (1000, 1024) and mnv1["fc.bias"] == (1000,)


@pytest.mark.parametrize("width", [1, 5])
def test_tiny_cnn_counts_and_smallest_width(width: int) -> None:
    """width = 1 is the smallest allowed (>= 1): 1 -> 2 -> 4 channels."""
    model = create_model("tiny_cnn", num_classes=3, in_channels=1, width=width)
    assert count_parameters(model) == tiny_count(3, width, 1)
    assert model.stage_channels == [2 * width, 4 * width]


def test_default_input_sizes_give_the_published_macs() -> None:
    """``count_macs`` without a size runs at the family's native size: 224 px for the
    ImageNet models (torchvision docs: ResNet-18 1.81 GFLOPS, MobileNetV2 0.30; MobileNet
    paper Table 8: 1.0 MobileNet-224 569 M mult-adds), 8 px for tiny_cnn, where
    stem 8*8*16*9 + stage 4*4*32*144 + stage 2*2*64*288 + fc 64*10 = 157,312."""
    with torch.device("meta"):
        resnet18 = create_model("resnet18_imagenet", num_classes=1000)
        mnv1 = create_model("mobilenetv1_imagenet", num_classes=1000)
        mnv2 = create_model("mobilenetv2_imagenet", num_classes=1000)
        tiny = create_model("tiny_cnn", num_classes=10, in_channels=1)
    assert count_macs(resnet18) / 1e9 == pytest.approx(1.81, abs=0.005)
    assert count_macs(mnv2) / 1e9 == pytest.approx(0.30, abs=0.005)
    assert count_macs(mnv1) / 1e6 == pytest.approx(569, rel=0.01)
    assert count_macs(tiny) == 8 * 8 * 16 * 9 + 4 * 4 * 32 * 144 + 2 * 2 * 64 * 288 + 640


# --------------------------------------------------------- functional re-implementations
def prepared(name: str, seed: int, size: int, **kwargs: int) -> ZooModel:
    """float64, eval mode, with BN statistics that are neither the identity nor degenerate.

    Identity BN statistics would hide a BN applied to the wrong tensor or left out; raw
    statistics of a deep net in eval mode let activations explode or saturate (ReLU6) until
    every image gives the same logits.  So the running statistics are first measured on random
    images (momentum None: a plain average), then perturbed, and the affine parameters and
    linear biases are drawn at random.
    """
    torch.manual_seed(seed)
    model = create_model(name, num_classes=NUM_CLASSES, **kwargs).double()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None
    channels = kwargs.get("in_channels", 3)
    with torch.no_grad():
        model.train()(images(size, seed=seed + 2, channels=channels, batch=4))
    g = torch.Generator().manual_seed(seed + 1)

    def draw(c: int) -> Tensor:
        return torch.rand(c, generator=g, dtype=torch.float64)

    with torch.no_grad():
        for m in norms:
            c = m.num_features
            m.momentum = 0.1
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.add_((draw(c) - 0.5) * 0.4 * m.running_var.sqrt())
            m.running_var.mul_(0.5 + draw(c))
            m.weight.copy_(0.5 + draw(c))
            m.bias.copy_(0.4 * (draw(c) - 0.5))
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.bias.copy_(draw(layer.out_features) - 0.5)
    return model.eval()


def images(size: int, seed: int = 0, channels: int = 3, batch: int = B) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g, dtype=torch.float64)


def check_distinct_features(model: ZooModel, x: Tensor, ref: Features) -> None:
    """The shared comparison, after making sure the reference is not degenerate: saturated or
    dead units would give every image the same logits, and hide a wrong layer."""
    assert (ref["logits"][0] - ref["logits"][1]).abs().max() > 1e-3 * ref["logits"].abs().max()
    check_features(model, x, ref)


def shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle written as an index map: with C = g*n channels, output
    channel j = a*g + b (a < n, b < g) is input channel b*n + a (group b's a-th channel)."""
    c = x.shape[1]
    n = c // groups
    return x[:, [(j % groups) * n + j // groups for j in range(c)]]


def features(stem: Tensor, stages: list[Tensor], preacts: list[Tensor], pooled: Tensor,
             w: Weights, fc_prefix: str) -> Features:
    embedding = pooled.mean(dim=(2, 3))  # global average pooling
    logits = F.linear(embedding, w[f"{fc_prefix}.weight"], w[f"{fc_prefix}.bias"])
    return Features(stem=stem, stages=stages, preact_stages=preacts, pooled_map=pooled,
                    embedding=embedding, logits=logits)


def shufflev1_reference(w: Weights, x: Tensor) -> Features:
    """mdistiller ShuffleNetv1.py, g = 3: stem 1x1-BN-ReLU; Bottleneck(in, out, stride):
    1x1 group conv (g = 1 on 24 channels)-BN-ReLU, shuffle, 3x3 dw (stride)-BN-ReLU, 1x1 group
    conv-BN; stride 2: cat with AvgPool(3, 2, 1) of the input (out = width - in), else + input;
    ReLU; AvgPool(4) on the 4x4 grid, then the linear layer."""
    g = 3
    h = F.relu(w.conv_bn(x, "", "conv1", "bn1"))
    stem, stages, preacts, cin = h, [], [], 24
    for i, (cout, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), start=1):
        for j in range(n):
            p = f"layer{i}.{j}."
            stride, out_planes = (2, cout - cin) if j == 0 else (1, cout)
            g1 = 1 if h.shape[1] == 24 else g
            mid = out_planes // 4
            out = F.relu(w.conv_bn(h, p, "conv1", "bn1", groups=g1))
            out = shuffle(out, g1)
            out = F.relu(w.conv_bn(out, p, "conv2", "bn2", stride=stride, padding=1,
                                   groups=mid))
            out = w.conv_bn(out, p, "conv3", "bn3", groups=g)
            if stride == 2:
                pre = torch.cat([out, F.avg_pool2d(h, 3, stride=2, padding=1)], 1)
            else:
                pre = out + h
            h = F.relu(pre)
        stages.append(h)
        preacts.append(pre)
        cin = cout
    assert h.shape[-1] == 4  # mdistiller's AvgPool(4) is global here
    return features(stem, stages, preacts, h, w, "linear")


def test_shufflenetv1_equals_a_functional_reimplementation() -> None:
    model = prepared("ShuffleV1", seed=11, size=32)
    x = images(32, seed=3)
    w = Weights(model)
    ref = shufflev1_reference(w, x)
    assert w.unread() == set()
    assert all(bool((p < 0).any()) for p in ref["preact_stages"])
    check_distinct_features(model, x, ref)


def shufflev2_reference(w: Weights, x: Tensor) -> Features:
    """mdistiller ShuffleNetv2.py (net_size 1): stem 1x1-BN-ReLU; DownBlock: left dw3x3/s2-BN,
    1x1-BN-ReLU; right 1x1-BN-ReLU, dw3x3/s2-BN, 1x1-BN-ReLU; cat, shuffle(2).  BasicBlock:
    split 50/50, the second half 1x1-BN-ReLU, dw3x3-BN, 1x1-BN (preact), ReLU; cat with the first
    half (the stage's preact is this cat before the ReLU), shuffle(2).  Head 1x1-BN-ReLU."""
    h = F.relu(w.conv_bn(x, "", "conv1", "bn1"))
    stem, stages, preacts, cin = h, [], [], 24
    for i, (cout, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), start=1):
        p, mid = f"layer{i}.0.", cout // 2
        left = w.conv_bn(h, p, "conv1", "bn1", stride=2, padding=1, groups=cin)
        left = F.relu(w.conv_bn(left, p, "conv2", "bn2"))
        right = F.relu(w.conv_bn(h, p, "conv3", "bn3"))
        right = w.conv_bn(right, p, "conv4", "bn4", stride=2, padding=1, groups=mid)
        right = F.relu(w.conv_bn(right, p, "conv5", "bn5"))
        h = shuffle(torch.cat([left, right], 1), 2)
        for j in range(1, n + 1):
            p = f"layer{i}.{j}."
            x1, x2 = h[:, :mid], h[:, mid:]
            out = F.relu(w.conv_bn(x2, p, "conv1", "bn1"))
            out = w.conv_bn(out, p, "conv2", "bn2", padding=1, groups=mid)
            out = w.conv_bn(out, p, "conv3", "bn3")
            pre = torch.cat([x1, out], 1)
            h = shuffle(torch.cat([x1, F.relu(out)], 1), 2)
        stages.append(h)
        preacts.append(pre)
        cin = cout
    pooled = F.relu(w.conv_bn(h, "", "conv2", "bn2"))
    return features(stem, stages, preacts, pooled, w, "linear")


def test_shufflenetv2_equals_a_functional_reimplementation() -> None:
    model = prepared("ShuffleV2", seed=13, size=32)
    x = images(32, seed=4)
    w = Weights(model)
    ref = shufflev2_reference(w, x)
    assert w.unread() == set()
    assert all(bool((p < 0).any()) for p in ref["preact_stages"])
    check_distinct_features(model, x, ref)


def mobilenetv2_cifar_reference(w: Weights, x: Tensor) -> Features:
    """mdistiller mobilenetv2.py, mobile_half (T = 6, width 0.5): stem 3x3/s2-BN-ReLU;
    InvertedResidual: 1x1 expand-BN-ReLU (kept at t = 1), 3x3 dw (stride)-BN-ReLU, 1x1-BN,
    + input iff stride 1 and in == out; features after blocks 1, 2, 4, 6; head 1x1-BN-ReLU to
    1280; AvgPool(2, ceil_mode) on the 2x2 grid, then the classifier."""
    h = F.relu(w.conv_bn(x, "", "conv1.0", "conv1.1", stride=2, padding=1))
    stem, stages, cin = h, [], 16
    for b, (t, c, n, s) in enumerate(MNV2_SETTINGS):
        cout = c // 2
        for j in range(n):
            p, stride, hidden = f"blocks.{b}.{j}.conv.", s if j == 0 else 1, cin * t
            out = F.relu(w.conv_bn(h, p, "0", "1"))
            out = F.relu(w.conv_bn(out, p, "3", "4", stride=stride, padding=1, groups=hidden))
            out = w.conv_bn(out, p, "6", "7")
            h = h + out if stride == 1 and cin == cout else out
            cin = cout
        if b in (1, 2, 4, 6):
            stages.append(h)
    pooled = F.relu(w.conv_bn(h, "", "conv2.0", "conv2.1"))
    assert pooled.shape[-1] == 2
    return features(stem, stages, stages, pooled, w, "classifier.0")


def test_mobilenetv2_cifar_equals_a_functional_reimplementation() -> None:
    model = prepared("MobileNetV2", seed=17, size=32)
    x = images(32, seed=5)
    w = Weights(model)
    ref = mobilenetv2_cifar_reference(w, x)
    assert w.unread() == set()
    check_distinct_features(model, x, ref)


def mobilenetv1_reference(w: Weights, x: Tensor) -> Features:
    """The KD codebases' MobileNet (1.0): conv_bn(3, 32, 2), then 13 conv_dw blocks
    (dw3x3 (stride)-BN-ReLU, 1x1-BN-ReLU); features after blocks 3, 5, 11, 13, the stage's
    preact before the last ReLU; global pooling (AvgPool(7) at 224 px) and fc."""
    h = F.relu(w.conv_bn(x, "", "model.0.0", "model.0.1", stride=2, padding=1))
    stem, stages, preacts, cin = h, [], [], 32
    for k, (cout, stride) in enumerate(MNV1_BLOCKS, start=1):
        p = f"model.{k}."
        h = F.relu(w.conv_bn(h, p, "0", "1", stride=stride, padding=1, groups=cin))
        pre = w.conv_bn(h, p, "3", "4")
        h = F.relu(pre)
        if k in (3, 5, 11, 13):
            stages.append(h)
            preacts.append(pre)
        cin = cout
    return features(stem, stages, preacts, h, w, "fc")


def test_mobilenetv1_equals_a_functional_reimplementation() -> None:
    model = prepared("mobilenetv1_imagenet", seed=19, size=64)
    x = images(64, seed=6)
    w = Weights(model)
    ref = mobilenetv1_reference(w, x)
    assert w.unread() == set()
    assert [s.shape[1] for s in ref["stages"]] == [128, 256, 512, 1024]
    check_distinct_features(model, x, ref)


def bottleneck(w: Weights, h: Tensor, p: str, stride: int, shortcut: str | None) -> Tensor:
    """1x1-BN-ReLU, 3x3 (stride)-BN-ReLU, 1x1-BN, + shortcut; returns the sum before ReLU."""
    out = F.relu(w.conv_bn(h, p, "conv1", "bn1"))
    out = F.relu(w.conv_bn(out, p, "conv2", "bn2", stride=stride, padding=1))
    out = w.conv_bn(out, p, "conv3", "bn3")
    if shortcut is None:
        return out + h
    return out + w.conv_bn(h, p, f"{shortcut}.0", f"{shortcut}.1", stride=stride)


def resnet50_cifar_reference(w: Weights, x: Tensor) -> Features:
    """mdistiller resnetv2.py ResNet50: 3x3/s1 stem-BN-ReLU (no max-pool); Bottleneck
    (expansion 4, stride on the 3x3) of 3, 4, 6, 3 blocks at strides 1, 2, 2, 2; 1x1 conv + BN
    shortcut when the stride or width changes; adaptive average pooling and linear."""
    h = F.relu(w.conv_bn(x, "", "conv1", "bn1", padding=1))
    stem, stages, preacts, cin = h, [], [], 64
    for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3),
                                                 (1, 2, 2, 2)), start=1):
        for j in range(n):
            s = stride if j == 0 else 1
            change = s != 1 or h.shape[1] != 4 * planes
            pre = bottleneck(w, h, f"layer{i}.{j}.", s, "shortcut" if change else None)
            h = F.relu(pre)
        stages.append(h)
        preacts.append(pre)
        cin = 4 * planes
    assert cin == 2048
    return features(stem, stages, preacts, h, w, "linear")


def test_resnet50_cifar_equals_a_functional_reimplementation() -> None:
    # 8 px instead of 32 keeps this cheap; the pooling is adaptive, the grids 8, 4, 2, 1
    model = prepared("ResNet50", seed=23, size=8)
    x = images(8, seed=7)
    w = Weights(model)
    ref = resnet50_cifar_reference(w, x)
    assert w.unread() == set()
    assert all(bool((p < 0).any()) for p in ref["preact_stages"])
    check_distinct_features(model, x, ref)


def tiny_reference(w: Weights, x: Tensor) -> Features:
    """docs/models.md: conv3x3-BN-ReLU stem at ``width``, two stride-2 conv3x3-BN-ReLU stages
    (2x, 4x width), global pooling, linear."""
    h = F.relu(w.conv_bn(x, "", "stem.0", "stem.1", padding=1))
    stem, stages, preacts = h, [], []
    for i in range(2):
        pre = w.conv_bn(h, f"stages.{i}.0.", "conv", "bn", stride=2, padding=1)
        h = F.relu(pre)
        stages.append(h)
        preacts.append(pre)
    return features(stem, stages, preacts, h, w, "fc")


def test_tiny_cnn_equals_a_functional_reimplementation() -> None:
    model = prepared("tiny_cnn", seed=29, size=8, in_channels=1, width=3)
    x = images(8, seed=8, channels=1)
    w = Weights(model)
    ref = tiny_reference(w, x)
    assert w.unread() == set()
    assert [s.shape[-1] for s in ref["stages"]] == [4, 2]
    check_distinct_features(model, x, ref)


# ------------------------------------------------------------ torchvision as the reference
def torchvision_twin(model: ZooModel, build: Callable[..., Any]) -> Any:
    """torchvision's model with our weights (the state-dict keys are torchvision's).

    Typed ``Any``: torchvision ships no type information, and the tests reach into its
    attributes (``layer1``, ``features``, ...)."""
    twin = build(weights=None, num_classes=NUM_CLASSES).double()
    twin.load_state_dict(model.state_dict())  # float64 into float64: no rounding
    return twin.eval()


@pytest.mark.parametrize(("name", "build"), [
    ("resnet18_imagenet", torchvision.models.resnet18),
    ("resnet50_imagenet", torchvision.models.resnet50),
])
def test_imagenet_resnets_equal_torchvision(name: str, build: Callable[..., Any]) -> None:
    """Stem = maxpool(relu(bn1(conv1))); stages = layer1..4; a stage's preact is the input of
    its last block's final ReLU, captured from torchvision's own forward."""
    model = prepared(name, seed=31, size=32)
    twin = torchvision_twin(model, build)
    x = images(32, seed=9)  # grids 8, 8, 4, 2, 1
    captured: list[Tensor] = []
    stages: list[Tensor] = []
    hooks = []
    for layer in (twin.layer1, twin.layer2, twin.layer3, twin.layer4):
        last = layer[-1]
        # the block's ReLU runs 2 (basic) or 3 (bottleneck) times; the last call gets the sum
        hooks.append(last.relu.register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].clone())))
        hooks.append(layer.register_forward_hook(lambda _m, _i, out: stages.append(out.clone())))
    with torch.no_grad():
        logits = twin(x)
        stem = twin.maxpool(twin.relu(twin.bn1(twin.conv1(x))))
    for hook in hooks:
        hook.remove()
    relus = 2 if name == "resnet18_imagenet" else 3
    preacts = captured[relus - 1::relus]
    assert len(preacts) == 4 and all(bool((p < 0).any()) for p in preacts)
    ref = Features(stem=stem, stages=stages, preact_stages=preacts, pooled_map=stages[-1],
                   embedding=stages[-1].mean(dim=(2, 3)), logits=logits)
    check_distinct_features(model, x, ref)


def test_imagenet_mobilenetv2_equals_torchvision() -> None:
    """The stages are the last block at each of the 1/4, 1/8, 1/16 and 1/32 grids (MobileNetV2
    paper, Table 2: 24, 32, 96 and 320 channels), found from torchvision's feature maps."""
    model = prepared("mobilenetv2_imagenet", seed=37, size=64)
    twin = torchvision_twin(model, torchvision.models.mobilenet_v2)
    x = images(64, seed=10)
    with torch.no_grad():
        logits = twin(x)
        maps = [twin.features[0](x)]
        for layer in twin.features[1:]:
            maps.append(layer(maps[-1]))
    blocks = maps[1:-1]  # without the stem and the 1x1 head conv
    last_at = {m.shape[-1]: m for m in blocks}  # later maps overwrite earlier ones
    stages = [last_at[64 // f] for f in (4, 8, 16, 32)]
    assert [s.shape[1] for s in stages] == [24, 32, 96, 320]
    ref = Features(stem=maps[0], stages=stages, preact_stages=stages, pooled_map=maps[-1],
                   embedding=maps[-1].mean(dim=(2, 3)), logits=logits)
    check_distinct_features(model, x, ref)


@pytest.mark.parametrize(("name", "build"), [
    ("resnet18_imagenet", torchvision.models.resnet18),
    ("mobilenetv2_imagenet", torchvision.models.mobilenet_v2),
])
def test_seeded_imagenet_models_draw_torchvisions_weights(
    name: str, build: Callable[..., Any]
) -> None:
    """Three input channels keep torchvision's own first conv: the same seed gives the same
    weights as torchvision (nothing re-drawn after its init)."""
    torch.manual_seed(5)
    ours = create_model(name, num_classes=NUM_CLASSES).state_dict()
    torch.manual_seed(5)
    theirs = build(weights=None, num_classes=NUM_CLASSES).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(("name", "kernel", "padding", "act"), [
    ("resnet18_imagenet", 7, 3, "relu_maxpool"),
    ("mobilenetv2_imagenet", 3, 1, "relu6"),
])
def test_one_channel_imagenet_stems(name: str, kernel: int, padding: int, act: str) -> None:
    """in_channels = 1 rebuilds the first conv as torchvision's: ResNet 7x7/s2 pad 3 to 64
    channels, then BN-ReLU-maxpool 3/2/1; MobileNetV2 3x3/s2 pad 1 to 32, BN-ReLU6; no bias;
    Kaiming-normal fan-out init (ResNet: std sqrt(2 / (49 * 64)) over 3136 weights)."""
    model = prepared(name, seed=41, size=64, in_channels=1)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    out = 64 if act == "relu_maxpool" else 32
    assert first.weight.shape == (out, 1, kernel, kernel) and first.bias is None
    if act == "relu_maxpool":
        std = math.sqrt(2 / (kernel * kernel * out))
        assert abs(first.weight.std().item() / std - 1) < 0.1
    x = images(64, seed=12, channels=1)
    w = Weights(model)
    prefix = ("conv1", "bn1") if act == "relu_maxpool" else ("features.0.0", "features.0.1")
    h = w.conv_bn(x, "", *prefix, stride=2, padding=padding)
    if act == "relu_maxpool":
        expected = F.max_pool2d(F.relu(h), 3, stride=2, padding=1)
    else:
        expected = F.relu6(h)
    with torch.no_grad():
        close(model.forward_features(x)["stem"], expected)


# ------------------------------------------------------------------------ initialisation
# ShuffleNets and MobileNetV1: PyTorch's default (Kaiming-uniform, a = sqrt(5)): conv weights
# U(+-1/sqrt(fan_in)); the CIFAR ResNet-50 and tiny_cnn: convs N(0, 2 / (k*k*out)), FC default;
# MobileNetV2 (CIFAR): the same convs, FC N(0, 0.01) with bias 0; BN weight 1 and bias 0
@pytest.mark.parametrize(("name", "conv_init", "fc_init"), [
    ("ShuffleV1", "default", "default"), ("ShuffleV2", "default", "default"),
    ("mobilenetv1_imagenet", "default", "default"), ("MobileNetV2", "fan_out", "normal"),
    ("ResNet50", "fan_out", "default"), ("tiny_cnn", "fan_out", "default"),
])
def test_initialisation_follows_the_public_code(name: str, conv_init: str, fc_init: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    checked = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            if conv_init == "fan_out":
                std = math.sqrt(2.0 / (k * m.out_channels))
            else:  # uniform on +-1/sqrt(fan_in): std = bound / sqrt(3)
                bound = 1 / math.sqrt(k * m.in_channels // m.groups)
                assert m.weight.abs().max().item() <= bound
                std = bound / math.sqrt(3)
            # >= 2048 draws: the sample std is within ~1.6 % (1 sigma) of the true one
            if m.weight.numel() >= 2048:
                assert abs(m.weight.std().item() / std - 1) < 0.1
                checked += 1
        elif isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and not m.bias.any()
    assert checked > 0
    head = model.get_submodule(model.classifier_name())
    assert isinstance(head, nn.Linear)
    bound = 1 / math.sqrt(head.in_features)
    if fc_init == "normal":
        assert abs(head.weight.std().item() / 0.01 - 1) < 0.05 and not head.bias.any()
    else:
        assert head.weight.abs().max().item() <= bound
        assert abs(head.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
        assert head.bias.abs().max().item() <= bound and head.bias.abs().min().item() > 0


# ------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("depth", [18, 34, 50])
def test_imagenet_resnet_aliases(depth: int) -> None:
    """``ResNet<depth>-ImageNet`` names the torchvision architecture of that depth."""
    with torch.device("meta"):
        model = create_model(f"ResNet{depth}-ImageNet", num_classes=NUM_CLASSES)
    assert model.arch == f"resnet{depth}_imagenet"
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == blocks
    assert model.stage_channels == [c * (4 if depth == 50 else 1) for c in (64, 128, 256, 512)]
