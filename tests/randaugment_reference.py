"""Per-image references for the batched strong view: torchvision's tensor functionals.

Shared by tests/test_batch_randaugment.py (op by op) and tests/test_strong_view_loader.py
(the whole strong view of the fast path's loader).
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF

from figkd.data.batch_randaugment import OP_NAMES


def make_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Varied uint8 images, so every op has work to do: noise in random narrow ranges
    (autocontrast/equalize stretch them), full-range noise, a smooth gradient, and the
    degenerate cases (a constant image, a two-valued one)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, channels, height, width, generator=g)
    low = torch.randint(0, 160, (batch, channels, 1, 1), generator=g)
    span = torch.randint(1, 96, (batch, channels, 1, 1), generator=g)
    images = (low + noise * span).to(torch.uint8)
    images[0] = 77
    images[1] = torch.where(noise[1] < 0.5, 10, 200).to(torch.uint8)
    images[2] = (noise[2] * 256).clamp(max=255).to(torch.uint8)
    ramp = torch.linspace(0, 255, height).view(height, 1) + torch.linspace(0, 255, width)
    images[3] = (ramp / 2).to(torch.uint8).expand(channels, height, width)
    return images


def reference(img: torch.Tensor, name: str, magnitude: float, sign: float,
              fill: int = 128) -> torch.Tensor:
    """The recipe's op on one uint8 CHW image, written out with torchvision's functionals."""
    channels, height, width = img.shape
    fills = [float(fill)] * channels
    factor = 1.0 + 0.9 * magnitude * sign
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return TF.autocontrast(img)
    if name == "Equalize":
        return TF.equalize(img)
    if name == "Rotate":
        return TF.rotate(img, 30.0 * magnitude * sign, fill=fills)
    if name == "Solarize":
        return TF.solarize(img, 256.0 - 256.0 * magnitude)
    if name == "Color":
        return TF.adjust_saturation(img, factor)
    if name == "Posterize":
        return TF.posterize(img, 8 - int(4 * magnitude))
    if name == "Contrast":
        return TF.adjust_contrast(img, factor)
    if name == "Brightness":
        return TF.adjust_brightness(img, factor)
    if name == "Sharpness":
        return TF.adjust_sharpness(img, factor)
    if name in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(0.3 * magnitude)) * sign
        shear = [degrees, 0.0] if name == "ShearX" else [0.0, degrees]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=fills)
    size = width if name == "TranslateX" else height
    shift = round(0.3 * magnitude * size * sign)
    move = [shift, 0] if name == "TranslateX" else [0, shift]
    return TF.affine(img, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], fill=fills)


def forced(name: str, batch: int, height: int, width: int, max_magnitude: int = 10
           ) -> dict[str, torch.Tensor]:
    """One-slot params that run ``name`` on every image, image i at level 1 + (i // 2) %
    max_magnitude and sign (-1)**i (so 20 images cover every pair), without Cutout."""
    i = torch.arange(batch)
    return {
        "op": torch.full((batch, 1), OP_NAMES.index(name)),
        "level": (1 + (i // 2) % max_magnitude).view(batch, 1),
        "fire": torch.ones(batch, 1, dtype=torch.bool),
        "sign": torch.where(i % 2 == 0, 1, -1).view(batch, 1),
        "side": torch.zeros(batch, dtype=torch.float64),
        "box": torch.zeros(batch, 4, dtype=torch.long),
        "size": torch.tensor([height, width]),
    }


def chain_reference(images: torch.Tensor, params: dict[str, torch.Tensor], max_magnitude: int,
                    cutout_fill: int = 127) -> torch.Tensor:
    """The whole strong view image by image with torchvision calls and the drawn params."""
    out = []
    for i, img in enumerate(images):
        for slot in range(params["op"].shape[1]):
            if params["fire"][i, slot]:
                name = OP_NAMES[int(params["op"][i, slot])]
                magnitude = int(params["level"][i, slot]) / max_magnitude
                img = reference(img, name, magnitude, float(params["sign"][i, slot]))
        x0, y0, x1, y1 = params["box"][i].tolist()
        if x1 > x0 and y1 > y0:
            img = img.clone()
            img[:, y0:y1, x0:x1] = cutout_fill
        out.append(img)
    return torch.stack(out)
