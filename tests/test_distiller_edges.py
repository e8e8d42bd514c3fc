"""Edge cases of the Distiller plumbing (distiller.py) and the zoo base helpers (models/base.py).

Expected values are computed in the test itself: logits with ``F.linear`` from the layer's own
weight and bias, channel orders and pooled means written out by hand, conv/BN/ReLU stacks
re-run with ``torch.nn.functional``, and the Kaiming standard deviation from its formula
(He et al. 2015, ``std = sqrt(2 / fan_out)``, the same as torchvision's
``kaiming_normal_(mode="fan_out")``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.distiller import Distiller, FeatureOutput, TeacherLogitCache, features_view
from figkd.models import create_model
from figkd.models.base import (
    PreactBlock,
    StagedModel,
    ZooModel,
    channel_shuffle,
    conv_bn,
    init_weights,
    pool_flatten,
)

# --------------------------------------------------------------------------- helpers


def _linear(seed: int, cin: int = 4, cout: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(cin, cout).double()


def _by_hand(layer: nn.Linear, x: Tensor) -> Tensor:
    """The layer's logits from its own weight and bias, without calling the module."""
    return F.linear(x, layer.weight.detach(), layer.bias.detach())


class CountingLinear(nn.Module):
    """``nn.Linear`` that counts its forward calls (to see whether the teacher ran)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.fc = _linear(seed)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.fc(x)


class FeatureLinear(CountingLinear):
    """A model with ``forward_features``: logits plus one "stage" (the input doubled)."""

    def forward_features(self, x: Tensor) -> dict[str, Any]:
        self.calls += 1
        return {"logits": self.fc(x), "stages": [2 * x]}


class Wrapper(nn.Module):
    """Stands in for DDP (``.module``) or ``torch.compile`` (``._orig_mod``)."""

    def __init__(self, inner: nn.Module, attribute: str) -> None:
        super().__init__()
        setattr(self, attribute, inner)
        self.attribute = attribute

    def forward(self, x: Tensor) -> Any:
        return getattr(self, self.attribute)(x)


class Recorder(nn.Module):
    """A loss that declares nothing (plain ``nn.Module``): every getattr default applies."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def forward(
        self, student: Tensor, teacher: Tensor | None, targets: Tensor, **context: Any
    ) -> dict[str, Tensor]:
        self.seen = {"student": student, "teacher": teacher, **context}
        return {"loss": student.sum()}


def _declaring(**attributes: Any) -> Recorder:
    """A Recorder whose class declares ``attributes`` (num_views, needs_teacher, ...)."""
    return type("Declaring", (Recorder,), dict(attributes))()


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
STRONG = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 0, 1])


# --------------------------------------------------------------------------- distiller


def test_a_loss_that_declares_nothing_gets_teacher_logits_and_no_extras() -> None:
    """getattr defaults: needs_teacher=True, one view, no features / indices / images.
    Expected logits: F.linear with each network's own weights."""
    student, teacher = CountingLinear(0), CountingLinear(1)
    loss = Recorder()
    logits, _ = Distiller(student, loss, teacher)(X, Y, epoch=2)
    assert set(loss.seen) == {"student", "teacher", "epoch"}
    torch.testing.assert_close(logits, _by_hand(student.fc, X), rtol=0, atol=0)
    torch.testing.assert_close(loss.seen["teacher"], _by_hand(teacher.fc, X), rtol=0, atol=0)
    assert teacher.calls == 1 and loss.seen["epoch"] == 2


def test_features_view_wraps_only_for_losses_that_ask() -> None:
    """A loss that declares nothing keeps the student as it is; needs_features wraps it."""
    student = FeatureLinear(0)
    assert features_view(student, Recorder()) is student
    wrapped = features_view(student, _declaring(needs_features=True))
    assert isinstance(wrapped, FeatureOutput) and wrapped.model is student


@pytest.mark.parametrize("views", [0, 3])
def test_num_views_other_than_one_or_two_is_refused(views: int) -> None:
    with pytest.raises(ValueError, match=f"num_views must be 1 or 2, got {views}"):
        Distiller(CountingLinear(0), _declaring(num_views=views), CountingLinear(1))


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    """No teacher parameter asks for gradients; train()/eval() move the student only."""
    student, teacher = CountingLinear(0), CountingLinear(1)
    teacher.train()
    distiller = Distiller(student, Recorder(), teacher)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    distiller.train()
    assert student.training and not teacher.training
    distiller.eval()
    assert not student.training and not teacher.training


def test_one_view_loss_refuses_a_pair_of_batches() -> None:
    with pytest.raises(TypeError, match="takes one view: pass an image tensor"):
        Distiller(CountingLinear(0), Recorder(), CountingLinear(1))((X, STRONG), Y)


@pytest.mark.parametrize("images", ["tensor", "three"])
def test_two_view_loss_refuses_anything_but_a_pair(images: str) -> None:
    """A stacked tensor of two images is not a (weak, strong) pair either."""
    batch: Any = X[:2] if images == "tensor" else (X, STRONG, X)
    distiller = Distiller(CountingLinear(0), _declaring(num_views=2), CountingLinear(1))
    with pytest.raises(TypeError, match=r"needs \(weak, strong\) image batches"):
        distiller(batch, Y)


def test_two_view_cached_teacher_logits_replace_the_teacher() -> None:
    """Given (weak, strong) teacher logits, the teacher never runs and the loss gets them."""
    student, teacher = CountingLinear(0), CountingLinear(1)
    loss = _declaring(num_views=2)
    cached = (torch.full((5, 3), 1.5, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64))
    logits, _ = Distiller(student, loss, teacher)((X, STRONG), Y, teacher_logits=cached)
    assert teacher.calls == 0
    assert loss.seen["teacher"] is cached[0] and loss.seen["teacher_logits_strong"] is cached[1]
    torch.testing.assert_close(logits, _by_hand(student.fc, X), rtol=0, atol=0)
    torch.testing.assert_close(
        loss.seen["student_logits_strong"], _by_hand(student.fc, STRONG), rtol=0, atol=0
    )


def test_two_view_teacher_free_loss_gets_none_for_both_teacher_views() -> None:
    student, teacher = CountingLinear(0), CountingLinear(1)
    loss = _declaring(num_views=2, needs_teacher=False)
    Distiller(student, loss, teacher)((X, STRONG), Y)
    assert teacher.calls == 0 and student.calls == 2
    assert loss.seen["teacher"] is None and loss.seen["teacher_logits_strong"] is None
    with pytest.raises(ValueError, match="needs a teacher but none was given"):
        Distiller(student, _declaring(num_views=2), None)((X, STRONG), Y)


def test_two_view_teacher_scores_both_views() -> None:
    student, teacher = CountingLinear(0), CountingLinear(1)
    loss = _declaring(num_views=2)
    Distiller(student, loss, teacher)((X, STRONG), Y)
    torch.testing.assert_close(loss.seen["teacher"], _by_hand(teacher.fc, X), rtol=0, atol=0)
    torch.testing.assert_close(
        loss.seen["teacher_logits_strong"], _by_hand(teacher.fc, STRONG), rtol=0, atol=0
    )


@pytest.mark.parametrize("attribute", ["module", "_orig_mod"])
def test_wrapped_feature_output_is_recognised_through_ddp_or_compile(attribute: str) -> None:
    """A FeatureOutput inside a DDP/compile wrapper: accepted, and run through ``forward``."""
    inner = FeatureLinear(0)
    student = Wrapper(FeatureOutput(inner), attribute)
    loss = _declaring(needs_features=True, needs_teacher=False)
    logits, _ = Distiller(student, loss)(X, Y)
    torch.testing.assert_close(logits, _by_hand(inner.fc, X), rtol=0, atol=0)
    torch.testing.assert_close(loss.seen["student_features"]["stages"][0], 2 * X)
    assert inner.calls == 1


def test_doubly_wrapped_feature_output_is_unwrapped_to_the_bottom() -> None:
    inner = FeatureLinear(0)
    student = Wrapper(Wrapper(FeatureOutput(inner), "_orig_mod"), "module")
    loss = _declaring(needs_features=True, needs_teacher=False)
    logits, _ = Distiller(student, loss)(X, Y)
    torch.testing.assert_close(logits, _by_hand(inner.fc, X), rtol=0, atol=0)


def test_wrapper_without_features_is_refused_naming_the_inner_model() -> None:
    student = Wrapper(CountingLinear(0), "module")
    with pytest.raises(TypeError, match="student CountingLinear has no forward_features"):
        Distiller(student, _declaring(needs_features=True, needs_teacher=False))


def test_teacher_free_feature_loss_never_runs_the_teacher() -> None:
    student, teacher = FeatureLinear(0), FeatureLinear(1)
    loss = _declaring(needs_features=True, needs_teacher=False)
    Distiller(student, loss, teacher)(X, Y)
    assert teacher.calls == 0
    assert set(loss.seen) == {"student", "teacher", "student_features"}
    assert loss.seen["teacher"] is None


def test_feature_loss_keeps_given_teacher_logits_but_still_gets_teacher_features() -> None:
    student, teacher = FeatureLinear(0), FeatureLinear(1)
    loss = _declaring(needs_features=True)
    given = torch.full((5, 3), -2.0, dtype=torch.float64)
    Distiller(student, loss, teacher)(X, Y, teacher_logits=given)
    assert loss.seen["teacher"] is given
    torch.testing.assert_close(
        loss.seen["teacher_features"]["logits"], _by_hand(teacher.fc, X), rtol=0, atol=0
    )


def test_feature_loss_without_a_teacher_is_a_clear_error() -> None:
    loss = _declaring(needs_features=True)
    with pytest.raises(ValueError, match="needs a teacher but none was given"):
        Distiller(FeatureLinear(0), loss, None)(X, Y)


def test_index_loss_with_teacher_runs_it_unless_logits_are_given() -> None:
    """The context path without features: the teacher runs only when no logits are passed."""
    student, teacher = CountingLinear(0), CountingLinear(1)
    loss = _declaring(needs_sample_index=True)
    index = torch.tensor([4, 0, 2, 1, 3])
    distiller = Distiller(student, loss, teacher)
    logits, _ = distiller(X, Y, index=index)
    assert teacher.calls == 1 and loss.seen["index"] is index
    torch.testing.assert_close(loss.seen["teacher"], _by_hand(teacher.fc, X), rtol=0, atol=0)
    torch.testing.assert_close(logits, _by_hand(student.fc, X), rtol=0, atol=0)
    given = torch.ones(5, 3, dtype=torch.float64)
    distiller(X, Y, index=index, teacher_logits=given)
    assert teacher.calls == 1 and loss.seen["teacher"] is given


def test_logit_cache_uses_the_class_count_and_eval_mode() -> None:
    """Rows land at their sample indices; columns are the classes (3), not the batch size (2);
    a teacher with BN is cached in eval mode (running statistics 0 / 1: BN is the identity
    up to eps).  Expected: F.linear by hand, then x / sqrt(1 + 1e-5)."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double().train()
    data = torch.randn(6, 4, dtype=torch.float64)
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    batches = [(data[order[:2]], order[:2]), (data[order[2:4]], order[2:4]),
               (data[order[4:]], order[4:])]
    cache = TeacherLogitCache.compute(teacher, batches, 6, torch.device("cpu"))
    assert cache.logits.shape == (6, 3) and cache.logits.dtype == torch.float32
    linear = teacher[0]
    assert isinstance(linear, nn.Linear)
    expected = (_by_hand(linear, data) / math.sqrt(1 + 1e-5)).float()
    torch.testing.assert_close(cache(torch.arange(6)), expected)
    torch.testing.assert_close(cache(torch.tensor([3, 3])), expected[[3, 3]])


def test_logit_cache_of_nothing_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="empty dataset"):
        TeacherLogitCache.compute(CountingLinear(0), [], 4, torch.device("cpu"))


def test_logit_cache_refuses_batches_that_miss_an_index() -> None:
    """Indices 0, 1 and 3 of 4: row 2 would be uninitialised memory posing as logits."""
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    data = torch.randn(4, 4)
    batches = [(data[[0, 1]], torch.tensor([0, 1])), (data[[3]], torch.tensor([3]))]
    with pytest.raises(ValueError) as info:
        TeacherLogitCache.compute(teacher, batches, 4, torch.device("cpu"))
    assert str(info.value) == (
        "the teacher-logit cache saw 3 of 4 training images (first missing index 2): the "
        "batches must cover every index once (no drop_last, no sampler subset)"
    )


# --------------------------------------------------------------------------- models/base.py


def test_classifier_name_is_the_last_linear_layer() -> None:
    """Three linears in module order a, b, c: the classifier is "c" (not the first or second)."""

    class ThreeHeads(ZooModel):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 5)

    assert ThreeHeads().classifier_name() == "c"

    class NoLinear(ZooModel):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(TypeError, match="NoLinear has no nn.Linear classifier"):
        NoLinear().classifier_name()


def test_cifar_models_are_designed_for_32_pixel_images() -> None:
    """CIFAR images are 32x32 (Krizhevsky 2009); the zoo's CIFAR families keep the default."""
    assert ZooModel.native_input_size == 32
    assert create_model("resnet8x4", num_classes=10).native_input_size == 32


def test_pool_flatten_is_the_spatial_mean_per_channel() -> None:
    """(2, 3, 2, 2) with values 0..23: channel k of image n averages 4 consecutive numbers,
    so its mean is 4*(3n + k) + 1.5."""
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 2, 2)
    expected = torch.tensor([[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]], dtype=torch.float64)
    torch.testing.assert_close(pool_flatten(x), expected, rtol=0, atol=0)


class AffinePreact(PreactBlock):
    """preact(x) = 2x - 1; activate: the default ReLU."""

    def preact(self, x: Tensor) -> Tensor:
        return 2 * x - 1


class Halve(nn.Module):
    """A block without a final activation (like MobileNetV2's linear bottleneck)."""

    def forward(self, x: Tensor) -> Tensor:
        return x / 2


class TwoStage(StagedModel):
    """stem = x + 1; stage 1: [Halve, AffinePreact]; stage 2: [AffinePreact, Halve]."""

    def __init__(self) -> None:
        super().__init__()
        self.s1 = nn.ModuleList([Halve(), AffinePreact()])
        self.s2 = nn.ModuleList([AffinePreact(), Halve()])
        torch.manual_seed(0)
        self.fc = nn.Linear(2, 3).double()

    def _stem(self, x: Tensor) -> Tensor:
        return x + 1

    def _stages(self) -> list[nn.ModuleList]:
        return [self.s1, self.s2]

    def _classify(self, embedding: Tensor) -> Tensor:
        return self.fc(embedding)


def test_staged_model_features_follow_the_blocks_by_hand() -> None:
    """stem s = x + 1; stage 1: pre1 = 2(s/2) - 1 = x, out1 = relu(x); stage 2 ends in a block
    without activation, so out2 = pre2 = relu(2 relu(x) - 1) / 2 (the AffinePreact there runs
    whole); embedding = spatial mean of out2."""
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = TwoStage()
    feats = model.forward_features(x)
    torch.testing.assert_close(feats["stem"], x + 1)
    torch.testing.assert_close(feats["preact_stages"][0], x)
    torch.testing.assert_close(feats["stages"][0], x.clamp_min(0))
    out2 = (2 * x.clamp_min(0) - 1).clamp_min(0) / 2
    torch.testing.assert_close(feats["stages"][1], out2)
    torch.testing.assert_close(feats["preact_stages"][1], out2)
    torch.testing.assert_close(feats["pooled_map"], out2)
    embedding = out2.mean(dim=(2, 3))
    torch.testing.assert_close(feats["embedding"], embedding)
    logits = F.linear(embedding, model.fc.weight.detach(), model.fc.bias.detach())
    torch.testing.assert_close(feats["logits"], logits)
    torch.testing.assert_close(model(x), logits)


def test_channel_shuffle_interleaves_the_groups() -> None:
    """Channels 0..5 in 2 groups [0 1 2 | 3 4 5] -> 0 3 1 4 2 5; in 3 groups
    [0 1 | 2 3 | 4 5] -> 0 2 4 1 3 5; one group leaves the order alone."""
    x = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1, 1).expand(2, 6, 2, 3)
    order = {1: [0, 1, 2, 3, 4, 5], 2: [0, 3, 1, 4, 2, 5], 3: [0, 2, 4, 1, 3, 5]}
    for groups, channels in order.items():
        out = channel_shuffle(x, groups)
        assert out.shape == (2, 6, 2, 3)
        torch.testing.assert_close(out, x[:, channels], rtol=0, atol=0)


def test_channel_shuffle_keeps_the_memory_format() -> None:
    """channels_last in -> channels_last out (for 2 groups, where the reshape copies to NCHW);
    an NCHW input stays NCHW."""
    x = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    nchw = channel_shuffle(x, 2)
    assert nchw.is_contiguous() and not nchw.is_contiguous(memory_format=torch.channels_last)
    last = channel_shuffle(x.contiguous(memory_format=torch.channels_last), 2)
    assert last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(last, x[:, [0, 3, 1, 4, 2, 5]], rtol=0, atol=0)


def test_conv_bn_defaults_are_a_3x3_same_conv_without_bias_then_bn_relu() -> None:
    """Defaults: kernel 3, stride 1, groups 1, no conv bias, ReLU.  Parameters by hand:
    conv 3*2*3*3 = 54, BN 2*3 = 6 -> 60.  Output re-run with F.conv2d(padding=1),
    F.batch_norm (batch statistics) and F.relu."""
    torch.manual_seed(0)
    block = conv_bn(2, 3)
    conv_layer, bn = block[0], block[1]
    assert isinstance(conv_layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert sum(p.numel() for p in block.parameters()) == 60
    x = torch.randn(2, 2, 5, 5)
    conv = F.conv2d(x, conv_layer.weight.detach(), padding=1)
    expected = F.relu(F.batch_norm(conv, None, None, bn.weight.detach(),
                                   bn.bias.detach(), training=True))
    torch.testing.assert_close(block.train()(x), expected)
    assert isinstance(block[2], nn.ReLU) and len(block) == 3


def test_conv_bn_pads_any_odd_kernel_to_same_size_and_honours_its_options() -> None:
    """A 5x5 kernel pads by 5 // 2 = 2 (7x7 stays 7x7); stride 2 with a 5x5 kernel gives
    floor((7 + 4 - 5) / 2) + 1 = 4; groups=2 keeps 2*1*5*5 + ... weights; relu=False: no ReLU."""
    torch.manual_seed(0)
    block = conv_bn(4, 2, kernel=5, stride=2, groups=2, relu=False)
    conv_layer, bn = block[0], block[1]
    assert isinstance(conv_layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert conv_layer.weight.shape == (2, 2, 5, 5) and len(block) == 2
    x = torch.randn(2, 4, 7, 7)
    conv = F.conv2d(x, conv_layer.weight.detach(), stride=2, padding=2, groups=2)
    expected = F.batch_norm(conv, None, None, bn.weight.detach(), bn.bias.detach(),
                            training=True)
    out = block.train()(x)
    assert out.shape == (2, 2, 4, 4)
    torch.testing.assert_close(out, expected)
    assert conv_bn(2, 2, kernel=5)(torch.randn(1, 2, 7, 7)).shape == (1, 2, 7, 7)


def test_kaiming_fan_out_init_by_formula() -> None:
    """N(0, 2 / fan_out) with fan_out = out * kh * kw = 128 * 3 * 1 = 384 (a non-square
    kernel, so kh and kw cannot be swapped or repeated): std = sqrt(2 / 384) = 0.0722.
    24 576 draws: the sample std is within ~0.5 % (1 sigma); 3 % is 6 sigma."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 128, (3, 1), bias=True), nn.BatchNorm2d(128))
    conv, bn = model[0], model[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert conv.bias is not None
    with torch.no_grad():
        bn.weight.fill_(0.3)
        bn.bias.fill_(0.7)
    init_weights(model, conv="kaiming_fan_out", linear="default")
    weight = conv.weight
    fan_out = nn.init._calculate_fan_in_and_fan_out(weight)[1]
    assert fan_out == 384
    std = math.sqrt(2.0 / 384)
    assert abs(weight.std().item() / std - 1) < 0.03
    assert abs(weight.mean().item()) < 0.03 * std
    assert not conv.bias.any()
    assert bool((bn.weight == 1).all()) and not bn.bias.any()


def test_default_conv_and_linear_init_are_left_alone() -> None:
    """conv="default", linear="default": conv and linear tensors unchanged; BN still reset."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.bias.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, conv="default", linear="default")
    for key in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert torch.equal(model.state_dict()[key], before[key]), key
    assert not bn.bias.any()


@pytest.mark.parametrize("linear", ["zero_bias", "normal"])
def test_linear_init_schemes(linear: str) -> None:
    """zero_bias: weight untouched, bias 0.  normal: N(0, 0.01) (20 000 draws: std within
    ~0.5 %, mean within 0.01/sqrt(20000) = 7e-5 at 1 sigma), bias 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 100))
    layer = model[0]
    assert isinstance(layer, nn.Linear)
    before = layer.weight.detach().clone()
    init_weights(model, conv="kaiming_fan_out", linear=linear)  # type: ignore[arg-type]
    weight = layer.weight.detach()
    assert not layer.bias.any()
    if linear == "zero_bias":
        assert torch.equal(weight, before)
    else:
        assert abs(weight.std().item() / 0.01 - 1) < 0.03
        assert abs(weight.mean().item()) < 5e-4
