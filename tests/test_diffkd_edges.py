"""Edge cases of DiffKD that the mutation run (tools/mutation.py, docs/testing.md) showed untested.

Expected values are worked in NumPy from the module docstring's formulas (Huang et al., NeurIPS
2023: DDPM noise prediction, DDIM with eta = 0, the noise-adapted start, the linear AE) or by
hand; the tests read the loss's parameters and replay its noise stream from its seed, never its
outputs. Small stub networks give the shapes; stub denoisers keep the sampler a closed form.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from numpy_reference import as_numpy, np_bn_train, np_ce, np_conv1x1
from torch import Tensor, nn

from figkd.losses import DistillationLoss, build_loss
from figkd.losses.diffkd import (
    Bottleneck,
    DiffKDLoss,
    KnowledgeDiffusion,
    LinearAutoEncoder,
    NoiseAdapter,
    NoisePredictor,
    ddim_timesteps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- NumPy references
def _np_abar(T: int, b0: float, b1: float) -> np.ndarray:
    """abar_t = prod_{s<=t} (1 - beta_s), betas linear from b0 to b1."""
    betas = b0 + (b1 - b0) * np.arange(T, dtype=np.float64) / (T - 1)
    return np.cumprod(1.0 - betas)


def _np_conv3x3(x: np.ndarray, conv: nn.Conv2d) -> np.ndarray:
    """A 3x3, padding-1 convolution as a sum of nine shifted 1x1 products."""
    w = as_numpy(conv.weight)
    h, wd = x.shape[-2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("oc,bchw->bohw", w[:, :, i, j], xp[:, :, i : i + h, j : j + wd])
    if conv.bias is not None:
        out += as_numpy(conv.bias).reshape(1, -1, 1, 1)
    return out


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _np_bottleneck(x: np.ndarray, block: Bottleneck) -> np.ndarray:
    """x + BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(x)))))))) in training mode."""
    c1, b1, _, c2, b2, _, c3, b3 = block.body
    assert isinstance(c1, nn.Conv2d) and isinstance(c2, nn.Conv2d) and isinstance(c3, nn.Conv2d)
    assert isinstance(b1, nn.BatchNorm2d) and isinstance(b2, nn.BatchNorm2d)
    assert isinstance(b3, nn.BatchNorm2d)
    h = _relu(np_bn_train(np_conv1x1(x, c1), b1))
    h = _relu(np_bn_train(_np_conv3x3(h, c2), b2))
    return x + np_bn_train(np_conv1x1(h, c3), b3)


def _np_kd(zs: np.ndarray, zt: np.ndarray, temp: float) -> float:
    """T^2 * batch-mean KL(softmax(zt / T) || softmax(zs / T))."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z / temp
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lt, ls = log_softmax(zt), log_softmax(zs)
    return float(temp * temp * (np.exp(lt) * (lt - ls)).sum(1).mean())


def _np_block_mean(x: np.ndarray, size: int) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _randomise_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters, so a skipped or misplaced BN changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


def _encoder_layers(ae: LinearAutoEncoder | None) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The AE encoder's 1x1 conv and BN (the AE must be on)."""
    assert ae is not None
    conv, bn = ae.encoder[0], ae.encoder[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return conv, bn


# ----------------------------------------------------------------------------- stubs
class _Net(nn.Module):
    """A "network" whose forward_features returns fixed tensors (setup reads only shapes)."""

    def __init__(self, **features: Any) -> None:
        super().__init__()
        self.features = features

    def forward_features(self, x: Tensor) -> dict[str, Any]:
        return self.features


class _ConstGamma(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.value)


class _LinearEps(nn.Module):
    """eps(x, t) = 0.1 x + 0.01 t: reads both x and the timestep it is given."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return 0.1 * x + 0.01 * t.to(x.dtype).reshape(-1, 1, 1, 1)


def _np_eps(x: np.ndarray, t: np.ndarray | int) -> np.ndarray:
    return 0.1 * x + 0.01 * np.reshape(np.asarray(t, dtype=np.float64), (-1, 1, 1, 1))


# ----------------------------------------------------------------------------- schedule / options
def test_ddim_chain_with_stride_one_and_with_one_step() -> None:
    """T = 2n gives stride 1 (allowed); T = 2n - 1 cannot; one step is just t = 0."""
    assert ddim_timesteps(10, 5) == [(4, 3), (3, 2), (2, 1), (1, 0), (0, -1)]
    with pytest.raises(ValueError, match="at least 10"):
        ddim_timesteps(9, 5)
    assert ddim_timesteps(1000, 1) == [(0, -1)]
    loss = build_loss("diffkd", inference_steps=1)
    assert isinstance(loss, DiffKDLoss) and loss.inference_steps == 1


@pytest.mark.parametrize(
    "beta_start, beta_end",
    [(0.0, 0.02), (0.02, 0.02), (0.03, 0.02), (1e-4, 1.0), (-1e-4, 0.02)],
)
def test_beta_range_must_be_strictly_inside_zero_one(beta_start: float, beta_end: float) -> None:
    with pytest.raises(ValueError, match="beta_start"):
        build_loss("diffkd", beta_start=beta_start, beta_end=beta_end)


def test_betas_just_inside_the_range_are_accepted() -> None:
    loss = build_loss("diffkd", beta_start=1e-9, beta_end=0.999)
    assert (loss.beta_start, loss.beta_end) == (1e-9, 0.999)


def test_defaults_are_the_papers_settings() -> None:
    """Module docstring: every weight 1 (the paper's lambdas), KD temperature 4, the AE on at
    half the teacher's width, logits diffused, 5 DDIM steps of a 1000-step linear schedule
    from 1e-4 to 0.02 (the official settings)."""
    loss = build_loss("diffkd")
    assert isinstance(loss, DiffKDLoss) and loss.stage is None
    weights = (loss.ce_weight, loss.feat_weight, loss.diff_weight, loss.ae_weight,
               loss.logit_weight)  # fmt: skip
    assert weights == (1.0, 1.0, 1.0, 1.0, 1.0) and loss.temperature == 4.0
    assert loss.use_ae is True and loss.ae_channels is None and loss.logit_diffusion is True
    assert (loss.inference_steps, loss.num_train_timesteps) == (5, 1000)
    assert (loss.beta_start, loss.beta_end) == (1e-4, 0.02)


def test_diffkd_asks_the_trainer_for_features() -> None:
    """Without features the trainer would call forward without the maps DiffKD distils."""
    assert build_loss("DiffKD").needs_features is True


# ----------------------------------------------------------------------------- modules vs NumPy
def test_logit_noise_predictor_is_two_conv_mlps_of_width_4c() -> None:
    """kernel_size 1: x + emb(t) -> conv-BN-ReLU-conv-BN -> conv-BN-ReLU-conv (no final BN)."""
    torch.manual_seed(0)
    c, T = 3, 10
    net = NoisePredictor(c, T, kernel_size=1)
    _randomise_bn(net, 1)
    convs = [m for m in net.net if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.net if isinstance(m, nn.BatchNorm2d)]
    assert [m.out_channels for m in convs] == [4 * c, c, 4 * c, c] and len(bns) == 3
    x, t = torch.randn(5, c, 1, 1), torch.tensor([0, 3, 9, 3, 1])
    got = net(x, t)
    emb = as_numpy(net.time_embedding.weight)[t.numpy()]
    h = as_numpy(x) + emb[:, :, None, None]
    h = _relu(np_bn_train(np_conv1x1(h, convs[0]), bns[0]))
    h = np_bn_train(np_conv1x1(h, convs[1]), bns[1])
    h = _relu(np_bn_train(np_conv1x1(h, convs[2]), bns[2]))
    want = np_conv1x1(h, convs[3])
    np.testing.assert_allclose(as_numpy(got), want, rtol=1e-4, atol=1e-5)
    # a scalar timestep (what the DDIM chain passes) is the same embedding for every sample
    got = net(x, torch.tensor(7))
    h = as_numpy(x) + as_numpy(net.time_embedding.weight)[7][None, :, None, None]
    h = _relu(np_bn_train(np_conv1x1(h, convs[0]), bns[0]))
    h = np_bn_train(np_conv1x1(h, convs[1]), bns[1])
    h = _relu(np_bn_train(np_conv1x1(h, convs[2]), bns[2]))
    np.testing.assert_allclose(as_numpy(got), np_conv1x1(h, convs[3]), rtol=1e-4, atol=1e-5)


def test_feature_noise_predictor_is_two_bottlenecks_conv_and_bn() -> None:
    """kernel_size 3: x + emb(t) -> Bottleneck(C/4 wide) x 2 -> 1x1 conv -> BN."""
    torch.manual_seed(2)
    c = 8
    net = NoisePredictor(c, 20, kernel_size=3)
    _randomise_bn(net, 3)
    b1, b2, conv, bn = net.net
    assert isinstance(b1, Bottleneck) and isinstance(b2, Bottleneck)
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert b1.body[0].out_channels == c // 4 and b2.body[0].out_channels == c // 4
    x, t = torch.randn(3, c, 4, 4), torch.tensor([5, 0, 19])
    h = as_numpy(x) + as_numpy(net.time_embedding.weight)[t.numpy()][:, :, None, None]
    want = np_bn_train(np_conv1x1(_np_bottleneck(_np_bottleneck(h, b1), b2), conv), bn)
    np.testing.assert_allclose(as_numpy(net(x, t)), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="kernel_size"):
        NoisePredictor(c, 20, kernel_size=2)


def test_bottleneck_narrower_than_its_reduction_keeps_one_channel() -> None:
    """max(C // reduction, 1): 3 channels at reduction 4 run one mid channel, not zero or two."""
    torch.manual_seed(9)
    block = Bottleneck(3)
    _randomise_bn(block, 10)
    assert [m.out_channels for m in block.body if isinstance(m, nn.Conv2d)] == [1, 1, 3]
    x = torch.randn(4, 3, 3, 3)
    np.testing.assert_allclose(
        as_numpy(block(x)), _np_bottleneck(as_numpy(x), block), rtol=1e-4, atol=1e-5
    )


def _np_gamma(pooled: np.ndarray, head: nn.Linear) -> np.ndarray:
    """softmax over the head's two logits, first entry: sigmoid(l0 - l1)."""
    w, b = as_numpy(head.weight), as_numpy(head.bias)
    assert w.shape[0] == 2  # a two-way softmax: gamma and 1 - gamma
    logits = pooled @ w.T + b
    return 1.0 / (1.0 + np.exp(-(logits[:, 0] - logits[:, 1])))


def test_noise_adapter_gamma_for_logits_and_for_feature_maps() -> None:
    torch.manual_seed(4)
    c = 4
    small = NoiseAdapter(c, kernel_size=1)  # conv-BN-ReLU-conv-BN (width 2C), pool, linear
    _randomise_bn(small, 5)
    convs = [m for m in small.body if isinstance(m, nn.Conv2d)]
    bns = [m for m in small.body if isinstance(m, nn.BatchNorm2d)]
    assert [m.out_channels for m in convs] == [2 * c, c] and len(bns) == 2
    x = torch.randn(5, c, 1, 1)
    h = _relu(np_bn_train(np_conv1x1(as_numpy(x), convs[0]), bns[0]))
    h = np_bn_train(np_conv1x1(h, convs[1]), bns[1]).mean(axis=(2, 3))
    np.testing.assert_allclose(as_numpy(small(x)), _np_gamma(h, small.head), rtol=1e-4, atol=1e-6)

    c = 16
    big = NoiseAdapter(c, kernel_size=3)  # Bottleneck(C/8 wide), pool, linear
    _randomise_bn(big, 6)
    block = big.body[0]
    assert isinstance(block, Bottleneck)
    assert block.body[0].out_channels == c // 8
    x = torch.randn(3, c, 4, 4)
    h = _np_bottleneck(as_numpy(x), block).mean(axis=(2, 3))
    np.testing.assert_allclose(as_numpy(big(x)), _np_gamma(h, big.head), rtol=1e-4, atol=1e-6)


def test_autoencoder_latent_is_the_detached_target_and_the_reconstruction_its_loss() -> None:
    torch.manual_seed(7)
    branch = KnowledgeDiffusion(
        2, 5, kernel_size=3, ae_channels=3, num_train_timesteps=20, inference_steps=2,
        beta_start=1e-3, beta_end=0.2,
    )  # fmt: skip
    assert isinstance(branch.ae, LinearAutoEncoder)
    _randomise_bn(branch.ae, 8)
    f_t = torch.randn(4, 5, 2, 2)
    target, rec = branch.teacher_target(f_t)
    enc_conv, enc_bn = _encoder_layers(branch.ae)
    z = np_bn_train(np_conv1x1(as_numpy(f_t), enc_conv), enc_bn)
    want_rec = np.mean((np_conv1x1(z, branch.ae.decoder) - as_numpy(f_t)) ** 2)
    np.testing.assert_allclose(as_numpy(target), z, rtol=1e-4, atol=1e-5)
    assert not target.requires_grad and rec is not None
    assert rec.item() == pytest.approx(want_rec, rel=1e-4)

    plain = KnowledgeDiffusion(
        2, 5, kernel_size=3, ae_channels=None, num_train_timesteps=20, inference_steps=2,
        beta_start=1e-3, beta_end=0.2,
    )  # fmt: skip
    target, rec = plain.teacher_target(f_t)
    assert plain.ae is None and rec is None and torch.equal(target, f_t)


# ----------------------------------------------------------------------------- setup
def _nets(
    c_s: int = 3, c_t: int = 6, classes: int = 5, batch: int = 4, seed: int = 0
) -> tuple[_Net, _Net]:
    gen = torch.Generator().manual_seed(seed)
    student = _Net(
        pooled_map=torch.randn(batch, c_s, 4, 4, generator=gen),
        stages=[torch.randn(batch, 2, 8, 8, generator=gen),
                torch.randn(batch, 7, 4, 4, generator=gen)],
        logits=torch.randn(batch, classes, generator=gen),
    )
    teacher = _Net(
        pooled_map=torch.randn(batch, c_t, 2, 2, generator=gen),
        stages=[torch.randn(batch, 9, 4, 4, generator=gen),
                torch.randn(batch, 11, 2, 2, generator=gen)],
        logits=torch.randn(batch, classes, generator=gen),
    )
    return student, teacher


def _setup(loss: DistillationLoss, student: _Net, teacher: _Net) -> DiffKDLoss:
    assert isinstance(loss, DiffKDLoss)
    loss.setup(student, teacher, example_input=torch.zeros(4, 3, 8, 8), num_train_samples=8)
    return loss


def _feature_branch(loss: DiffKDLoss) -> KnowledgeDiffusion:
    assert loss.feature_branch is not None, "setup() builds the feature branch"
    return loss.feature_branch


def test_ae_width_defaults_to_half_the_teacher_channels_but_at_least_one() -> None:
    student, teacher = _nets(c_t=1)
    loss = _setup(build_loss("diffkd"), student, teacher)
    assert _encoder_layers(_feature_branch(loss).ae)[0].out_channels == 1
    student, teacher = _nets(c_t=6)
    loss = _setup(build_loss("diffkd"), student, teacher)
    assert _encoder_layers(_feature_branch(loss).ae)[0].out_channels == 3
    loss = _setup(build_loss("diffkd", ae_channels=4), student, teacher)
    assert _encoder_layers(_feature_branch(loss).ae)[0].out_channels == 4
    assert _feature_branch(loss).connector.out_channels == 4  # the diffusion runs in the latent


@pytest.mark.parametrize("stage, channels", [(0, 2), (1, 7), (-1, 7), (-2, 2)])
def test_stage_picks_that_stage_of_the_student(stage: int, channels: int) -> None:
    student, teacher = _nets()
    loss = _setup(build_loss("diffkd", stage=stage), student, teacher)
    assert _feature_branch(loss).connector.in_channels == channels


@pytest.mark.parametrize("stage", [2, -3])
def test_stage_outside_the_stage_list_is_refused(stage: int) -> None:
    student, teacher = _nets()
    with pytest.raises(ValueError, match="stages"):
        _setup(build_loss("diffkd", stage=stage), student, teacher)


def test_missing_pooled_map_is_refused() -> None:
    student, teacher = _nets()
    del student.features["pooled_map"]
    with pytest.raises(ValueError, match="pooled_map"):
        _setup(build_loss("diffkd"), student, teacher)
    with pytest.raises(ValueError, match="teacher"):
        build_loss("diffkd").setup(
            student, None, example_input=torch.zeros(2, 3, 8, 8), num_train_samples=8
        )


def test_seed_comes_from_torchs_global_rng_uniform_below_2_pow_62() -> None:
    """Same global seed, same loss seed; the draw spans [0, 2^62): five draws all below 2^40
    would have probability 2^-110, so that bound catches a shrunken range."""
    student, teacher = _nets()
    seeds: list[int] = []
    for global_seed in (0, 1, 2, 3, 4):
        torch.manual_seed(global_seed)
        seed = _setup(build_loss("diffkd"), student, teacher).seed
        assert seed is not None
        seeds.append(seed)
    torch.manual_seed(0)
    assert _setup(build_loss("diffkd"), student, teacher).seed == seeds[0]
    assert all(0 <= s < 2**62 for s in seeds) and max(seeds) >= 2**40
    assert len(set(seeds)) == 5
    # the generator starts at that seed
    loss = _setup(build_loss("diffkd"), student, teacher)
    assert loss.seed is not None
    replay = torch.Generator().manual_seed(loss.seed)
    assert torch.equal(torch.randn(5, generator=loss.generator(torch.device("cpu"))),
                       torch.randn(5, generator=replay))  # fmt: skip


def test_generator_before_setup_asks_for_setup() -> None:
    loss = build_loss("diffkd")
    assert isinstance(loss, DiffKDLoss)
    with pytest.raises(RuntimeError, match="setup"):
        loss.generator(torch.device("cpu"))


# ----------------------------------------------------------------------------- generator state
def test_extra_state_before_setup_is_empty_and_loading_it_is_a_no_op() -> None:
    fresh = build_loss("diffkd")
    assert fresh.get_extra_state().numel() == 0
    fresh.set_extra_state(torch.Generator().get_state())  # nothing to restore into: ignored
    assert fresh._generator is None


def test_empty_extra_state_keeps_the_current_stream() -> None:
    student, teacher = _nets()
    loss = _setup(build_loss("diffkd"), student, teacher)
    gen = loss.generator(torch.device("cpu"))
    torch.randn(3, generator=gen)  # advance the stream
    assert loss.seed is not None
    replay = torch.Generator().manual_seed(loss.seed)
    torch.randn(3, generator=replay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.set_extra_state(torch.empty(0, dtype=torch.uint8))
    assert torch.equal(torch.randn(4, generator=gen), torch.randn(4, generator=replay))


def test_foreign_extra_state_warns_and_keeps_the_current_stream() -> None:
    student, teacher = _nets()
    loss = _setup(build_loss("diffkd"), student, teacher)
    gen = loss.generator(torch.device("cpu"))
    assert loss.seed is not None
    replay = torch.Generator().manual_seed(loss.seed)
    with pytest.warns(UserWarning, match="another device type"):
        loss.set_extra_state(torch.zeros(16, dtype=torch.uint8))
    assert torch.equal(torch.randn(4, generator=gen), torch.randn(4, generator=replay))


def test_checkpoint_holds_no_schedule_buffers() -> None:
    """The noise schedule and the DDIM timesteps are rebuilt from the options; saving them would
    add state_dict keys that checkpoints written without them lack (strict loads would fail)."""
    student, teacher = _nets()
    loss = _setup(build_loss("diffkd"), student, teacher)
    keys = set(loss.state_dict())
    assert not {k for k in keys if k.endswith(("alphas_cumprod", "chain_t"))}
    assert "_extra_state" in keys
    branch = _feature_branch(loss)
    assert branch.chain_t.tolist() == [400, 300, 200, 100, 0]
    np.testing.assert_allclose(
        as_numpy(branch.alphas_cumprod), _np_abar(1000, 1e-4, 0.02), rtol=1e-6
    )


# ----------------------------------------------------------------------------- the whole loss
def _stub(loss: DiffKDLoss, gamma: float = 0.7) -> None:
    """Closed-form denoisers and a constant noise adapter in every branch (the rest stays real)."""
    for branch in (loss.feature_branch, loss.logit_branch):
        if branch is not None:
            branch.denoiser = _LinearEps()  # type: ignore[assignment]
            branch.noise_adapter = _ConstGamma(gamma)  # type: ignore[assignment]
            if branch.ae is not None:
                _randomise_bn(branch.ae, 11)


def _np_sample(s: np.ndarray, noise: np.ndarray, abar: np.ndarray, gamma: float) -> np.ndarray:
    """The docstring's sampler for T = 20, 2 steps: t = 5 -> 0 -> x0 (abar_{-1} = 1)."""
    x = gamma * s + (1.0 - gamma) * noise
    for t, prev in [(5, 0), (0, -1)]:
        eps = _np_eps(x, t)
        a_t, a_p = abar[t], (abar[prev] if prev >= 0 else 1.0)
        x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
        x = np.sqrt(a_p) * x0 + np.sqrt(1.0 - a_p) * eps
    return x


def _np_ddpm(x0: np.ndarray, noise: np.ndarray, t: np.ndarray, abar: np.ndarray) -> float:
    a = abar[t][:, None, None, None]
    noisy = np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise
    return float(np.mean((_np_eps(noisy, t) - noise) ** 2))


OPTIONS: dict[str, float] = {
    "ce_weight": 0.5, "feat_weight": 1.5, "diff_weight": 2.5, "ae_weight": 0.25,
    "logit_weight": 3.0, "temperature": 2.0, "num_train_timesteps": 20, "inference_steps": 2,
    "beta_start": 1e-3, "beta_end": 0.2,
}  # fmt: skip


def test_every_term_with_logit_diffusion_and_ae_matches_numpy() -> None:
    """The whole forward: pooled student map, AE target, DDIM refinement, DDPM losses, KD on
    the denoised logits, each weighted; the noise replayed in the documented draw order."""
    torch.manual_seed(0)
    student, teacher = _nets(c_s=3, c_t=6, classes=5)
    loss = _setup(build_loss("diffkd", ae_channels=4, **OPTIONS), student, teacher)
    _stub(loss)
    fs, ft = student.features, teacher.features
    y = torch.tensor([0, 4, 2, 1])
    terms = loss(fs["logits"], ft["logits"], y, student_features=fs, teacher_features=ft)

    assert loss.seed is not None
    replay = torch.Generator().manual_seed(loss.seed)
    b = 4
    n_feat = as_numpy(torch.randn(b, 4, 2, 2, generator=replay))
    n_ddpm = as_numpy(torch.randn(b, 4, 2, 2, generator=replay))
    t_ddpm = torch.randint(0, 20, (b,), generator=replay).numpy()
    n_logit = as_numpy(torch.randn(b, 5, 1, 1, generator=replay))
    n_ldpm = as_numpy(torch.randn(b, 5, 1, 1, generator=replay))
    t_ldpm = torch.randint(0, 20, (b,), generator=replay).numpy()

    abar = _np_abar(20, 1e-3, 0.2)
    fb, lb = _feature_branch(loss), loss.logit_branch
    assert fb.ae is not None and lb is not None
    f_s = _np_block_mean(as_numpy(fs["pooled_map"]), 2)  # 4x4 student map pooled to 2x2
    f_t = as_numpy(ft["pooled_map"])
    enc_conv, enc_bn = _encoder_layers(fb.ae)
    z = np_bn_train(np_conv1x1(f_t, enc_conv), enc_bn)
    rec = np.mean((np_conv1x1(z, fb.ae.decoder) - f_t) ** 2)
    refined = np_conv1x1(_np_sample(np_conv1x1(f_s, fb.connector), n_feat, abar, 0.7), fb.proj)
    zs = as_numpy(fs["logits"])[:, :, None, None]
    zt = as_numpy(ft["logits"])[:, :, None, None]
    zs_ref = np_conv1x1(_np_sample(np_conv1x1(zs, lb.connector), n_logit, abar, 0.7), lb.proj)
    want = {
        "ce": 0.5 * np_ce(as_numpy(fs["logits"]), y.numpy()),
        "feat": 1.5 * float(np.mean((refined - z) ** 2)),
        "diff": 2.5 * _np_ddpm(z, n_ddpm, t_ddpm, abar),
        "ae": 0.25 * float(rec),
        "logit": 3.0 * _np_kd(zs_ref[:, :, 0, 0], zt[:, :, 0, 0], 2.0),
        "logit_diff": 2.5 * _np_ddpm(zt, n_ldpm, t_ldpm, abar),
    }
    assert set(terms) == set(want)
    for name, value in want.items():
        assert terms[name].item() == pytest.approx(value, rel=2e-4, abs=1e-6), name


def test_plain_terms_without_ae_and_logit_diffusion_match_numpy() -> None:
    """No AE: the target is the teacher map itself and ``ae`` is 0; no logit diffusion: KD on
    the raw logits. ``teacher_logits=None`` falls back to the teacher's feature logits."""
    torch.manual_seed(1)
    student, teacher = _nets(c_s=3, c_t=6, classes=5, seed=1)
    opts = dict(OPTIONS, use_ae=False, logit_diffusion=False)
    loss = _setup(build_loss("diffkd", **opts), student, teacher)
    _stub(loss, gamma=0.4)
    fs, ft = student.features, teacher.features
    y = torch.tensor([3, 3, 0, 1])
    terms = loss(fs["logits"], None, y, student_features=fs, teacher_features=ft)

    assert loss.seed is not None
    replay = torch.Generator().manual_seed(loss.seed)
    n_feat = as_numpy(torch.randn(4, 6, 2, 2, generator=replay))
    n_ddpm = as_numpy(torch.randn(4, 6, 2, 2, generator=replay))
    t_ddpm = torch.randint(0, 20, (4,), generator=replay).numpy()
    abar = _np_abar(20, 1e-3, 0.2)
    fb = _feature_branch(loss)
    f_s = _np_block_mean(as_numpy(fs["pooled_map"]), 2)
    f_t = as_numpy(ft["pooled_map"])
    refined = np_conv1x1(_np_sample(np_conv1x1(f_s, fb.connector), n_feat, abar, 0.4), fb.proj)
    want = {
        "ce": 0.5 * np_ce(as_numpy(fs["logits"]), y.numpy()),
        "feat": 1.5 * float(np.mean((refined - f_t) ** 2)),
        "diff": 2.5 * _np_ddpm(f_t, n_ddpm, t_ddpm, abar),
        "ae": 0.0,
        "logit": 3.0 * _np_kd(as_numpy(fs["logits"]), as_numpy(ft["logits"]), 2.0),
    }
    assert set(terms) == set(want)
    for name, value in want.items():
        assert terms[name].item() == pytest.approx(value, rel=2e-4, abs=1e-6), name


def test_explicit_teacher_logits_take_precedence_over_the_feature_logits() -> None:
    """The trainer may pass cached teacher logits; they, not ``teacher_features['logits']``,
    are the KD target."""
    student, teacher = _nets(seed=2)
    opts = dict(OPTIONS, use_ae=False, logit_diffusion=False)
    loss = _setup(build_loss("diffkd", **opts), student, teacher)
    fs, ft = student.features, teacher.features
    other = torch.randn(4, 5, generator=torch.Generator().manual_seed(9))
    terms = loss(fs["logits"], other, torch.zeros(4, dtype=torch.long),
                 student_features=fs, teacher_features=ft)  # fmt: skip
    want = 3.0 * _np_kd(as_numpy(fs["logits"]), as_numpy(other), 2.0)
    assert terms["logit"].item() == pytest.approx(want, rel=1e-5)
