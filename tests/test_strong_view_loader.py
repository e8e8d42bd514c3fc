"""The fast path's (weak, strong) batches for MLKD against per-image references.

The strong view must be, image by image, what the per-image recipe does with the drawn
parameters: crop from the zero-padded image and flip (torchvision calls here), RandAugment
+ Cutout (torchvision's tensor functionals: tests/randaugment_reference.py), then ToTensor
and Normalize.  The weak view and the sample order must stay what one view gives.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from randaugment_reference import chain_reference

from figkd.data import GPUBatchLoader
from figkd.data.cache import TensorImageCache
from figkd.data.transforms import SmallImagePreset, get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


def _cache(count: int, channels: int, size: int, top: int = 255,
           scale: float = 255.0) -> TensorImageCache:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, top + 1, (count, channels, size, size), generator=g)
    targets = torch.arange(count) % 5
    return TensorImageCache(images.to(torch.uint8), targets, [str(c) for c in range(5)], scale)


def _normalize(pixels: torch.Tensor, preset: str) -> torch.Tensor:
    """ToTensor's /255 and Normalize, as the per-image path runs them."""
    spec = get_preset(preset)
    return TF.normalize(pixels.float() / 255.0, list(spec.mean), list(spec.std))


def _crop_flip(images: torch.Tensor, params: dict[str, torch.Tensor], padding: int) -> torch.Tensor:
    """RandomCrop(size, padding) with zero fill, then a horizontal flip, image by image."""
    size = images.shape[-1]
    out = []
    for i, img in enumerate(images):
        top, left = int(params["top"][i]), int(params["left"][i])
        crop = TF.pad(img, [padding] * 4)[:, top : top + size, left : left + size]
        out.append(TF.hflip(crop) if bool(params["flip"][i]) else crop)
    return torch.stack(out)


def test_both_views_equal_the_per_image_recipe_with_the_drawn_parameters() -> None:
    cache = _cache(48, 3, 32)
    loader = GPUBatchLoader(cache, 16, "cifar", seed=4, views=2)
    preset = get_preset("cifar")
    assert isinstance(preset, SmallImagePreset)
    padding = preset.padding
    plan = list(loader.plan(0))
    loader.return_params = True
    batches = list(loader)
    assert len(batches) == len(plan) == 3
    for (index, _), ((weak, strong), labels, (weak_params, strong_params)) in zip(
        plan, batches, strict=True
    ):
        pixels = cache.images[index]
        augment = strong_params["randaugment"]
        assert augment["fire"].any()  # the recipe ran, so the check below has teeth
        cropped = _crop_flip(pixels, strong_params["geometry"], padding)
        assert torch.equal(strong, _normalize(chain_reference(cropped, augment, 10), "cifar"))
        assert torch.equal(weak, _normalize(_crop_flip(pixels, weak_params, padding), "cifar"))
        assert torch.equal(labels, cache.targets[index])
        # two independent draws: the views' crops differ somewhere in the batch
        assert not torch.equal(weak_params["top"], strong_params["geometry"]["top"])


def test_order_and_first_weak_batch_are_those_of_one_view() -> None:
    """The strong view's draws come after the weak view's in each batch: the sample order
    (drawn first) and the first batch's weak view do not change with ``views``."""
    cache = _cache(64, 3, 32)
    one = list(GPUBatchLoader(cache, 16, "cifar", seed=9))
    two = list(GPUBatchLoader(cache, 16, "cifar", seed=9, views=2))
    assert [labels.tolist() for _, labels in one] == [labels.tolist() for _, labels in two]
    assert torch.equal(one[0][0], two[0][0][0])
    assert not torch.equal(one[1][0], two[1][0][0])  # later batches: the stream moved on


def test_a_cache_of_another_scale_goes_through_uint8_as_the_per_image_path_does() -> None:
    """Digits hold 0..16 (scale 16): the per-image RandAugment sees round(x / 16 * 255)."""
    cache = _cache(32, 1, 8, top=16, scale=16.0)
    loader = GPUBatchLoader(cache, 32, "digits", seed=1, views=2)
    (index, (_, strong_params)), = list(loader.plan(0))
    (weak, strong), _ = next(iter(loader))
    as_255 = (cache.images[index].float() / 16.0 * 255).round().to(torch.uint8)
    expected = _normalize(chain_reference(as_255, strong_params["randaugment"], 10), "digits")
    assert torch.equal(strong, expected)
    spec = get_preset("digits")
    plain = TF.normalize(cache.images[index].float() / 16.0, list(spec.mean), list(spec.std))
    assert torch.equal(weak, plain)  # digits' weak view: normalisation only


def test_two_views_need_training_batches() -> None:
    cache = _cache(8, 3, 32)
    with pytest.raises(ValueError, match=r"views=2.*train=True"):
        GPUBatchLoader(cache, 4, "cifar", train=False, views=2)
    with pytest.raises(ValueError, match=r"views=3"):
        GPUBatchLoader(cache, 4, "cifar", views=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_views_equal_cpu_views() -> None:
    cache = _cache(64, 3, 32)
    cpu = list(GPUBatchLoader(cache, 32, "cifar", seed=2, views=2))
    gpu = list(GPUBatchLoader(cache, 32, "cifar", seed=2, views=2, device="cuda"))
    for ((w0, s0), y0), ((w1, s1), y1) in zip(cpu, gpu, strict=True):
        assert torch.equal(w0, w1.cpu()) and torch.equal(s0, s1.cpu())
        assert torch.equal(y0, y1.cpu())


def test_the_batched_recipe_has_the_per_image_recipes_settings() -> None:
    """Same op count, magnitude scale, firing rate and Cutout size as ``preset.strong()``."""
    from figkd.data.batch_loader import StrongBatchAugment
    from figkd.data.randaugment import Cutout, RandAugment

    for preset in ("cifar", "tiny-imagenet-32", "digits"):
        steps = get_preset(preset).strong().transforms
        per_image = next(t for t in steps if isinstance(t, RandAugment))
        cutout = next(t for t in steps if isinstance(t, Cutout))
        batched = StrongBatchAugment(preset).randaugment
        assert (batched.num_ops, batched.max_magnitude, batched.prob) == (
            per_image.num_ops, per_image.max_magnitude, per_image.prob)
        assert (batched.cutout, batched.cutout_fill) == (cutout.max_fraction, cutout.fill)


def test_calling_the_strong_augment_samples_the_batch_it_is_given() -> None:
    from figkd.data.batch_loader import StrongBatchAugment

    images = _cache(12, 3, 32).images
    augment = StrongBatchAugment("cifar")
    called = augment(images, torch.Generator().manual_seed(6))
    params = augment.sample(12, torch.Generator().manual_seed(6))
    assert torch.equal(called, augment.apply(images, params))
