"""Every registered model: shapes, the forward_features contract, gradients, channels_last, AMP.

Batches of 2 keep this cheap on a shared 2-core CPU.  Numerical comparisons run
in train mode: freshly initialised deep ResNets in eval mode (identity BN
statistics) produce logits of 1e7 and more, which would make any tolerance
meaningless.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.models import ZooModel, create_model, list_models
from figkd.models.base import channel_shuffle
from figkd.models.wrn import WideBasicBlock, WideResNet

B = 2
NUM_CLASSES = 5
ALL = list_models()
IMAGENET = list_models("*_imagenet")

# class -> (stem side, stage sides) at the family's native input size (32, 224 or 8 px)
GRIDS: dict[str, tuple[int, list[int]]] = {
    "CifarResNet": (32, [32, 16, 8]),
    "WideResNet": (32, [32, 16, 8]),
    "CifarResNetBottleneck": (32, [32, 16, 8, 4]),
    "VGG": (32, [16, 8, 4, 4]),
    "MobileNetV2Cifar": (16, [16, 8, 4, 2]),
    "ShuffleNetV1": (32, [16, 8, 4]),
    "ShuffleNetV2": (32, [16, 8, 4]),
    "ResNetImageNet": (56, [56, 28, 14, 7]),
    "MobileNetV1": (112, [56, 28, 14, 7]),
    "MobileNetV2ImageNet": (112, [56, 28, 14, 7]),
    "TinyCNN": (8, [4, 2]),
}

# class -> how "stages" follow from "preact_stages" (mdistiller's preact_feats)
PREACT_RELATION = {
    "CifarResNet": "relu",
    "CifarResNetBottleneck": "relu",
    "VGG": "relu",
    "ShuffleNetV1": "relu",
    "ResNetImageNet": "relu",
    "MobileNetV1": "relu",
    "TinyCNN": "relu",
    "ShuffleNetV2": "shuffled relu",
    "WideResNet": "next BN",
    "MobileNetV2Cifar": "identity",
    "MobileNetV2ImageNet": "identity",
}

_CACHE: dict[str, ZooModel] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread_and_release_models() -> Iterator[None]:
    """Run on one thread (batches of 2 gain little from two, and spinning OpenMP workers
    slow everything down when the CPU is shared), then free the ~600 MB of shared weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _CACHE.clear()


def get_model(name: str) -> ZooModel:
    """One shared instance per name (tests that mutate state take a deepcopy)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name, num_classes=NUM_CLASSES)
    return _CACHE[name]


def small_size(model: ZooModel) -> int:
    """A cheap input side the model handles: 32 px, 64 for ImageNet-style, 8 for the demo net."""
    return {224: 64, 8: 8}.get(model.native_input_size, 32)


def images(size: int, channels: int = 3) -> Tensor:
    return torch.randn(B, channels, size, size, generator=torch.Generator().manual_seed(size))


def train_mode(model: ZooModel) -> ZooModel:
    """Batch-statistics BN (see module docstring) but no dropout, so runs are comparable."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    return model


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def sizes_for(name: str) -> list[int]:
    return [32, 64, 224] if name in IMAGENET else [32, 64]


def expected_grids(model: ZooModel, size: int) -> tuple[int, list[int]] | None:
    """(stem side, stage sides) at the native size, and for CIFAR-style models at 64 px.

    Adaptive pooling lets 64x64 work; grids double, except that VGG's 4th
    max-pool then runs and keeps its last grid at 4.
    """
    family = type(model).__name__
    stem, stages = GRIDS[family]
    if size == model.native_input_size:
        return stem, stages
    if size == 64 and model.native_input_size == 32:
        doubled = [2 * s for s in stages]
        if family == "VGG":
            doubled[-1] = stages[-1]
        return 2 * stem, doubled
    return None


@pytest.mark.parametrize(
    ("name", "size"), [(n, s) for n in ALL for s in sizes_for(n)], ids=lambda v: str(v)
)
def test_output_and_feature_shapes(name: str, size: int) -> None:
    model = get_model(name).eval()
    x = images(size)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (B, NUM_CLASSES)
    assert set(feats) == {"stem", "stages", "preact_stages", "pooled_map", "embedding", "logits"}
    torch.testing.assert_close(feats["logits"], logits, rtol=0, atol=0)
    # the pooled map is what the head averages: its spatial mean is the embedding
    pooled = feats["pooled_map"]
    assert pooled.dim() == 4 and pooled.shape[:2] == (B, model.embedding_dim)
    torch.testing.assert_close(pooled.mean(dim=(2, 3)), feats["embedding"], rtol=1e-5, atol=1e-6)
    assert feats["embedding"].shape == (B, model.embedding_dim)
    assert feats["stem"].shape[:2] == (B, model.stem_channels)
    assert len(feats["stages"]) == len(feats["preact_stages"]) == len(model.stage_channels)
    for stage, pre, channels in zip(feats["stages"], feats["preact_stages"], model.stage_channels):
        assert stage.shape[:2] == (B, channels)
        assert pre.shape == stage.shape
    grids = expected_grids(model, size)
    if grids is not None:
        assert feats["stem"].shape[-1] == grids[0]
        assert [s.shape[-1] for s in feats["stages"]] == grids[1]


def test_every_family_has_its_grids_checked() -> None:
    checked = {type(get_model(n)).__name__ for n in ALL
               if any(expected_grids(get_model(n), s) for s in sizes_for(n))}
    assert checked == set(GRIDS) - {"TinyCNN"}


def test_demo_net_grids_at_8px() -> None:
    model = get_model("tiny_cnn").eval()
    with torch.no_grad():
        feats = model.forward_features(images(8))
    assert feats["stem"].shape[-1] == 8
    assert [s.shape[-1] for s in feats["stages"]] == GRIDS["TinyCNN"][1]


@pytest.mark.parametrize("name", ALL)
def test_preact_features_relate_to_stages(name: str) -> None:
    model = get_model(name).eval()
    with torch.no_grad():
        feats = model.forward_features(images(small_size(model)))
    relation = PREACT_RELATION[type(model).__name__]
    pairs = list(zip(feats["stages"], feats["preact_stages"]))
    for stage, pre in pairs:
        if relation == "relu":
            assert (pre < 0).any(), "a pre-activation feature should keep negative values"
            torch.testing.assert_close(stage, F.relu(pre), rtol=0, atol=0)
        elif relation == "shuffled relu":
            assert (pre < 0).any()
            torch.testing.assert_close(stage, channel_shuffle(F.relu(pre), 2), rtol=0, atol=0)
        elif relation == "identity":
            assert stage is pre or torch.equal(stage, pre)
    if relation == "next BN":  # WRN: each stage output through the BN that follows it
        assert isinstance(model, WideResNet)
        first2, first3 = model.block2.layer[0], model.block3.layer[0]
        assert isinstance(first2, WideBasicBlock) and isinstance(first3, WideBasicBlock)
        with torch.no_grad():
            nexts = [first2.bn1, first3.bn1, model.bn1]
            for (stage, pre), bn in zip(pairs, nexts):
                torch.testing.assert_close(pre, bn(stage))


@pytest.mark.parametrize("name", ALL)
def test_gradient_reaches_the_first_layer(name: str) -> None:
    model = copy.deepcopy(get_model(name)).train()
    x = images(small_size(model)).requires_grad_(True)
    feats = model.forward_features(x)
    loss = feats["logits"].square().mean() + sum(p.square().mean() for p in feats["preact_stages"])
    loss.backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_in_channels_one(name: str) -> None:
    model = create_model(name, num_classes=3, in_channels=1)
    assert first_conv(model).in_channels == 1
    size = small_size(model)
    with torch.no_grad():
        assert model.eval()(images(size, channels=1)).shape == (B, 3)


def _relative_error(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", ALL)
def test_channels_last_matches_contiguous(name: str) -> None:
    model = train_mode(copy.deepcopy(get_model(name)))
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = images(small_size(model))
    with torch.no_grad():
        reference = model(x)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
        feats = model_cl.forward_features(x.contiguous(memory_format=torch.channels_last))
    assert _relative_error(out, reference) < 1e-4
    assert _relative_error(feats["logits"], reference) < 1e-4
    assert all(s.is_contiguous(memory_format=torch.channels_last) for s in feats["stages"])


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_forward_on_cpu(name: str) -> None:
    """Runs and stays finite; values are not compared, since batch-of-2 BN statistics on
    1x1-2x2 grids amplify bf16 rounding far beyond any useful tolerance."""
    model = copy.deepcopy(get_model(name)).train()
    x = images(small_size(model))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (B, NUM_CLASSES)
    assert torch.isfinite(logits.float()).all()
    assert feats["embedding"].shape == (B, model.embedding_dim)
    assert feats["logits"].dtype == torch.bfloat16
