"""Edge cases of the per-image augmentation that a mutation audit showed the other tests miss.

Covers :mod:`figkd.data.transforms` (the presets' constants and recipes),
:mod:`figkd.data.randaugment` (MLKD's strong view) and :mod:`figkd.data.planned_crop`
(pre-sampled RandomResizedCrop boxes). Expected values come from the published recipes typed
here by hand, from torchvision's functional ops, PIL, NumPy or hashlib, or from torchvision's
``RandomResizedCrop.get_params`` loop re-written here and fed the generator's raw draws - never
from a run of the code under test. Images are tiny and encode pixel positions, so a shifted
box, a swapped axis or a wrong magnitude changes the pixels that are compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance
from torch import Tensor

from figkd.data.planned_crop import (
    CropPlan,
    PlannedDataset,
    dataset_sha256,
    image_sizes,
    plan_generator,
    sample_resized_crops,
)
from figkd.data.randaugment import OPS, Cutout, RandAugment
from figkd.data.transforms import LargeImagePreset, build_transforms, get_preset

# Published statistics, typed from their sources (not imported from figkd).
CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))  # mdistiller / RepDistiller
TINY_IMAGENET = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))  # mdistiller
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ImageNet models
GRAY_FILL = 128  # RandAugment's fill for pixels a geometric op uncovers
CUTOUT_FILL = 127  # FixMatch / MLKD's CutoutAbs colour


def position_image(width: int, height: int) -> Image.Image:
    """R = 20 * column + 7, G = 20 * row + 3, B = 200: each pixel says where it came from.

    No channel is ever 128, so a pixel of the gray fill cannot be mistaken for content.
    """
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([(20 * cols + 7) % 256, (20 * rows + 3) % 256, np.full_like(cols, 200)], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def pixels(image: Image.Image | Tensor) -> np.ndarray:
    """(H, W, C) int array of a PIL image or a (C, H, W) tensor."""
    if isinstance(image, Image.Image):
        array = np.asarray(image)
        return (array[..., None] if array.ndim == 2 else array).astype(np.int64)
    return image.permute(1, 2, 0).numpy().astype(np.int64)


# ------------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset,stats,size", [
    ("cifar", CIFAR100, 32),
    ("tiny-imagenet-64", TINY_IMAGENET, 64),
    ("tiny-imagenet-64-crop", TINY_IMAGENET, 64),
    ("tiny-imagenet-32", TINY_IMAGENET, 64),
    ("fine-grained-32", IMAGENET, 40),
    ("fine-grained-224", IMAGENET, 20),
])
def test_evaluation_transform_normalises_with_the_published_statistics(
    preset: str, stats: tuple[tuple[float, ...], tuple[float, ...]], size: int
) -> None:
    """A wrong mean or std shifts every input the models see; a uniform image makes the
    expected value ``(v / 255 - mean) / std`` per channel, whatever the resizing does."""
    colour = (0, 90, 255)
    out = build_transforms(preset, train=False)(Image.new("RGB", (size, size), colour))
    mean, std = stats
    for channel in range(3):
        want = (colour[channel] / 255 - mean[channel]) / std[channel]
        torch.testing.assert_close(out[channel], torch.full_like(out[channel], want))


def test_digits_constants_are_the_statistics_of_the_sklearn_digits() -> None:
    """The digits preset claims the mean/std of all 1,797 digits scaled to [0, 1]."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    values = sklearn_datasets.load_digits().data / 16.0
    spec = get_preset("digits")
    # four decimals: 0.30526 and 0.37605 (0.37605 with either n or n - 1 in the std)
    assert spec.mean == pytest.approx((float(values.mean()),), abs=1e-4)
    assert spec.std == pytest.approx((float(values.std()),), abs=1e-4)


def test_digits_training_transform_only_normalises() -> None:
    """Digits get no augmentation: a flip would mirror the strokes of an asymmetric digit."""
    digit = torch.arange(64, dtype=torch.float32).view(1, 8, 8) / 63
    want = (digit - 0.3053) / 0.3761
    for train in (True, False):
        torch.manual_seed(0)
        for _ in range(8):  # a flip with p = 0.5 would show in 8 draws with p = 1 - 2**-8
            torch.testing.assert_close(build_transforms("digits", train=train)(digit), want)


@pytest.mark.parametrize("preset,padding,degrees,resize", [
    ("cifar", 4, None, False),
    ("tiny-imagenet-64", None, 20.0, False),
    ("tiny-imagenet-64-crop", 8, None, False),
    ("tiny-imagenet-32", 4, None, True),
    ("fine-grained-32", 4, None, True),
])
def test_training_geometry_is_the_recipe_of_the_module_docstring(
    preset: str, padding: int | None, degrees: float | None, resize: bool
) -> None:
    """Padding, rotation range and flip of each recipe (mdistiller / RepDistiller)."""
    transform = build_transforms(preset, train=True)
    assert isinstance(transform, T.Compose)
    steps = transform.transforms
    by_type = {type(step): step for step in steps}
    size = get_preset(preset).size
    if padding is None:
        assert T.RandomCrop not in by_type
    else:
        crop = by_type[T.RandomCrop]
        assert crop.padding == padding and tuple(crop.size) == (size, size)
    if degrees is None:
        assert T.RandomRotation not in by_type
    else:
        assert list(by_type[T.RandomRotation].degrees) == [-degrees, degrees]
    assert by_type[T.RandomHorizontalFlip].p == 0.5
    assert (T.Resize in by_type) == resize


@pytest.mark.parametrize("preset", ["cifar", "tiny-imagenet-32", "fine-grained-224"])
def test_strong_view_is_two_ops_at_magnitude_ten_then_half_side_cutout(preset: str) -> None:
    """MLKD's strong view: 2 RandAugment ops (p = 0.5, magnitudes 1..10), Cutout of up to
    half the side in gray 127."""
    steps = get_preset(preset).strong().transforms
    augment = next(step for step in steps if isinstance(step, RandAugment))
    cutout = next(step for step in steps if isinstance(step, Cutout))
    assert (augment.num_ops, augment.max_magnitude, augment.prob) == (2, 10, 0.5)
    assert (cutout.max_fraction, cutout.fill) == (0.5, CUTOUT_FILL)


@pytest.mark.parametrize("preset", ["cifar", "fine-grained-224"])
def test_presets_cannot_be_changed_after_registration(preset: str) -> None:
    """Registered presets are shared by every run in a process; editing one in place would
    change the recipe of runs that already read it."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset(preset).size = 48  # type: ignore[misc]


# -------------------------------------------------------------------- RandAugment ops


def _both_signs(op: str, image: Any, magnitude: float,
                reference: Callable[[float], Any], seeds: int = 12) -> None:
    """``OPS[op]`` must give ``reference(+1)`` or ``reference(-1)``, and both over ``seeds``."""
    want = {sign: pixels(reference(sign)) for sign in (1.0, -1.0)}
    assert not np.array_equal(want[1.0], want[-1.0]), "the test image cannot tell the signs"
    seen = set()
    for seed in range(seeds):
        torch.manual_seed(seed)
        got = pixels(OPS[op](image, magnitude))
        matches = [sign for sign, ref in want.items() if np.array_equal(got, ref)]
        assert matches, f"{op} at seed {seed} is neither sign of the reference"
        seen.update(matches)
    assert seen == {1.0, -1.0}


def _affine(image: Image.Image, **kwargs: Any) -> Image.Image:
    """torchvision's affine with identity defaults and RandAugment's gray fill."""
    args: dict[str, Any] = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": [0.0, 0.0]}
    args.update(kwargs)
    return TF.affine(image, **args, fill=[float(GRAY_FILL)] * 3)


# A non-square image (64 wide, 96 high) and m = 0.6, where 0.3 * m * side rounds to
# different shifts on the two axes (12 and 17 pixels) and for a wrong factor. The image is
# large enough that a stray 1-degree rotation or shear moves its outer pixels by > 0.5 px.
WIDE, HIGH, MAGNITUDE = 64, 96, 0.6


def test_translate_x_moves_by_three_tenths_of_the_width_times_magnitude() -> None:
    image = position_image(WIDE, HIGH)
    shift = round(0.3 * MAGNITUDE * WIDE)  # 11.52 -> 12 pixels
    assert shift == 12
    _both_signs("TranslateX", image, MAGNITUDE,
                lambda sign: _affine(image, translate=[int(sign) * shift, 0]))


def test_translate_y_moves_by_three_tenths_of_the_height_times_magnitude() -> None:
    image = position_image(WIDE, HIGH)
    shift = round(0.3 * MAGNITUDE * HIGH)  # 17.28 -> 17 pixels
    assert shift == 17
    _both_signs("TranslateY", image, MAGNITUDE,
                lambda sign: _affine(image, translate=[0, int(sign) * shift]))


@pytest.mark.parametrize("op,axis", [("ShearX", 0), ("ShearY", 1)])
def test_shear_angle_is_arctan_of_three_tenths_times_magnitude(op: str, axis: int) -> None:
    """FixMatch's shear moves a pixel by 0.3 * m per pixel of distance from the centre; as
    an angle that is atan(0.3 m). A 64 x 64 image makes a 1-degree error visible."""
    image = position_image(64, 64)
    degrees = math.degrees(math.atan(0.3 * MAGNITUDE))

    def reference(sign: float) -> Image.Image:
        shear = [sign * degrees, 0.0] if axis == 0 else [0.0, sign * degrees]
        return _affine(image, shear=shear)

    _both_signs(op, image, MAGNITUDE, reference)


def test_rotate_is_thirty_degrees_times_magnitude_with_gray_fill() -> None:
    image = position_image(12, 12)
    _both_signs("Rotate", image, MAGNITUDE, lambda sign: TF.rotate(
        image, sign * 30.0 * MAGNITUDE, fill=[float(GRAY_FILL)] * 3))
    torch.manual_seed(0)
    corner = pixels(OPS["Rotate"](image, MAGNITUDE))[0, 0]
    assert corner.tolist() == [GRAY_FILL] * 3  # an 18-degree turn uncovers the corner


def test_solarize_inverts_pixels_at_or_above_256_times_one_minus_magnitude() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.fromarray(np.stack([ramp] * 3, -1))
    for magnitude, threshold in ((0.5, 128), (0.25, 192), (1.0, 0)):
        want = np.where(ramp >= threshold, 255 - ramp, ramp)
        got = pixels(OPS["Solarize"](image, magnitude))
        assert np.array_equal(got, np.stack([want] * 3, -1)), magnitude


def test_posterize_keeps_eight_minus_int_four_m_bits() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.fromarray(np.stack([ramp] * 3, -1))
    for magnitude, bits in ((0.6, 6), (1.0, 4), (0.2, 8)):
        mask = (0xFF << (8 - bits)) & 0xFF
        got = pixels(OPS["Posterize"](image, magnitude))
        assert np.array_equal(got, np.stack([ramp & mask] * 3, -1)), magnitude


def test_brightness_factor_is_one_plus_or_minus_nine_tenths_of_magnitude() -> None:
    """PIL's own Brightness enhancer at 1 +- 0.9 m = 1.45 or 0.55 (gray 100 -> 145 or 55)."""
    image = Image.new("RGB", (4, 4), (100, 100, 100))
    assert pixels(ImageEnhance.Brightness(image).enhance(1.45))[0, 0].tolist() == [145] * 3
    _both_signs("Brightness", image, 0.5,
                lambda sign: ImageEnhance.Brightness(image).enhance(1.0 + sign * 0.45))


def test_contrast_factor_is_one_plus_or_minus_nine_tenths_of_magnitude() -> None:
    image = position_image(6, 6)
    _both_signs("Contrast", image, 0.5,
                lambda sign: TF.adjust_contrast(image, 1.0 + sign * 0.45))


def test_each_sign_is_drawn_half_of_the_time() -> None:
    """Brightness on one pixel shows the sign; 400 draws put a fair coin in [0.4, 0.6]."""
    image = Image.new("L", (1, 1), 100)
    torch.manual_seed(0)
    brighter = [OPS["Brightness"](image, 0.5).getpixel((0, 0)) > 100 for _ in range(400)]
    assert 0.4 < np.mean(brighter) < 0.6


# ------------------------------------------------------------------- RandAugment draws


def test_ops_fire_half_the_time_at_magnitudes_one_to_ten_tenths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of the 2 slots picks one of the 14 ops with replacement and a magnitude in
    {1, ..., 10} / 10, and fires with p = 0.5 (the default the strong view relies on)."""
    calls: list[tuple[str, float]] = []

    def recording(name: str) -> Callable[[Image.Image, float], Image.Image]:
        def op(img: Image.Image, m: float) -> Image.Image:
            calls.append((name, m))
            return img
        return op

    for name in list(OPS):
        monkeypatch.setitem(OPS, name, recording(name))
    augment = RandAugment(num_ops=2, max_magnitude=10)
    image = Image.new("RGB", (2, 2))
    torch.manual_seed(0)
    draws = 1000
    for _ in range(draws):
        assert augment(image) is image
    assert 0.45 < len(calls) / (2 * draws) < 0.55
    magnitudes = sorted({m for _, m in calls})
    assert magnitudes == pytest.approx([k / 10 for k in range(1, 11)])
    assert {name for name, _ in calls} == set(OPS) and len(OPS) == 14


def test_float_tensors_go_through_uint8_and_come_back_in_0_1() -> None:
    """With no op firing, a float image comes back rounded to the nearest 1/255 and clipped
    to [0, 1] (so a value just outside the range cannot wrap around in uint8)."""
    image = torch.tensor([[[0.0, 0.6, 200 / 255, 1.0, -0.25, 1.25]]])
    want = torch.tensor([[[0.0, 153 / 255, 200 / 255, 1.0, 0.0, 1.0]]])  # 0.6 * 255 = 153
    out = RandAugment(num_ops=2, max_magnitude=10, prob=0.0)(image)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want)


def test_uint8_tensors_and_pil_images_pass_unchanged_when_no_op_fires() -> None:
    tensor = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    out = RandAugment(num_ops=2, max_magnitude=10, prob=0.0)(tensor)
    assert out.dtype == torch.uint8 and torch.equal(out, tensor)


# ---------------------------------------------------------------------------- Cutout


def cutout_reference(seed: int, width: int, height: int, fraction: float) -> np.ndarray:
    """FixMatch's CutoutAbs corners, from the same three uniform draws (side, x centre,
    y centre), as the half-open box figkd documents (CutoutAbs's PIL rectangle also grays
    row y1 and column x1).

    Returns the (H, W) mask of the pixels to gray: columns x0..x1-1 and rows y0..y1-1.
    """
    torch.manual_seed(seed)
    u_side, u_x, u_y = (float(torch.rand(())) for _ in range(3))
    side = u_side * fraction * min(width, height)
    x0 = int(max(0.0, u_x * width - side / 2))
    y0 = int(max(0.0, u_y * height - side / 2))
    x1, y1 = int(min(width, x0 + side)), int(min(height, y0 + side))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("kind", ["pil-rgb", "pil-gray", "uint8", "float"])
def test_cutout_grays_exactly_the_drawn_half_open_box(kind: str) -> None:
    """A 12 x 9 image and squares of up to the full short side: boxes clipped at each border
    and empty boxes (side < 1) all occur over 60 seeds."""
    width, height = 12, 9
    rgb = position_image(width, height)
    image: Any = {
        "pil-rgb": rgb, "pil-gray": rgb.convert("L"),
        "uint8": TF.pil_to_tensor(rgb), "float": TF.to_tensor(rgb),
    }[kind]
    before = pixels(image) if kind != "float" else pixels(TF.pil_to_tensor(rgb))
    fill = CUTOUT_FILL / 255.0
    seen = {"left": False, "top": False, "right": False, "bottom": False, "empty": False}
    for seed in range(60):
        mask = cutout_reference(seed, width, height, 1.0)
        torch.manual_seed(seed)
        out = Cutout(max_fraction=1.0)(image)
        if kind == "float":
            assert out.dtype == torch.float32
            gray = (out - fill).abs().amax(0) < 1e-7
            assert torch.equal(out[:, ~torch.from_numpy(mask)],
                               image[:, ~torch.from_numpy(mask)])
            assert np.array_equal(gray.numpy(), mask), seed
            continue
        got = pixels(out)
        want = np.where(mask[..., None], CUTOUT_FILL, before)
        assert np.array_equal(got, want), seed
        rows, cols = np.nonzero(mask)
        if not mask.any():
            seen["empty"] = True
            continue
        seen["left"] |= cols.min() == 0
        seen["top"] |= rows.min() == 0
        seen["right"] |= cols.max() == width - 1
        seen["bottom"] |= rows.max() == height - 1
    if kind != "float":
        assert all(seen.values()), seen


def test_cutout_centre_is_uniform_over_the_image() -> None:
    """Over many draws every column and row of a 16 x 16 image gets grayed sometimes."""
    image = Image.new("L", (16, 16), 0)
    torch.manual_seed(0)
    hits = np.zeros((16, 16), dtype=np.int64)
    for _ in range(300):
        hits += np.asarray(Cutout(0.5)(image)) == CUTOUT_FILL
    assert (hits.sum(0) > 0).all() and (hits.sum(1) > 0).all()
    left, right = hits[:, :8].sum(), hits[:, 8:].sum()
    assert 0.7 < left / right < 1.4


# --------------------------------------------------------------------- planned crops


def test_plan_generator_is_seeded_from_seed_epoch_and_the_plan_stream() -> None:
    """Cached teacher logits are keyed by the plan seed: the generator of (seed, epoch) must
    stay NumPy's SeedSequence of (seed, epoch, b"plan") folded into one 64-bit seed. (torch's
    CPU generator keeps only the low 32 bits of a seed, so the high word cannot be checked.)"""
    stream = int.from_bytes(b"plan", "big")
    for seed, epoch in ((0, 1), (7, 3), (123456, 200)):
        state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
        want = torch.Generator().manual_seed(int(state[0]) * 2**32 + int(state[1]))
        got = plan_generator(seed, epoch)
        assert torch.equal(torch.rand(6, generator=got), torch.rand(6, generator=want))


def get_params_reference(
    height: int, width: int, u_area: list[float], u_ratio: list[float], u_top: float,
    u_left: float, scale: tuple[float, float], ratio: tuple[float, float],
) -> tuple[tuple[int, int, int, int], str]:
    """torchvision's ``RandomResizedCrop.get_params`` with its draws given as uniforms.

    Returns the box ``(top, left, height, width)`` and which branch gave it.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for a, r in zip(u_area, u_ratio):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * a)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r)
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = int(u_top * (height - h + 1))  # torch.randint(0, height - h + 1)
            j = int(u_left * (width - w + 1))
            return (i, j, h, w), "drawn"
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h, branch = width, round(width / min(ratio)), "tall"
    elif in_ratio > max(ratio):
        h, w, branch = height, round(height * max(ratio)), "wide"
    else:
        w, h, branch = width, height, "whole"
    return ((height - h) // 2, (width - w) // 2, h, w), branch


# Every size from 1 x 1 to 8 x 8 (boxes of zero size, of exactly the full side, odd room
# for the centre-crop fallback) and a few very tall and very wide images.
SMALL_SIZES = [(h, w) for h in range(1, 9) for w in range(1, 9)]
EXTREME_SIZES = [(2, 40), (40, 2), (3, 50), (51, 3), (5, 7), (7, 5), (300, 500), (1, 9)]


@pytest.mark.parametrize("scale,ratio,flip_p,branches_needed", [
    ((0.08, 1.0), (3 / 4, 4 / 3), 0.5, {"drawn", "tall", "wide"}),
    ((0.3, 0.6), (0.5, 2.0), 0.3, {"drawn", "tall", "wide"}),
    ((0.9, 1.0), (1.0, 1.5), 0.8, {"drawn", "tall", "wide"}),
    # boxes under a quarter pixel round to zero size: 1 x 1 images fall back to the whole
    ((0.01, 0.2), (3 / 4, 4 / 3), 0.5, {"drawn", "whole"}),
])
def test_sampler_equals_torchvision_get_params_on_small_and_extreme_images(
    scale: tuple[float, float], ratio: tuple[float, float], flip_p: float,
    branches_needed: set[str],
) -> None:
    """Vectorised plan rows against torchvision's per-image loop on the same draws; tiny
    images hit the boundaries (zero-size boxes, boxes of exactly the full side)."""
    sizes = torch.tensor(SMALL_SIZES + EXTREME_SIZES)
    n, tries = len(sizes), 10
    branches: set[str] = set()
    full_side = False
    for seed in range(4):
        rows = sample_resized_crops(sizes, plan_generator(seed, 1), scale, ratio, flip_p)
        g = plan_generator(seed, 1)  # replay the raw draws in the documented order
        u_area = torch.rand(n, tries, generator=g, dtype=torch.float64).tolist()
        u_ratio = torch.rand(n, tries, generator=g, dtype=torch.float64).tolist()
        u_top, u_left, u_flip = (torch.rand(n, generator=g, dtype=torch.float64).tolist()
                                 for _ in range(3))
        for k, (height, width) in enumerate(sizes.tolist()):
            box, branch = get_params_reference(
                height, width, u_area[k], u_ratio[k], u_top[k], u_left[k], scale, ratio)
            assert rows[k].tolist() == [*box, int(u_flip[k] < flip_p)], (seed, height, width)
            branches.add(branch)
            full_side |= branch == "drawn" and (box[2] == height or box[3] == width)
    assert full_side and branches_needed <= branches


def _compose(*steps: Any) -> T.Compose:
    return T.Compose(list(steps))


def test_plan_reads_size_scale_ratio_and_flip_from_the_transform() -> None:
    crop = T.RandomResizedCrop((20, 30), scale=(0.2, 0.9), ratio=(0.5, 2.0))
    found = CropPlan.from_transform(_compose(
        crop, T.RandomHorizontalFlip(p=0.3), T.ToTensor(), T.Normalize((0.5,), (0.25,))))
    assert found is not None
    plan, tail = found
    assert plan.size == (20, 30) and plan.scale == (0.2, 0.9) and plan.ratio == (0.5, 2.0)
    assert plan.flip_p == 0.3
    assert [type(step) for step in tail.transforms] == [T.ToTensor, T.Normalize]
    # describe() goes into the planned cache's key: the plan must not change after that
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.flip_p = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("rest", [
    [T.ToTensor()], [], [T.PILToTensor(), T.ConvertImageDtype(torch.float32)],
])
def test_a_crop_without_flip_plans_no_flips(rest: list[Any]) -> None:
    found = CropPlan.from_transform(_compose(T.RandomResizedCrop(16), *rest))
    assert found is not None
    plan, tail = found
    assert plan.flip_p == 0.0 and plan.size == (16, 16)
    assert [type(step) for step in tail.transforms] == [type(step) for step in rest]
    rows = plan.epoch(torch.tensor([[20, 20]] * 50), seed=0, epoch=1)
    assert not rows[:, 4].any()


@pytest.mark.parametrize("transform", [
    None,
    _compose(),
    _compose(T.RandomCrop(16, padding=2), T.RandomHorizontalFlip(), T.ToTensor()),
    _compose(T.RandomHorizontalFlip(), T.RandomResizedCrop(16), T.ToTensor()),
    _compose(T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.ColorJitter(0.4), T.ToTensor()),
    _compose(T.RandomResizedCrop(16), T.ColorJitter(0.4), T.RandomHorizontalFlip(), T.ToTensor()),
    _compose(T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.RandomHorizontalFlip()),
])
def test_transforms_that_are_not_one_crop_and_a_fixed_tail_are_unplannable(transform: Any) -> None:
    """Anything random besides the crop and one flip would make a view the plan cannot name."""
    assert CropPlan.from_transform(transform) is None


def test_plan_of_a_preset_object() -> None:
    preset = LargeImagePreset("edge-rrc-24", 24, 28, IMAGENET[0], IMAGENET[1])
    plan = CropPlan.from_preset(preset)
    assert plan is not None and plan.size == (24, 24) and plan.flip_p == 0.5
    assert plan.scale == (0.08, 1.0) and plan.ratio == pytest.approx((3 / 4, 4 / 3))
    assert CropPlan.from_preset("cifar") is None  # the batch fast path enumerates those


class _Images:
    """A minimal dataset: ``raw_image`` and ``targets``, optionally ``samples`` and ``root``."""

    def __init__(self, images: list[Image.Image], targets: list[int],
                 samples: list[tuple[str, int]] | None = None, root: str | None = None,
                 transform: Any = None) -> None:
        self.images, self.targets, self.transform = images, targets, transform
        if samples is not None:
            self.samples = samples
        if root is not None:
            self.root = root

    def __len__(self) -> int:
        return len(self.targets)

    def raw_image(self, index: int) -> Image.Image:
        return self.images[index]


class _NoDecode(_Images):
    def raw_image(self, index: int) -> Image.Image:
        raise AssertionError("image_sizes must read the file header, not decode the image")


def test_image_sizes_are_height_then_width() -> None:
    images = [Image.new("RGB", (5, 3)), Image.new("RGB", (2, 7))]
    sizes = image_sizes(_Images(images, [0, 1]))
    assert sizes.dtype == torch.long and sizes.tolist() == [[3, 5], [7, 2]]


def test_image_sizes_of_files_read_headers_only(tmp_path: Path) -> None:
    paths = []
    for k, (width, height) in enumerate([(5, 3), (2, 7), (4, 4)]):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (width, height)).save(paths[-1])
    dataset = _NoDecode([], [0, 1, 1], samples=[(str(p), t) for p, t in zip(paths, [0, 1, 1])])
    assert image_sizes(dataset).tolist() == [[3, 5], [7, 2], [4, 4]]


def _sha256(lines: list[str]) -> str:
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_dataset_identity_hashes_relative_paths_and_labels(tmp_path: Path) -> None:
    """The planned cache is keyed by this digest: moving the dataset root must not change it,
    a relabelled sample must. Without paths, indices and labels are hashed."""
    samples = [(str(tmp_path / "a" / "x.png"), 0), (str(tmp_path / "b" / "y.png"), 2)]
    rooted = _Images([], [0, 2], samples=samples, root=str(tmp_path))
    assert dataset_sha256(rooted) == _sha256(["a/x.png\t0\n", "b/y.png\t2\n"])
    unrooted = _Images([], [0, 2], samples=samples)
    assert dataset_sha256(unrooted) == _sha256([f"{p}\t{t}\n" for p, t in samples])
    no_paths = _Images([], [4, 1, 1])
    assert dataset_sha256(no_paths) == _sha256(["0\t4\n", "1\t1\n", "2\t1\n"])


class _NoRawImage:
    """A dataset that can only give transformed items, so its crops cannot be planned."""

    def __init__(self, transform: Any) -> None:
        self.transform, self.targets = transform, [0]

    def __len__(self) -> int:
        return 1


def test_planned_dataset_needs_raw_images_and_a_plannable_transform() -> None:
    crop = _compose(T.RandomResizedCrop(8), T.RandomHorizontalFlip(), T.PILToTensor())
    images = [position_image(12, 10)]
    assert PlannedDataset.from_dataset(_Images(images, [0], transform=crop), seed=0) is not None
    assert PlannedDataset.from_dataset(_NoRawImage(crop), seed=0) is None
    plain = _compose(T.RandomCrop(8), T.PILToTensor())
    assert PlannedDataset.from_dataset(_Images(images, [0], transform=plain), seed=0) is None


def test_planned_dataset_applies_the_epochs_row_and_refuses_before_set_epoch() -> None:
    crop = _compose(T.RandomResizedCrop(8), T.RandomHorizontalFlip(), T.PILToTensor())
    images = [position_image(12, 10), position_image(9, 14)]
    planned = PlannedDataset.from_dataset(_Images(images, [3, 5], transform=crop), seed=4)
    assert planned is not None
    with pytest.raises(RuntimeError, match="set_epoch"):
        planned[0]
    for epoch in (2, 5):
        planned.set_epoch(epoch)
        rows = sample_resized_crops(torch.tensor([[10, 12], [14, 9]]), plan_generator(4, epoch))
        for index, image in enumerate(images):
            top, left, height, width, flip = rows[index].tolist()
            want = TF.resized_crop(image, top, left, height, width, [8, 8], antialias=True)
            want = TF.hflip(want) if flip else want
            got, label = planned[index]
            assert label == [3, 5][index]
            assert torch.equal(got, TF.pil_to_tensor(want))
