"""Transform presets matching the paper, usable per image (torchvision) or per batch.

Each preset is data - sizes, padding, flip, rotation, mean/std - not code, and builds
both the per-image torchvision pipeline and the parameters of the batch-wise fast
path (:mod:`figkd.data.batch_loader`), so the two paths cannot drift apart.

Presets:
  cifar                CIFAR-100 recipe (mdistiller/RepDistiller): RandomCrop(32, pad 4) + flip.
  tiny-imagenet-64     mdistiller's Tiny-ImageNet recipe: RandomRotation(20) + flip at 64x64.
  tiny-imagenet-64-crop  RandomCrop(64, pad 8) + flip at 64x64 (CIFAR-style, scaled).
  tiny-imagenet-32     resized to 32x32, then the CIFAR recipe (for the CIFAR pairs).
  fine-grained-224     RandomResizedCrop(224) + flip; test Resize(256) + CenterCrop(224).
  fine-grained-32      resized to 32x32, then the CIFAR recipe (paper's 32x32 FGVR tables).
  digits               sklearn digits: normalisation only (tensor input, no augmentation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torchvision.transforms as T

from figkd.data.randaugment import Cutout, RandAugment
from figkd.registry import Registry

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
# mdistiller's Tiny-ImageNet statistics (its tiny_imagenet.py).
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Mean and std of all 1,797 sklearn digits scaled to [0, 1].
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3761,)


@dataclass(frozen=True)
class SmallImagePreset:
    """Fixed-size images: optional resize, then rotate / padded crop / flip, then normalise.

    These are exactly the operations the fast path can run on whole batches, so every
    ``SmallImagePreset`` works with both :func:`build_transforms` and the batch loader.
    ``resize`` means "resize to ``size`` x ``size`` once at decode time" (bilinear, as
    ``T.Resize``); the uint8 cache stores images after that step.
    """

    name: str
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 0
    flip: bool = True
    rotate: float = 0.0
    resize: bool = False
    tensor_input: bool = False
    description: str = ""
    cutout: float = 0.5

    fast_path: bool = field(default=True, init=False)

    def _geometry(self) -> list[Any]:
        steps: list[Any] = []
        if self.rotate:
            steps.append(T.RandomRotation(self.rotate))
        if self.padding:
            steps.append(T.RandomCrop(self.size, padding=self.padding))
        if self.flip:
            steps.append(T.RandomHorizontalFlip())
        return steps

    def _head(self) -> list[Any]:
        return [T.Resize((self.size, self.size))] if self.resize else []

    def _tail(self) -> list[Any]:
        to_tensor = [] if self.tensor_input else [T.ToTensor()]
        return to_tensor + [T.Normalize(self.mean, self.std)]

    def train(self) -> T.Compose:
        return T.Compose(self._head() + self._geometry() + self._tail())

    def test(self) -> T.Compose:
        return T.Compose(self._head() + self._tail())

    def strong(self) -> T.Compose:
        """MLKD's strong view: the train geometry, RandAugment, Cutout, then normalise."""
        extra = [RandAugment(num_ops=2, max_magnitude=10), Cutout(self.cutout)]
        return T.Compose(self._head() + self._geometry() + extra + self._tail())


@dataclass(frozen=True)
class LargeImagePreset:
    """ImageNet-style pipeline for variable-size images (no batch fast path)."""

    name: str
    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""
    cutout: float = 0.5

    fast_path: bool = field(default=False, init=False)

    def train(self) -> T.Compose:
        return T.Compose([
            T.RandomResizedCrop(self.size), T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(self.mean, self.std),
        ])

    def test(self) -> T.Compose:
        return T.Compose([
            T.Resize(self.resize), T.CenterCrop(self.size),
            T.ToTensor(), T.Normalize(self.mean, self.std),
        ])

    def strong(self) -> T.Compose:
        return T.Compose([
            T.RandomResizedCrop(self.size), T.RandomHorizontalFlip(),
            RandAugment(num_ops=2, max_magnitude=10), Cutout(self.cutout),
            T.ToTensor(), T.Normalize(self.mean, self.std),
        ])


Preset = SmallImagePreset | LargeImagePreset
PRESETS: Registry[Preset] = Registry("transform preset")


def register_preset(preset: Preset, aliases: tuple[str, ...] = ()) -> Preset:
    """Add a preset object to :data:`PRESETS` (users may register their own)."""
    PRESETS.add(preset.name, preset, aliases=aliases)
    return preset


register_preset(SmallImagePreset(
    "cifar", 32, CIFAR100_MEAN, CIFAR100_STD, padding=4,
    description="CIFAR-100: RandomCrop(32, padding=4) + HFlip, CIFAR-100 mean/std",
), aliases=("cifar100",))
register_preset(SmallImagePreset(
    "tiny-imagenet-64", 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, rotate=20.0,
    description="Tiny-ImageNet 64x64: RandomRotation(20) + HFlip (mdistiller recipe)",
), aliases=("tiny-imagenet",))
register_preset(SmallImagePreset(
    "tiny-imagenet-64-crop", 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, padding=8,
    description="Tiny-ImageNet 64x64: RandomCrop(64, padding=8) + HFlip",
))
register_preset(SmallImagePreset(
    "tiny-imagenet-32", 32, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, padding=4, resize=True,
    description="Tiny-ImageNet resized to 32x32, then RandomCrop(32, padding=4) + HFlip",
))
register_preset(LargeImagePreset(
    "fine-grained-224", 224, 256, IMAGENET_MEAN, IMAGENET_STD,
    description="FGVR: RandomResizedCrop(224) + HFlip; test Resize(256) + CenterCrop(224)",
), aliases=("fine-grained",))
register_preset(SmallImagePreset(
    "fine-grained-32", 32, IMAGENET_MEAN, IMAGENET_STD, padding=4, resize=True,
    description="FGVR resized to 32x32, then RandomCrop(32, padding=4) + HFlip",
))
register_preset(SmallImagePreset(
    "digits", 8, DIGITS_MEAN, DIGITS_STD, flip=False, tensor_input=True,
    description="sklearn digits (1x8x8 tensors in [0, 1]): normalisation only",
))


def list_presets(pattern: str | None = None) -> list[str]:
    return PRESETS.names(pattern)


def get_preset(preset: str | Preset) -> Preset:
    return PRESETS.get(preset) if isinstance(preset, str) else preset


def build_transforms(preset: str | Preset, train: bool = True) -> Callable[[Any], Any]:
    """The per-image transform of ``preset`` for training (augmented) or evaluation."""
    spec = get_preset(preset)
    return spec.train() if train else spec.test()
