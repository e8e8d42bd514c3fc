"""Batched RandAugment + Cutout on uint8 images: MLKD's strong view for a whole batch.

:mod:`figkd.data.randaugment` applies its recipe one image at a time in DataLoader
workers, which makes MLKD several times slower than KD on a GPU. Here the same recipe
works on a whole uint8 batch ``(B, C, H, W)`` on any device:

* :meth:`BatchRandAugment.sample` draws every random choice of a batch at once on a CPU
  ``torch.Generator`` (op, magnitude level, fire, sign per slot; the Cutout box), so
  order and augmentation are the same on every device;
* :meth:`BatchRandAugment.apply` groups, slot by slot, the images that run the same op.
  Groups are known on the CPU, so their index tensors travel to the device in one copy
  and the images move with ``index_select``/``index_copy_``: no host-device syncs.

Pixel arithmetic is torchvision's tensor functionals' (what the per-image recipe runs on
uint8 tensors), reproduced so that the result is equal and device independent:

* Rotate/Shear/Translate: torchvision's inverse-affine matrix (float32 theta, its centred
  grid, ``grid_sample`` nearest) is evaluated once per (op, level, sign, image size) on
  the CPU on an image of pixel indices; that gives, for every output pixel, its source
  pixel or the fill. Applying an op is then one uint8 gather, and no float rounding
  happens on the device (so e.g. TF32 or fused multiply-adds there cannot change it).
* Sharpness: torchvision rounds ``conv(img, [[1,1,1],[1,5,1],[1,1,1]] / 13)``; ``S / 13``
  (``S`` the integer weighted sum) is never within 1/26 of a half-integer while float32
  errors stay below 1e-3, so the blur is the integer ``(S + 6) // 13``.
* Contrast: the grayscale mean is the exact integer sum over the float32 pixel count
  (torch's CPU mean is sum / count; the sum is exact below 2**24, i.e. up to 256x256
  pixels, beyond which torch's own float32 sum depends on its summation order).
* Blends use torchvision's float32 ops in its order: ``f * x + (1 - f) * degenerate``,
  with ``1 - f`` computed in double as torchvision's Python floats are.
* Equalize, Solarize, Posterize and Cutout are integer operations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the 14 ops, in the order of :data:`figkd.data.randaugment.OPS`
OP_NAMES: tuple[str, ...] = (
    "Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
)
_OP = {name: index for index, name in enumerate(OP_NAMES)}
#: ops that only move pixels; they share one gather per slot
GEOMETRIC: tuple[str, ...] = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
#: the groups apply runs per slot, in this order: one per op, the geometric ones merged
GROUPS: tuple[str, ...] = ("AutoContrast", "Equalize", "Geometric", "Solarize", "Color",
                           "Posterize", "Contrast", "Brightness", "Sharpness")
#: ops that blend the image with a degenerate one by a factor ``1 + 0.9 * m * sign``
ENHANCE: tuple[str, ...] = ("Color", "Contrast", "Brightness", "Sharpness")


def inverse_affine_matrix(
    angle: float, translate: tuple[float, float], shear: tuple[float, float]
) -> list[float]:
    """torchvision's inverse affine matrix (``_get_inverse_affine_matrix``) for centre
    ``[0, 0]`` of its centred grid and scale 1, in the same double arithmetic."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    # torchvision's steps with scale = 1 and centre (cx, cy) = (0.0, 0.0) written in,
    # kept step by step so that every double rounds as it does there
    matrix = [d / 1.0, -b / 1.0, 0.0, -c / 1.0, a / 1.0, 0.0]
    matrix[2] += matrix[0] * (-0.0 - tx) + matrix[1] * (-0.0 - ty)
    matrix[5] += matrix[3] * (-0.0 - tx) + matrix[4] * (-0.0 - ty)
    matrix[2] += 0.0
    matrix[5] += 0.0
    return matrix


def geometric_matrix(name: str, magnitude: float, sign: float, height: int, width: int) -> list[float]:
    """The matrix torchvision's ``F.rotate``/``F.affine`` build for the recipe's op."""
    if name == "Rotate":  # F.rotate passes -angle to the matrix (its convention vs affine)
        return inverse_affine_matrix(-(30.0 * magnitude * sign), (0.0, 0.0), (0.0, 0.0))
    if name in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(0.3 * magnitude)) * sign
        shear = (degrees, 0.0) if name == "ShearX" else (0.0, degrees)
        return inverse_affine_matrix(0.0, (0.0, 0.0), shear)
    size = width if name == "TranslateX" else height
    shift = float(round(0.3 * magnitude * size * sign))
    move = (shift, 0.0) if name == "TranslateX" else (0.0, shift)
    return inverse_affine_matrix(0.0, move, (0.0, 0.0))


def source_maps(matrices: list[list[float]], height: int, width: int) -> torch.Tensor:
    """For each matrix, the flat source pixel of every output pixel (``H * W``: the fill),
    as torchvision's tensor ``affine``/``rotate`` (nearest) pick it on the CPU: its grid
    (float32 theta, centred half-pixel grid, ``bmm``) and ``grid_sample`` on an image of
    pixel indices plus its ones mask. Returns int32 ``(len(matrices), H * W)``."""
    count = len(matrices)
    theta = torch.tensor(matrices, dtype=torch.float32).reshape(count, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=torch.float32)
    base[..., 0].copy_(torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, steps=width))
    base[..., 1].copy_(
        torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, steps=height).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height])
    grid = base.view(1, height * width, 3).expand(count, -1, -1).bmm(scaled)
    pixels = height * width
    index = torch.arange(pixels, dtype=torch.float32).view(1, 1, height, width)
    source = torch.cat([index, torch.ones_like(index)], dim=1).expand(count, -1, -1, -1)
    out = F.grid_sample(source, grid.view(count, height, width, 2), mode="nearest",
                        padding_mode="zeros", align_corners=False)
    picked = torch.where(out[:, 1] < 0.5, float(pixels), out[:, 0])
    return picked.round_().to(torch.int32).reshape(count, pixels)


def _blend(images: torch.Tensor, degenerate: torch.Tensor | None, factor: torch.Tensor,
           rest: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``factor * img + (1 - factor) * degenerate`` in float32,
    clamped and truncated to uint8 (``degenerate=None``: zeros, i.e. brightness)."""
    out = factor * images
    if degenerate is not None:
        out = out + rest * degenerate
    return out.clamp_(0, 255).to(torch.uint8)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """torchvision's uint8 ``rgb_to_grayscale`` (float32 weights, truncated), ``(n, 1, H, W)``."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """``F.autocontrast`` per image and channel (constant channels are left as they are)."""
    low = images.amin(dim=(-2, -1), keepdim=True).float()
    high = images.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255 / (high - low)  # the same expression, so the same float32 ops
    flat = ~torch.isfinite(scale)
    low, scale = low.masked_fill(flat, 0.0), scale.masked_fill(flat, 1.0)
    return ((images - low) * scale).clamp_(0, 255).to(torch.uint8)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """``F.equalize`` per image and channel from 256-bin histograms (``scatter_add``)."""
    n, channels, height, width = images.shape
    values = images.reshape(n * channels, height * width).long()
    hist = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    # torchvision's step: the pixels not at the largest present value, // 255
    top = hist.gather(1, values.amax(dim=1, keepdim=True))
    step = torch.div(height * width - top, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"),
                    step.clamp(min=1), rounding_mode="floor")
    lut = F.pad(lut, [1, 0])[:, :-1].clamp_(0, 255)
    identity = torch.arange(256, device=images.device).expand_as(lut)
    lut = torch.where(step == 0, identity, lut)
    return lut.gather(1, values).to(torch.uint8).view(n, channels, height, width)


def sharpness_degenerate(images: torch.Tensor) -> torch.Tensor:
    """torchvision's blurred image for ``adjust_sharpness``: round(3x3 [[1,1,1],[1,5,1],
    [1,1,1]] / 13) inside, border pixels kept; exact in integers (see the module doc)."""
    x = images.to(torch.int16)  # at most 13 * 255
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * x[..., 1:-1, 1:-1]
    blurred = images.clone()
    blurred[..., 1:-1, 1:-1] = torch.div(total + 6, 13, rounding_mode="floor").to(torch.uint8)
    return blurred


class BatchRandAugment:
    """Batched RandAugment + Cutout on uint8 images: figkd.data.randaugment's recipe for a whole batch.

    Per image and slot (``num_ops`` slots, in order): an op uniform over :data:`OP_NAMES`,
    a level uniform in ``1..max_magnitude`` (magnitude ``level / max_magnitude``), fire
    with probability ``prob`` and a sign of +-1; then Cutout of side ``U * cutout *
    min(H, W)`` centred uniformly, clipped, filled with ``cutout_fill``. ``fill`` is the
    geometric ops' fill (``RandAugment``'s gray 128).
    """

    def __init__(self, num_ops: int = 2, max_magnitude: int = 10, prob: float = 0.5,
                 cutout: float = 0.5, cutout_fill: int = 127, fill: int = 128) -> None:
        if num_ops < 0 or max_magnitude < 1 or not 0.0 <= prob <= 1.0 or cutout < 0:
            raise ValueError(
                f"need num_ops >= 0, max_magnitude >= 1, 0 <= prob <= 1 and cutout >= 0; got "
                f"num_ops={num_ops}, max_magnitude={max_magnitude}, prob={prob}, cutout={cutout}"
            )
        if not (0 <= cutout_fill <= 255 and 0 <= fill <= 255):
            raise ValueError(f"fills are uint8 values; got cutout_fill={cutout_fill}, fill={fill}")
        self.num_ops = num_ops
        self.max_magnitude = max_magnitude
        self.prob = prob
        self.cutout = cutout
        self.cutout_fill = cutout_fill
        self.fill = fill
        # per (level, sign) tables, row (level - 1) * 2 + (sign < 0), from the recipe's
        # Python-float arithmetic; torchvision casts its Python-float factors to float32
        factors, rests = [], []
        for level in range(1, max_magnitude + 1):
            magnitude = level / max_magnitude
            for sign in (1.0, -1.0):
                factor = 1.0 + 0.9 * magnitude * sign
                factors.append(factor)
                rests.append(1.0 - factor)
        self._factor = torch.tensor(factors, dtype=torch.float32)
        self._rest = torch.tensor(rests, dtype=torch.float32)
        magnitudes = [level / max_magnitude for level in range(1, max_magnitude + 1)]
        # solarize: img >= threshold compares in float32, so threshold -> ceil(float32)
        thresholds = torch.tensor([256.0 - 256.0 * m for m in magnitudes], dtype=torch.float32)
        self._threshold = thresholds.ceil().long()
        # posterize: img & -2**(8 - bits), as a uint8 byte
        self._mask = torch.tensor([(-int(2 ** int(4 * m))) & 0xFF for m in magnitudes])
        self._maps: dict[tuple[int, int, str], torch.Tensor] = {}
        # op -> its group in GROUPS (-1: Identity), op -> its place in GEOMETRIC
        self._group = torch.tensor([GROUPS.index("Geometric" if name in GEOMETRIC else name)
                                    if name != "Identity" else -1 for name in OP_NAMES])
        self._rank = torch.tensor([GEOMETRIC.index(name) if name in GEOMETRIC else 0
                                   for name in OP_NAMES])

    def __repr__(self) -> str:
        return (f"BatchRandAugment(num_ops={self.num_ops}, max_magnitude={self.max_magnitude}, "
                f"prob={self.prob}, cutout={self.cutout}, cutout_fill={self.cutout_fill}, "
                f"fill={self.fill})")

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw every random parameter of one batch on the CPU generator (vectorised, no per-image Python loop).

        Returns ``op``, ``level`` (int64), ``fire`` (bool), ``sign`` (int64 +-1), each
        ``(batch, num_ops)``; ``side`` (float64 Cutout side), ``box`` (int64 ``x0, y0, x1,
        y1`` of the half-open Cutout box) and ``size`` (``[height, width]``).
        """
        if batch < 0 or height < 1 or width < 1:
            raise ValueError(f"need batch >= 0 and a positive image size; got {batch}, "
                             f"{height}x{width}")
        shape = (batch, self.num_ops)
        op = torch.randint(len(OP_NAMES), shape, generator=generator)
        level = torch.randint(1, self.max_magnitude + 1, shape, generator=generator)
        fire = torch.rand(shape, generator=generator) < self.prob
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, 1, -1)
        u = torch.rand(batch, 3, generator=generator, dtype=torch.float64)
        side = u[:, 0] * self.cutout * min(width, height)
        x0 = (u[:, 1] * width - side / 2).clamp_(min=0.0).floor_()
        y0 = (u[:, 2] * height - side / 2).clamp_(min=0.0).floor_()
        x1 = (x0 + side).clamp_(max=width).floor_()
        y1 = (y0 + side).clamp_(max=height).floor_()
        box = torch.stack([x0, y0, x1, y1], dim=1).long()
        return {"op": op, "level": level, "fire": fire, "sign": sign, "side": side,
                "box": box, "size": torch.tensor([height, width])}

    def _source_maps(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Source-pixel maps of every (geometric op, level, sign), cached per size and device;
        row ``(k * max_magnitude + level - 1) * 2 + (sign < 0)``, ``k`` the op's place in
        :data:`GEOMETRIC`."""
        key = (height, width, str(device))
        if key not in self._maps:
            cpu = (height, width, "cpu")
            if cpu not in self._maps:
                matrices = [
                    geometric_matrix(name, level / self.max_magnitude, sign, height, width)
                    for name in GEOMETRIC
                    for level in range(1, self.max_magnitude + 1)
                    for sign in (1.0, -1.0)
                ]
                self._maps[cpu] = source_maps(matrices, height, width)
            self._maps[key] = _to_device(self._maps[cpu], device)
        return self._maps[key]

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (B, C, H, W) on any device -> uint8 of the same shape/device."""
        _check_images(images)
        batch, channels, height, width = images.shape
        _check_params(params, batch, height, width)
        device = images.device
        # the plan, on the CPU: (slot, group) of every fired op, images sorted by it, and
        # per-image values, packed in one int64 and one float32 tensor that each cross to
        # the device once; groups then are slices at offsets known here
        op, level, fire = params["op"].long(), params["level"].long(), params["fire"].bool()
        slots = op.shape[1]
        group = self._group.clone()
        if channels == 1:
            group[_OP["Color"]] = -1  # adjust_saturation leaves 1-channel images alone
        if height <= 2 or width <= 2:
            group[_OP["Sharpness"]] = -1  # adjust_sharpness leaves them alone too
        groups = len(GROUPS)
        chosen = group[op]
        key = torch.arange(slots).view(1, slots) * groups + chosen
        key = torch.where(fire & (chosen >= 0), key, slots * groups).t().reshape(-1)
        order = torch.argsort(key, stable=True)  # slot-major, so image order within a group
        counts = torch.bincount(key, minlength=slots * groups + 1)[:-1].tolist()
        lv = level - 1
        negative = (params["sign"] < 0).long()
        row = lv * 2 + negative  # enhance tables
        geo_row = (self._rank[op] * self.max_magnitude + lv) * 2 + negative
        value = torch.where(op == _OP["Solarize"], self._threshold[lv],
                            torch.where(op == _OP["Posterize"], self._mask[lv], geo_row))
        total = sum(counts)
        order = order[:total]
        image = order % batch if batch else order
        int_plan = torch.cat([params["box"].long().reshape(-1), image,
                              value.t().reshape(-1)[order]])
        float_plan = torch.cat([self._factor[row].t().reshape(-1)[order],
                                self._rest[row].t().reshape(-1)[order]])
        int_plan = _to_device(int_plan, device)
        float_plan = _to_device(float_plan, device)
        x = images.clone()
        offset = 0
        for position, count in enumerate(counts):
            if count == 0:
                continue
            name = GROUPS[position % groups]
            start, offset = offset, offset + count
            index = int_plan[4 * batch + start : 4 * batch + offset]
            values = int_plan[4 * batch + total + start : 4 * batch + total + offset]
            factor = float_plan[start:offset].view(count, 1, 1, 1)
            rest = float_plan[total + start : total + offset].view(count, 1, 1, 1)
            sub = x.index_select(0, index)
            if name in ENHANCE:
                degenerate: torch.Tensor | None
                if name == "Color":
                    degenerate = grayscale(sub)
                elif name == "Contrast":
                    summed = grayscale(sub).sum(dim=(1, 2, 3), dtype=torch.int64).float()
                    pixels = torch.full_like(summed, float(height * width))  # a tensor: true
                    degenerate = (summed / pixels).view(count, 1, 1, 1)  # division on CUDA too
                elif name == "Sharpness":
                    degenerate = sharpness_degenerate(sub)
                else:
                    degenerate = None
                sub = _blend(sub, degenerate, factor, rest)
            elif name == "AutoContrast":
                sub = autocontrast(sub)
            elif name == "Equalize":
                sub = equalize(sub)
            elif name == "Solarize":
                # 255 - x is x ^ 255 (uint8 arithmetic: torch.where on uint8 is slow on CPU)
                flip = sub.to(torch.int16) >= values.view(count, 1, 1, 1)
                sub = sub ^ flip.to(torch.uint8).mul_(255)
            elif name == "Posterize":
                sub = sub & values.to(torch.uint8).view(count, 1, 1, 1)
            else:  # Geometric: one gather from each image framed by a fill pixel
                maps = self._source_maps(height, width, device).index_select(0, values)
                framed = F.pad(sub.reshape(count, channels, height * width), (0, 1),
                               value=self.fill)
                maps = maps.long().view(count, 1, -1).expand(-1, channels, -1)
                sub = framed.gather(2, maps).view(count, channels, height, width)
            x.index_copy_(0, index, sub)
        if self.cutout > 0 and batch:
            # the box's rows times its columns, applied as x * (1 - inside) + fill * inside
            # in uint8 (masked_fill_/where with a bool mask are slow on the CPU)
            box = int_plan[: 4 * batch].view(batch, 4, 1, 1)
            rows = torch.arange(height, device=device).view(1, height, 1)
            cols = torch.arange(width, device=device).view(1, 1, width)
            in_rows = ((rows >= box[:, 1]) & (rows < box[:, 3])).to(torch.uint8)
            in_cols = ((cols >= box[:, 0]) & (cols < box[:, 2])).to(torch.uint8)
            inside = (in_rows * in_cols).unsqueeze(1)  # (B, 1, H, W) of 0/1
            x.mul_(1 - inside).add_(inside * self.cutout_fill)
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(images)
        _, _, height, width = images.shape
        return self.apply(images, self.sample(len(images), height, width, generator))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU plan tensor on ``device`` without waiting for it (pinned for CUDA)."""
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _check_images(images: object) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"BatchRandAugment takes a torch.Tensor batch, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"BatchRandAugment works on uint8 images, got {images.dtype}; convert first, e.g. "
            "images.mul(255).round().clamp(0, 255).to(torch.uint8) for floats in [0, 1]"
        )
    if images.dim() != 4:
        raise ValueError(
            f"BatchRandAugment takes a (B, C, H, W) batch, got shape {tuple(images.shape)}; "
            "add the batch dimension with images.unsqueeze(0) for one image"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"BatchRandAugment takes 1- or 3-channel images (as torchvision's ops do), got "
            f"{images.shape[1]} channels in shape {tuple(images.shape)}; pass (B, C, H, W)"
        )


def _check_params(params: dict[str, torch.Tensor], batch: int, height: int, width: int) -> None:
    missing = {"op", "level", "fire", "sign", "box", "size"} - set(params)
    if missing:
        raise ValueError(f"params lack {sorted(missing)}: build them with BatchRandAugment.sample")
    if len(params["op"]) != batch or len(params["box"]) != batch:
        raise ValueError(f"params are for {len(params['op'])} images but the batch has {batch}: "
                         "sample them with the batch's length")
    if params["size"].tolist() != [height, width]:
        raise ValueError(f"params were sampled for size {params['size'].tolist()} but the images "
                         f"are {height}x{width}: sample with the images' height and width")
