"""BatchRandAugment against torchvision's tensor functionals, image by image.

The reference is torchvision (what figkd.data.randaugment runs on uint8 tensors), never
the batched code itself: every op, forced on every (level, sign) pair, must give the same
uint8 pixels as the functional called with that image's parameters.
"""

from __future__ import annotations

import pytest
import torch
from randaugment_reference import chain_reference, forced, make_images, reference

from figkd.data import randaugment
from figkd.data.batch_randaugment import GEOMETRIC, OP_NAMES, BatchRandAugment

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(3, 32, 32), (1, 32, 32), (3, 24, 40)]


def test_op_names_follow_the_recipe() -> None:
    assert OP_NAMES == tuple(randaugment.OPS)
    assert set(GEOMETRIC) <= set(OP_NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_equals_torchvision(name: str, shape: tuple[int, int, int]) -> None:
    """Exact equality, image by image, for every (level, sign) pair of the default recipe."""
    channels, height, width = shape
    images = make_images(20, channels, height, width, seed=len(name) + channels + width)
    params = forced(name, 20, height, width)
    out = BatchRandAugment(num_ops=1).apply(images, params)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    changed = 0
    for i in range(20):
        magnitude = int(params["level"][i, 0]) / 10
        expected = reference(images[i], name, magnitude, float(params["sign"][i, 0]))
        assert torch.equal(out[i], expected), (name, shape, i, magnitude)
        changed += not torch.equal(expected, images[i])
    # the images are not degenerate for the op: most of them change (none where it is a no-op)
    no_op = name == "Identity" or (name == "Color" and channels == 1)
    assert changed == 0 if no_op else changed >= 12


@pytest.mark.parametrize("name", ["Rotate", "ShearY", "TranslateX", "Solarize", "Posterize",
                                  "Sharpness", "Contrast"])
def test_ops_at_another_max_magnitude_and_fill(name: str) -> None:
    """The per-level tables follow max_magnitude, the geometric fill follows ``fill``."""
    images = make_images(14, 3, 20, 28, seed=5)
    params = forced(name, 14, 20, 28, max_magnitude=7)
    out = BatchRandAugment(num_ops=1, max_magnitude=7, fill=9).apply(images, params)
    for i in range(14):
        magnitude = int(params["level"][i, 0]) / 7
        expected = reference(images[i], name, magnitude, float(params["sign"][i, 0]), fill=9)
        assert torch.equal(out[i], expected), (name, i)


def test_reference_is_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's torchvision reference is figkd.data.randaugment's op, sign pinned."""
    images = make_images(4, 3, 24, 40, seed=3)
    for sign in (1.0, -1.0):
        monkeypatch.setattr(randaugment, "_sign", lambda sign=sign: sign)
        for name in OP_NAMES:
            for level in (1, 6, 10):
                for img in images:
                    assert torch.equal(randaugment.OPS[name](img, level / 10),
                                       reference(img, name, level / 10, sign)), (name, level)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 24, 40)], ids=["rgb", "gray"])
def test_full_chain_equals_per_image_torchvision(shape: tuple[int, int, int]) -> None:
    """Two slots (slot 2 sees slot 1's output) and Cutout, with the drawn params."""
    channels, height, width = shape
    augment = BatchRandAugment(prob=0.8)
    images = make_images(96, channels, height, width, seed=11)
    params = augment.sample(96, height, width, torch.Generator().manual_seed(7))
    assert params["fire"].all(dim=1).sum() > 40  # many images chain two ops
    out = augment.apply(images, params)
    assert torch.equal(out, chain_reference(images, params, 10))
    assert not torch.equal(out, images)


def test_call_draws_and_applies_and_leaves_the_input_alone() -> None:
    augment = BatchRandAugment(max_magnitude=5)
    images = make_images(32, 3, 16, 16, seed=2)
    before = images.clone()
    out = augment(images, torch.Generator().manual_seed(1))
    params = augment.sample(32, 16, 16, torch.Generator().manual_seed(1))
    assert torch.equal(images, before)
    assert torch.equal(out, chain_reference(images, params, 5))
    assert augment(images[:0], torch.Generator()).shape == (0, 3, 16, 16)


def test_sample_distribution() -> None:
    """Large-batch frequencies at a fixed seed: several standard deviations of slack (never
    flaky at this seed) but far tighter than e.g. prob=1, a missing op or level, or H/W swapped."""
    batch, height, width = 20_000, 24, 40
    params = BatchRandAugment().sample(batch, height, width, torch.Generator().manual_seed(0))
    op, level, fire, sign = params["op"], params["level"], params["fire"], params["sign"]
    assert op.shape == level.shape == fire.shape == sign.shape == (batch, 2)
    draws = op.numel()
    op_freq = torch.bincount(op.view(-1), minlength=14).double() / draws
    assert len(op_freq) == 14 and (op_freq - 1 / 14).abs().max() < 0.01  # sd 0.0013
    level_freq = torch.bincount(level.view(-1), minlength=11).double() / draws
    assert level_freq[0] == 0 and len(level_freq) == 11
    assert (level_freq[1:] - 0.1).abs().max() < 0.01  # sd 0.0015
    assert abs(fire.double().mean().item() - 0.5) < 0.01  # sd 0.0025
    assert set(sign.unique().tolist()) == {-1, 1}
    assert abs(sign.double().mean().item()) < 0.02  # sd 0.005
    # fire is independent of the op: every op fires about half the time
    for k in range(14):
        assert abs(fire[op == k].double().mean().item() - 0.5) < 0.04  # sd 0.009
    side = params["side"]
    assert side.min() >= 0 and side.max() < 0.5 * height
    assert abs(side.mean().item() - 0.25 * height) < 0.05  # sd 0.012
    x0, y0, x1, y1 = params["box"].unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
    assert (x1 >= x0).all() and (y1 >= y0).all()
    assert ((x1 - x0) <= side).all() and ((y1 - y0) <= side).all()
    assert x0.max() >= width - 2 and y0.max() <= height - 1 and x1.max() == width
    assert abs((x0.double().mean() - (width / 2 - 3)).item()) < 1.0  # centre uniform over W
    assert params["size"].tolist() == [height, width]
    rare = BatchRandAugment(prob=0.3, max_magnitude=4).sample(batch, 8, 8,
                                                              torch.Generator().manual_seed(0))
    assert abs(rare["fire"].double().mean().item() - 0.3) < 0.01
    assert sorted(rare["level"].unique().tolist()) == [1, 2, 3, 4]


def test_same_seed_same_params_and_output() -> None:
    augment = BatchRandAugment()
    images = make_images(64, 3, 32, 32, seed=4)
    first = augment.sample(64, 32, 32, torch.Generator().manual_seed(123))
    second = augment.sample(64, 32, 32, torch.Generator().manual_seed(123))
    other = augment.sample(64, 32, 32, torch.Generator().manual_seed(124))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["op"], other["op"])
    assert torch.equal(augment.apply(images, first), augment.apply(images, second))


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 8, 8), "uint8"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), r"\(B, C, H, W\).*unsqueeze"),
    (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "1- or 3-channel"),
])
def test_bad_images_raise(bad: torch.Tensor, match: str) -> None:
    augment = BatchRandAugment()
    with pytest.raises(ValueError, match=match):
        augment(bad, torch.Generator())
    with pytest.raises(ValueError, match=match):
        augment.apply(bad, forced("Identity", 2, 8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        augment([[0]], torch.Generator())  # type: ignore[arg-type]


def test_params_that_do_not_fit_raise() -> None:
    augment = BatchRandAugment()
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="sampled for size"):
        augment.apply(images, augment.sample(4, 8, 9, torch.Generator()))
    with pytest.raises(ValueError, match="4"):
        augment.apply(images, augment.sample(5, 8, 8, torch.Generator()))
    with pytest.raises(ValueError, match="max_magnitude"):
        BatchRandAugment(max_magnitude=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu_without_syncs() -> None:
    augment = BatchRandAugment(prob=0.9)
    images = make_images(256, 3, 32, 32, seed=8)
    params = augment.sample(256, 32, 32, torch.Generator().manual_seed(9))
    expected = augment.apply(images, params)
    gpu = images.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync raises
    try:
        out = augment.apply(gpu, params)
        forced_out = {name: augment.apply(gpu[:20], forced(name, 20, 32, 32)) for name in OP_NAMES}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == gpu.device
    assert torch.equal(out.cpu(), expected)
    for name, result in forced_out.items():
        assert torch.equal(result.cpu(), augment.apply(images[:20], forced(name, 20, 32, 32))), name


@pytest.mark.parametrize("shape", [(3, 2, 5), (1, 5, 2), (3, 3, 3)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", OP_NAMES)
def test_tiny_images_follow_torchvision_too(name: str, shape: tuple[int, int, int]) -> None:
    """At 2 pixels torchvision's sharpness leaves the image alone; at 3 it blurs the centre."""
    channels, height, width = shape
    images = make_images(20, channels, height, width, seed=5)
    params = forced(name, 20, height, width)
    out = BatchRandAugment(num_ops=1).apply(images, params)
    for i in range(20):
        magnitude = int(params["level"][i, 0]) / 10
        expected = reference(images[i], name, magnitude, float(params["sign"][i, 0]))
        assert torch.equal(out[i], expected), (name, shape, i)


def test_cutout_boxes_follow_the_recipe() -> None:
    """Centre uniform over the image, side U * cutout * min(H, W), clipped at the border.

    Worked by hand for H = 24, W = 40, cutout 0.5 (side s = 12 U1, centre (40 U2, 24 U3)):
    the start floor(centre - s / 2) is column 0 when 40 U2 < 6 U1 + 1, P = E[(6 U1 + 1) / 40]
    = 0.1, and row 0 when 24 U3 < 6 U1 + 1, P = 4 / 24 (sd <= 0.003 over 20,000 boxes).  The
    box reaches the far column when x0 + s >= 40, i.e. 40 U2 >= 40 - s / 2 + F with F the
    fraction floor() drops (uniform): P = E[(6 U1 - F)+] / 40 = (2.5 + 1/36) / 40 = 0.0632.
    A box clipped at neither end spans floor(s) pixels, since its start is a whole pixel.
    """
    params = BatchRandAugment().sample(20_000, 24, 40, torch.Generator().manual_seed(8))
    x0, y0, x1, y1 = params["box"].unbind(1)
    side = params["side"]
    assert abs((x0 == 0).double().mean().item() - 0.1) < 0.008
    assert abs((y0 == 0).double().mean().item() - 4 / 24) < 0.01
    inside_x = (x0 > 0) & (x0 + side <= 40)
    inside_y = (y0 > 0) & (y0 + side <= 24)
    assert inside_x.sum() > 15_000 and inside_y.sum() > 12_000
    assert torch.equal((x1 - x0)[inside_x], side[inside_x].floor().long())
    assert torch.equal((y1 - y0)[inside_y], side[inside_y].floor().long())
    assert abs((x1 == 40).double().mean().item() - 0.0632) < 0.008
    # the two centre coordinates are drawn independently (one shared draw: correlation ~0.9)
    centres = torch.stack([(x0 + x1).double(), (y0 + y1).double()])
    assert abs(torch.corrcoef(centres)[0, 1].item()) < 0.03


@pytest.mark.parametrize("kwargs", [
    {"num_ops": -1}, {"max_magnitude": 0}, {"prob": -0.1}, {"prob": 1.1}, {"cutout": -0.1},
    {"cutout_fill": -1}, {"cutout_fill": 256}, {"fill": -1}, {"fill": 256},
])
def test_bad_settings_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatchRandAugment(**kwargs)  # type: ignore[arg-type]


def test_boundary_settings_are_accepted() -> None:
    """The edges of each range are valid: no ops, one level, never/always fire, no Cutout."""
    images = make_images(4, 3, 8, 8)
    for kwargs in ({"num_ops": 0}, {"max_magnitude": 1}, {"prob": 0.0}, {"prob": 1.0},
                   {"cutout": 0.0}, {"cutout_fill": 0, "fill": 0},
                   {"cutout_fill": 255, "fill": 255}):
        augment = BatchRandAugment(**kwargs)
        out = augment(images, torch.Generator().manual_seed(0))
        assert out.shape == images.shape
    still = BatchRandAugment(prob=0.0, cutout=0.0)(images, torch.Generator().manual_seed(0))
    assert torch.equal(still, images)


@pytest.mark.parametrize("batch, height, width", [(-1, 8, 8), (2, 0, 8), (2, 8, 0)])
def test_sample_refuses_impossible_sizes(batch: int, height: int, width: int) -> None:
    with pytest.raises(ValueError, match="batch >= 0 and a positive image size"):
        BatchRandAugment().sample(batch, height, width, torch.Generator())


def test_sample_accepts_an_empty_batch_and_one_pixel_images() -> None:
    empty = BatchRandAugment().sample(0, 8, 8, torch.Generator())
    assert empty["op"].shape == (0, 2)
    one = BatchRandAugment().sample(3, 1, 1, torch.Generator().manual_seed(1))
    assert one["box"][:, 2:].le(1).all()
