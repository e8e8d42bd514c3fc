"""Transform presets and MLKD's paired weak/strong views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from figkd import data
from figkd.data.randaugment import OPS, Cutout, RandAugment


def _image(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("preset,size,out", [
    ("cifar", (32, 32), 32), ("tiny-imagenet-64", (64, 64), 64),
    ("tiny-imagenet-64-crop", (64, 64), 64),
    ("tiny-imagenet-32", (64, 64), 32), ("fine-grained-224", (300, 260), 224),
    ("fine-grained-32", (300, 260), 32),
])
def test_presets_give_the_paper_sizes(preset, size, out):
    for train in (True, False):
        x = data.build_transforms(preset, train=train)(_image(size))
        assert x.shape == (3, out, out) and x.dtype == torch.float32


def test_preset_pipelines_match_the_recipes():
    names = lambda t: [type(s).__name__ for s in t.transforms]
    cifar = data.build_transforms("cifar", train=True)
    assert isinstance(cifar, T.Compose)
    assert names(cifar) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert cifar.transforms[0].padding == 4
    assert cifar.transforms[-1].mean == data.transforms.CIFAR100_MEAN
    assert names(data.build_transforms("cifar", train=False)) == ["ToTensor", "Normalize"]
    assert names(data.build_transforms("tiny-imagenet-64")) == [
        "RandomRotation", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert names(data.build_transforms("tiny-imagenet-32")) == [
        "Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    fg = data.build_transforms("fine-grained-224", train=True)
    assert names(fg) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    fg_test = data.build_transforms("fine-grained-224", train=False)
    assert isinstance(fg_test, T.Compose)
    assert names(fg_test) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert fg_test.transforms[0].size == 256 and fg_test.transforms[1].size == (224, 224)
    with pytest.raises(ValueError, match="fine-grained-224"):
        data.build_transforms("fine-grained-225")


def test_cifar_test_transform_is_exact_normalisation():
    image = _image((32, 32))
    x = data.build_transforms("cifar", train=False)(image)
    raw = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor(data.transforms.CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(data.transforms.CIFAR100_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)


def test_digits_preset_normalises_tensors():
    train = data.load_dataset("digits", transform=data.build_transforms("digits", train=True))
    stacked = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(float(stacked.mean())) < 0.01 and abs(float(stacked.std()) - 1) < 0.01


def test_paired_views_for_mlkd(tmp_path):
    data.synthetic.write_fake_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    paired = data.build_paired_transforms("cifar")
    ds = data.load_dataset("cifar100", root=tmp_path, transform=paired)
    (weak, strong), label = ds[3]
    assert weak.shape == strong.shape == (3, 32, 32) and label == 3
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    (weak_b, strong_b), labels = batch
    assert weak_b.shape == strong_b.shape == (8, 3, 32, 32) and labels.tolist() == list(range(8))
    # The strong view is more distorted: over many draws it differs from the clean image more.
    image = Image.new("RGB", (32, 32), (200, 30, 90))
    clean = data.build_transforms("cifar", train=False)(image)
    torch.manual_seed(0)
    diffs = [[(view - clean).abs().mean().item() for view in paired(image)] for _ in range(60)]
    weak_diff, strong_diff = np.mean(diffs, axis=0)
    assert strong_diff > weak_diff
    torch.manual_seed(1)
    first = paired(image)
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(first, paired(image)))
    digits_pair = data.build_paired_transforms("digits")(torch.rand(1, 8, 8))
    assert digits_pair[0].shape == digits_pair[1].shape == (1, 8, 8)


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("kind", ["pil", "uint8", "float"])
def test_every_randaugment_op_keeps_size_and_type(op, kind):
    pil = _image((32, 32))
    image = {"pil": pil, "uint8": T.PILToTensor()(pil), "float": T.ToTensor()(pil)}[kind]
    torch.manual_seed(0)
    out = OPS[op](image if kind != "float" else (image * 255).round().to(torch.uint8), 1.0)
    if kind == "pil":
        assert out.size == (32, 32) and out.mode == "RGB"
    else:
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    torch.manual_seed(0)
    augmented = RandAugment(num_ops=3, prob=1.0)(image)
    assert type(augmented) is type(image)


def test_cutout_square_is_gray_and_at_most_half_the_side():
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    torch.manual_seed(0)
    sides = []
    for _ in range(200):
        out = np.asarray(Cutout(0.5)(image))
        gray = (out == 127).all(-1)
        assert set(np.unique(out)) <= {0, 127}
        if gray.any():
            sides.append(max(gray.any(0).sum(), gray.any(1).sum()))
    assert max(sides) <= 16 and min(sides) < 6 and len(sides) > 150
