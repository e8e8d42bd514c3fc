"""RandAugment-style strong augmentation and Cutout, for MLKD's strong view.

MLKD's strong view (reference 2.3) is: the weak crop/flip, then 2 ops drawn *with
replacement* from 14 PIL ops at random magnitudes, then Cutout of a random size in
[0, 0.5] of the image side. This is our own implementation of that recipe on top of
torchvision's functional ops; each op fires with probability 0.5 at an integer
magnitude drawn from 1..max_magnitude, and randomness comes from torch's RNG so
``torch.manual_seed`` and DataLoader worker seeding make it reproducible.
Works on PIL images and on tensors (float tensors in [0, 1] go through uint8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageDraw

Op = Callable[[Any, float], Any]
GRAY = 128


def _sign() -> float:
    return 1.0 if torch.rand(()) < 0.5 else -1.0


def _enhance(adjust: Callable[[Any, float], Any]) -> Op:
    return lambda img, m: adjust(img, 1.0 + 0.9 * m * _sign())


def _fill(img: Any) -> list[float]:
    return [float(GRAY)] * F.get_image_num_channels(img)


def _rotate(img: Any, m: float) -> Any:
    return F.rotate(img, 30.0 * m * _sign(), fill=_fill(img))


def _shear(axis: int) -> Op:
    def op(img: Any, m: float) -> Any:
        degrees = math.degrees(math.atan(0.3 * m)) * _sign()
        shear = [degrees, 0.0] if axis == 0 else [0.0, degrees]
        return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=_fill(img))

    return op


def _translate(axis: int) -> Op:
    def op(img: Any, m: float) -> Any:
        width, height = F.get_image_size(img)
        shift = round(0.3 * m * (width if axis == 0 else height) * _sign())
        move = [shift, 0] if axis == 0 else [0, shift]
        return F.affine(img, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0],
                        fill=_fill(img))

    return op


OPS: dict[str, Op] = {
    "Identity": lambda img, m: img,
    "AutoContrast": lambda img, m: F.autocontrast(img),
    "Equalize": lambda img, m: F.equalize(img),
    "Rotate": _rotate,
    "Solarize": lambda img, m: F.solarize(img, 256.0 - 256.0 * m),
    "Color": _enhance(F.adjust_saturation),
    "Posterize": lambda img, m: F.posterize(img, 8 - int(4 * m)),
    "Contrast": _enhance(F.adjust_contrast),
    "Brightness": _enhance(F.adjust_brightness),
    "Sharpness": _enhance(F.adjust_sharpness),
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateX": _translate(0),
    "TranslateY": _translate(1),
}


def _to_uint8(img: Any) -> tuple[Any, bool]:
    if isinstance(img, torch.Tensor) and img.is_floating_point():
        return img.mul(255).round_().clamp_(0, 255).to(torch.uint8), True
    return img, False


class RandAugment:
    """Apply ``num_ops`` ops drawn with replacement from :data:`OPS`, each with prob ``prob``."""

    def __init__(self, num_ops: int = 2, max_magnitude: int = 10, prob: float = 0.5) -> None:
        self.num_ops = num_ops
        self.max_magnitude = max_magnitude
        self.prob = prob
        self.names = list(OPS)

    def __call__(self, img: Any) -> Any:
        img, was_float = _to_uint8(img)
        for _ in range(self.num_ops):
            name = self.names[int(torch.randint(len(self.names), ()))]
            magnitude = int(torch.randint(1, self.max_magnitude + 1, ())) / self.max_magnitude
            if torch.rand(()) < self.prob:
                img = OPS[name](img, magnitude)
        return img.float().div(255) if was_float else img

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, max_magnitude={self.max_magnitude}, "
                f"prob={self.prob})")


class Cutout:
    """Gray out one square whose side is uniform in [0, ``max_fraction``] of the image side.

    The square's centre is uniform over the image and the square is clipped at the
    border, as in the FixMatch/MLKD ``CutoutAbs``.  Ours grays the half-open box
    ``[x0, x1) x [y0, y1)`` (the side it drew); ``CutoutAbs`` passes ``(x0, y0, x1, y1)``
    to PIL's ``rectangle``, which includes the end corner, so its box is one row and one
    column larger.
    """

    def __init__(self, max_fraction: float = 0.5, fill: int = 127) -> None:
        self.max_fraction = max_fraction
        self.fill = fill

    def __call__(self, img: Any) -> Any:
        width, height = F.get_image_size(img)
        side = float(torch.rand(())) * self.max_fraction * min(width, height)
        cx, cy = float(torch.rand(())) * width, float(torch.rand(())) * height
        x0, y0 = int(max(0.0, cx - side / 2)), int(max(0.0, cy - side / 2))
        x1, y1 = int(min(width, x0 + side)), int(min(height, y0 + side))
        if x1 <= x0 or y1 <= y0:
            return img
        if isinstance(img, Image.Image):
            img = img.copy()
            bands = len(img.getbands())
            ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], fill=(self.fill,) * bands)
            return img
        img = img.clone()
        img[..., y0:y1, x0:x1] = self.fill / 255.0 if img.is_floating_point() else self.fill
        return img

    def __repr__(self) -> str:
        return f"Cutout(max_fraction={self.max_fraction}, fill={self.fill})"
