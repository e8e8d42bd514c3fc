"""The model registry: names, the paper's aliases, errors, and the attributes every model has."""

from __future__ import annotations

import pytest
from torch import nn

from figkd.models import MODELS, ZooModel, aliases_of, create_model, list_models, register_model
from figkd.registry import UnknownNameError

CIFAR_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "ShuffleV1", "ShuffleV2", "MobileNetV2",
    "ResNet50",
]
IMAGENET_NAMES = [
    "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet",
    "mobilenetv1_imagenet", "mobilenetv2_imagenet",
]

# the paper's spellings -> the public zoo's canonical name
PAPER_ALIASES = {
    "ResNet32x4": "resnet32x4",
    "ResNet8x4": "resnet8x4",
    "ResNet110": "resnet110",
    "ResNet56": "resnet56",
    "ResNet20": "resnet20",
    "ResNet32": "resnet32",
    "WRN-40-2": "wrn_40_2",
    "WRN-16-2": "wrn_16_2",
    "WRN-40-1": "wrn_40_1",
    "VGG13": "vgg13",
    "VGG8": "vgg8",
    "vgg13_bn": "vgg13",
    "ShuffleNet-V1": "ShuffleV1",
    "ShuffleNet-V2": "ShuffleV2",
    "MobileNet-V2": "MobileNetV2",
    "mobile_half": "MobileNetV2",
    "MobileNetV1": "mobilenetv1_imagenet",
}


def test_zoo_holds_every_model_of_the_issue() -> None:
    assert set(CIFAR_NAMES + IMAGENET_NAMES + ["tiny_cnn"]) == set(list_models())


@pytest.mark.parametrize(("alias", "canonical"), sorted(PAPER_ALIASES.items()))
def test_paper_spelling_resolves_to_the_same_class(alias: str, canonical: str) -> None:
    assert MODELS.canonical(alias) == canonical
    a, b = create_model(alias, num_classes=10), create_model(canonical, num_classes=10)
    assert type(a) is type(b)
    assert a.arch == b.arch == canonical
    assert a.state_dict().keys() == b.state_dict().keys()
    assert alias in aliases_of(canonical)


def test_no_alias_means_two_architectures() -> None:
    targets: dict[str, set[str]] = {}
    for alias, target in MODELS.aliases().items():
        targets.setdefault(alias.lower(), set()).add(target)
    for name in list_models():
        targets.setdefault(name.lower(), set()).add(name)
    ambiguous = {k: v for k, v in targets.items() if len(v) > 1}
    assert not ambiguous


def test_cifar_and_imagenet_resnet50_are_distinct() -> None:
    cifar = create_model("ResNet50", num_classes=10)
    imagenet = create_model("resnet50_imagenet", num_classes=10)
    assert isinstance(cifar.conv1, nn.Conv2d) and isinstance(imagenet.conv1, nn.Conv2d)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="resnet32x4") as info:
        create_model("resnet32x8")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match="resnet18_imagenet"):
        create_model("resnet18")


def test_list_models_filters_with_a_case_insensitive_glob() -> None:
    assert list_models("wrn_40*") == ["wrn_40_1", "wrn_40_2"]
    assert list_models("*IMAGENET") == sorted(IMAGENET_NAMES)
    assert list_models("nothing*") == []


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_bad_class_count_is_rejected(num_classes: float) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet8", num_classes=num_classes)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(CIFAR_NAMES + IMAGENET_NAMES + ["tiny_cnn"]))
def test_contract_attributes(name: str) -> None:
    model = create_model(name, num_classes=7)
    assert isinstance(model, ZooModel)
    assert model.arch == name
    assert model.num_classes == 7 and model.in_channels == 3
    clf = model.get_submodule(model.classifier_name())
    assert isinstance(clf, nn.Linear)
    assert (clf.in_features, clf.out_features) == (model.embedding_dim, 7)
    assert len(model.stage_channels) >= 2
    assert all(isinstance(c, int) and c > 0 for c in model.stage_channels)


def test_register_model_adds_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from figkd.models.tiny import TinyCNN

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    monkeypatch.setattr(MODELS, "_aliases", dict(MODELS._aliases))

    @register_model("tiny_cnn_wide", aliases=("TinyWide",))
    def tiny_wide(num_classes: int = 10, in_channels: int = 3) -> TinyCNN:
        return TinyCNN(num_classes=num_classes, in_channels=in_channels, width=32)

    model = create_model("TinyWide", num_classes=3)
    assert model.arch == "tiny_cnn_wide" and model.width == 32
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_cnn")(tiny_wide)


def test_tiny_cnn_widths_for_the_demo() -> None:
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=64)
    student = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)
    assert teacher.stage_channels == [128, 256] and student.stage_channels == [16, 32]
    assert teacher.in_channels == student.in_channels == 1
    with pytest.raises(ValueError, match="width"):
        create_model("tiny_cnn", width=0)


def _fc(model: ZooModel) -> nn.Linear:
    assert isinstance(model.fc, nn.Linear)
    return model.fc


def test_class_count_boundaries_and_the_cifar100_default() -> None:
    """One class is the smallest valid head; 4.0 is the integer 4; without a count the model
    is built for CIFAR-100, the paper's main benchmark (100 outputs)."""
    assert _fc(create_model("resnet8", num_classes=1)).out_features == 1
    assert _fc(create_model("resnet8", num_classes=4.0)).out_features == 4  # type: ignore[arg-type]
    assert _fc(create_model("resnet8")).out_features == 100
