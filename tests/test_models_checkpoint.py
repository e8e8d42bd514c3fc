"""load_checkpoint: formats it accepts, and errors that name both sides of a mismatch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

from figkd.models import CheckpointMismatchError, create_model, load_checkpoint
from figkd.models.resnet_imagenet import ResNetImageNet


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_through_a_file_records_digest_and_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("resnet8x4", num_classes=20)
    path = tmp_path / "teacher.pt"
    torch.save(source.state_dict(), path)
    target = create_model("resnet8x4", num_classes=20)
    assert not _same_weights(source, target)
    info = load_checkpoint(target, path)
    assert _same_weights(source, target)
    assert info.num_classes == 20
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.source == str(path)


@pytest.mark.parametrize("wrap", ["model", "state_dict"])
def test_accepts_a_state_dict_nested_under_model_or_state_dict(tmp_path: Path, wrap: str) -> None:
    """RepDistiller / mdistiller teachers are {"model": state_dict, "epoch": ..., ...}."""
    source = create_model("wrn_16_2", num_classes=10)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({wrap: source.state_dict(), "epoch": 240, "best_acc": 73.5}, path)
    target = create_model("WRN-16-2", num_classes=10)
    load_checkpoint(target, path)
    assert _same_weights(source, target)


def test_strips_ddp_and_compile_prefixes() -> None:
    source = create_model("vgg8", num_classes=10)
    state = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    target = create_model("vgg8", num_classes=10)
    info = load_checkpoint(target, state)
    assert _same_weights(source, target)
    assert info.sha256 is None and info.source == "<state dict>"


def test_class_count_mismatch_names_both_sides() -> None:
    state = create_model("resnet8x4", num_classes=100).state_dict()
    model = create_model("resnet8x4", num_classes=200)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    message = str(info.value)
    assert "checkpoint <state dict> has 100 classes (fc.weight (100, 256))" in message
    assert "'resnet8x4' (CifarResNet) was built with num_classes=200" in message


def test_architecture_mismatch_lists_missing_and_unexpected_keys() -> None:
    state = create_model("resnet8x4", num_classes=10).state_dict()
    model = create_model("wrn_16_2", num_classes=10)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    message = str(info.value)
    assert "does not fit the model 'wrn_16_2' (WideResNet)" in message
    assert "missing keys [block1.layer.0.bn1.weight" in message
    assert "unexpected keys [" in message and "layer1.0.conv1.weight" in message


def test_shape_mismatch_is_reported_even_when_not_strict() -> None:
    state = create_model("resnet32x4", num_classes=10).state_dict()
    model = create_model("resnet32", num_classes=10)
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \[conv1.weight: "
                       r"checkpoint \(32, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        load_checkpoint(model, state, strict=False)


def test_recorded_architecture_is_quoted(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": create_model("resnet20", 10).state_dict(), "arch": "resnet20"}, path)
    with pytest.raises(CheckpointMismatchError, match=r"\(recorded arch='resnet20'\)"):
        load_checkpoint(create_model("resnet8x4", num_classes=10), path)


def test_exclude_classifier_loads_torchvision_imagenet_weights_for_200_classes() -> None:
    imagenet = torchvision.models.resnet18(weights=None, num_classes=1000)
    model = create_model("resnet18_imagenet", num_classes=200)
    assert isinstance(model, ResNetImageNet)
    with pytest.raises(CheckpointMismatchError, match="1000 classes"):
        load_checkpoint(model, imagenet.state_dict())
    own_fc = model.fc.weight.clone()
    info = load_checkpoint(model, imagenet.state_dict(), exclude_classifier=True)
    assert info.skipped == ("fc.weight", "fc.bias") and info.num_classes == 1000
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.fc.weight, own_fc)


def test_state_dict_keys_follow_the_public_zoos() -> None:
    """Names match RepDistiller/mdistiller (so their teachers load) and torchvision."""
    expected = {
        "resnet8x4": ["conv1.weight", "layer1.0.downsample.0.weight", "fc.weight"],
        "wrn_40_2": [
            "block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.weight", "bn1.weight"
        ],
        "vgg13": ["block0.0.bias", "block0.4.running_var", "block4.3.weight", "classifier.weight"],
        "MobileNetV2": ["conv1.1.weight", "blocks.6.0.conv.7.weight", "conv2.0.weight",
                        "classifier.0.bias"],
        "ShuffleV1": ["layer3.3.conv3.weight", "linear.weight"],
        "ShuffleV2": ["layer1.0.conv5.weight", "layer3.3.bn3.bias", "conv2.weight", "bn2.bias"],
        "ResNet50": ["layer1.0.shortcut.0.weight", "layer4.2.bn3.weight", "linear.weight"],
        "mobilenetv1_imagenet": ["model.0.0.weight", "model.13.4.weight", "fc.weight"],
    }
    for name, keys in expected.items():
        state = create_model(name, num_classes=10).state_dict()
        assert set(keys) <= state.keys(), name
    for name, tv in (("resnet34_imagenet", torchvision.models.resnet34),
                     ("mobilenetv2_imagenet", torchvision.models.mobilenet_v2)):
        ours = create_model(name, num_classes=10).state_dict()
        theirs = tv(weights=None, num_classes=10).state_dict()
        assert list(ours) == list(theirs)
        assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_bad_inputs(tmp_path: Path) -> None:
    model = create_model("tiny_cnn", num_classes=10)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(model, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(model, {"model": {"fc.weight": "not a tensor"}})
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="SHA-256"):
        load_checkpoint(model, path, sha256="0" * 64)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint holding a whole pickled module does not load."""
    path = tmp_path / "pickled.pt"
    torch.save({"model": create_model("tiny_cnn", num_classes=10)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(create_model("tiny_cnn", num_classes=10), path)


def test_damaged_or_foreign_files_are_named_errors(tmp_path: Path) -> None:
    """A truncated copy or a file that is not a checkpoint: a ValueError that names the file
    (the CLI prints it as one line), for teachers and for resumes alike."""
    from figkd.engine import load_teacher, load_weights_only

    good = tmp_path / "good.pt"
    torch.save({"model": create_model("tiny_cnn", num_classes=10).state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "notes.pt"
    garbage.write_text("these are not weights")
    for path, why in ((truncated, "damaged, truncated"), (garbage, "not a torch checkpoint")):
        with pytest.raises(ValueError, match=why) as info:
            load_weights_only(path)
        assert str(path) in str(info.value)
        with pytest.raises(ValueError, match=str(path)):
            load_teacher("tiny_cnn", path, 10)
        with pytest.raises(ValueError, match=str(path)):
            load_checkpoint(create_model("tiny_cnn", num_classes=10), path)
