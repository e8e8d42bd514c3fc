"""DiffKD: schedule and sampler arithmetic against NumPy, the DDPM loss on stubs, gradient
routing, bf16 autocast, the output terms and reproducibility (small zoo models on 16x16 inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from figkd.config import Config, config_from_dict, load_config
from figkd.engine import Trainer, load_weights_only, model_payload, save_atomic
from figkd.losses import build_loss
from figkd.losses.diffkd import (
    DiffKDLoss,
    KnowledgeDiffusion,
    ddim_step,
    ddim_timesteps,
    ddpm_noise_loss,
    linear_alphas_cumprod,
)
from figkd.models import ZooModel, create_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100" / "diffkd"


pytestmark = pytest.mark.usefixtures("one_thread")


def _np_abar(T: int = 1000, b0: float = 1e-4, b1: float = 0.02) -> np.ndarray:
    betas = b0 + (b1 - b0) * np.arange(T, dtype=np.float64) / (T - 1)
    out, acc = np.empty(T), 1.0
    for i, b in enumerate(betas):  # the cumulative product, written out
        acc *= 1.0 - b
        out[i] = acc
    return out


def test_linear_schedule_and_ddim_chain_match_a_hand_computation() -> None:
    abar = _np_abar()
    np.testing.assert_allclose(linear_alphas_cumprod(1000).numpy(), abar, rtol=1e-12)
    assert ddim_timesteps(1000, 5) == [(400, 300), (300, 200), (200, 100), (100, 0), (0, -1)]
    assert ddim_timesteps(100, 2) == [(25, 0), (0, -1)]
    with pytest.raises(ValueError):
        ddim_timesteps(8, 5)
    branch = KnowledgeDiffusion(
        4, 4, kernel_size=3, ae_channels=None, num_train_timesteps=1000, inference_steps=5,
        beta_start=1e-4, beta_end=0.02,
    )  # fmt: skip
    expected = [(t, abar[t], abar[p] if p >= 0 else 1.0) for t, p in ddim_timesteps(1000, 5)]
    for (t, a, ap), (t2, a2, ap2) in zip(branch.chain, expected, strict=True):
        assert t == t2 and a == pytest.approx(a2, rel=1e-12) and ap == pytest.approx(ap2, rel=1e-12)

    rng = np.random.default_rng(0)
    x, eps = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    a_t, a_p = abar[400], abar[300]
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    want = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p) * eps
    got = ddim_step(torch.from_numpy(x), torch.from_numpy(eps), a_t, a_p)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # last step (abar_prev = 1) returns the predicted x0
    np.testing.assert_allclose(
        ddim_step(torch.from_numpy(x), torch.from_numpy(eps), a_t, 1.0).numpy(), x0, atol=1e-12
    )


class _Const(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.value)


def test_denoise_runs_the_noise_adapted_ddim_chain() -> None:
    """Identity connector/projection, gamma = 0.7, eps(x, t) = 0.1 x: the whole sampler in NumPy."""
    c = 3
    branch = KnowledgeDiffusion(
        c, c, kernel_size=3, ae_channels=None, num_train_timesteps=1000, inference_steps=5,
        beta_start=1e-4, beta_end=0.02,
    )  # fmt: skip
    with torch.no_grad():
        for conv in (branch.connector, branch.proj):
            assert conv.bias is not None
            conv.weight.copy_(torch.eye(c)[:, :, None, None])
            conv.bias.zero_()
    branch.noise_adapter = _Const(0.7)  # type: ignore[assignment]
    seen: list[int] = []

    class Stub(nn.Module):
        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            seen.append(int(t))
            return 0.1 * x

    branch.denoiser = Stub()  # type: ignore[assignment]
    s = torch.randn(2, c, 4, 4)
    out = branch.denoise(s, torch.Generator().manual_seed(5))

    noise = torch.randn(s.shape, generator=torch.Generator().manual_seed(5)).double().numpy()
    abar = _np_abar()
    x = 0.7 * s.double().numpy() + 0.3 * noise
    for t, p in [(400, 300), (300, 200), (200, 100), (100, 0), (0, -1)]:
        eps = 0.1 * x
        a_t, a_p = abar[t], abar[p] if p >= 0 else 1.0
        x = np.sqrt(a_p) * (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t) + np.sqrt(1 - a_p) * eps
    assert seen == [400, 300, 200, 100, 0]
    np.testing.assert_allclose(out.detach().numpy(), x, rtol=1e-4, atol=1e-5)


def test_ddpm_noise_loss_on_stub_denoisers() -> None:
    abar = linear_alphas_cumprod(1000)
    x0 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    # zero prediction: the loss is the mean squared noise, drawn first from the generator
    zero = lambda x, t: torch.zeros_like(x)
    loss = ddpm_noise_loss(zero, x0, abar, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=replay, dtype=torch.float64)
    t = torch.randint(0, 1000, (3,), generator=replay)
    assert float(loss) == pytest.approx(float((noise**2).mean()), rel=1e-12)

    # a denoiser returning its input: check the forward noising and the loss in NumPy
    got: dict[str, Tensor] = {}

    def echo(x: Tensor, tt: Tensor) -> Tensor:
        got["x"], got["t"] = x, tt
        return x

    loss = ddpm_noise_loss(echo, x0, abar, torch.Generator().manual_seed(1))
    a = _np_abar()[t.numpy()][:, None, None, None]
    x_t = np.sqrt(a) * x0.numpy() + np.sqrt(1 - a) * noise.numpy()
    assert torch.equal(got["t"], t)
    np.testing.assert_allclose(got["x"].numpy(), x_t, rtol=1e-12)
    assert float(loss) == pytest.approx(float(np.mean((x_t - noise.numpy()) ** 2)), rel=1e-12)


def _pair(
    seed: int = 0, **options: object
) -> tuple[ZooModel, ZooModel, DiffKDLoss, Tensor, Tensor]:
    torch.manual_seed(seed)
    student = create_model("tiny_cnn", num_classes=10, width=4)
    teacher = create_model("tiny_cnn", num_classes=10, width=8).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    loss = build_loss("diffkd", **options)
    assert isinstance(loss, DiffKDLoss)
    loss.setup(student, teacher, example_input=x, num_train_samples=60)
    return student, teacher, loss, x, y


def _step(student: ZooModel, teacher: ZooModel, loss: DiffKDLoss, x: Tensor, y: Tensor) -> dict:
    fs = student.forward_features(x)
    with torch.no_grad():
        ft = teacher.forward_features(x)
    return loss(fs["logits"], ft["logits"], y, student_features=fs, teacher_features=ft)


def test_gradients_reach_student_and_every_diffkd_module_never_the_teacher() -> None:
    student, teacher, loss, x, y = _pair()
    teacher.requires_grad_(True)  # would receive gradients if anything flowed back
    terms = _step(student, teacher, loss, x, y)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    student_grads = [p.grad for p in student.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in student_grads)
    fb, lb = loss.feature_branch, loss.logit_branch
    assert fb is not None and lb is not None and fb.ae is not None
    for name, module in [
        ("connector", fb.connector), ("denoiser", fb.denoiser), ("noise_adapter", fb.noise_adapter),
        ("proj", fb.proj), ("ae.encoder", fb.ae.encoder), ("ae.decoder", fb.ae.decoder),
        ("logit connector", lb.connector), ("logit denoiser", lb.denoiser),
        ("logit noise_adapter", lb.noise_adapter),
    ]:  # fmt: skip
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, name


def test_terms_finite_under_bf16_autocast() -> None:
    student, teacher, loss, x, y = _pair(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = _step(student, teacher, loss, x, y)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.grad is not None)


def test_output_terms_and_switches() -> None:
    student, teacher, loss, x, y = _pair()
    terms = _step(student, teacher, loss, x, y)
    assert set(terms) == set(DiffKDLoss.term_names)
    assert all(v.ndim == 0 for v in terms.values()) and terms["ae"].item() > 0
    assert loss.feature_branch is not None and loss.feature_branch.ae is not None
    assert loss.feature_branch.ae.encoder[0].out_channels == 16  # the teacher's 32 channels halved

    student, teacher, plain, x, y = _pair(logit_diffusion=False, use_ae=False, feat_weight=2.0)
    terms = _step(student, teacher, plain, x, y)
    assert set(terms) == {"ce", "feat", "diff", "ae", "logit"} and float(terms["ae"]) == 0.0
    assert plain.feature_branch is not None
    assert plain.logit_branch is None and plain.feature_branch.ae is None
    with pytest.raises(RuntimeError, match="setup"):
        build_loss("diffkd")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                             student_features={}, teacher_features={})  # fmt: skip
    with pytest.raises(ValueError):
        build_loss("diffkd", inference_steps=0)


def test_same_seed_reproduces_and_state_dict_carries_the_noise_stream() -> None:
    def two_steps(seed: int) -> list[float]:
        student, teacher, loss, x, y = _pair(seed)
        return [sum(_step(student, teacher, loss, x, y).values()).item() for _ in range(2)]

    first = two_steps(3)
    assert first == two_steps(3)
    assert first != two_steps(4)

    student, teacher, loss, x, y = _pair(3)
    _step(student, teacher, loss, x, y)
    saved = {k: v.clone() for k, v in loss.state_dict().items()}
    want = {k: v.item() for k, v in _step(student, teacher, loss, x, y).items()}
    _, _, fresh, _, _ = _pair(9)  # other parameters and another seed, until the state is loaded
    fresh.load_state_dict(saved)
    got = {k: v.item() for k, v in _step(student, teacher, fresh, x, y).items()}
    assert got == want


def test_configs_name_diffkd_with_the_paper_numbers() -> None:
    expected = {
        "resnet32x4_resnet8x4": 76.72,
        "wrn_40_2_wrn_40_1": 74.09,
        "resnet50_mobilenetv2": 69.21,
        "resnet32x4_shufflev1": 76.57,
        "resnet32x4_shufflev2": 77.52,
    }
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    for stem, top1 in expected.items():
        cfg = load_config(CONFIGS / f"{stem}.yaml")
        assert cfg.loss.name == "diffkd" and cfg.paper.top1 == top1


@pytest.mark.slow
@pytest.mark.parametrize("pair", [("resnet32x4", "ShuffleV1"), ("ResNet50", "MobileNetV2")])
def test_heterogeneous_pairs_pool_the_teacher_map(pair: tuple[str, str]) -> None:
    torch.manual_seed(0)
    teacher = create_model(pair[0], num_classes=100).eval()
    student = create_model(pair[1], num_classes=100)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    loss = build_loss("diffkd")
    assert isinstance(loss, DiffKDLoss)
    loss.setup(student, teacher, example_input=x, num_train_samples=10)
    terms = _step(student, teacher, loss, x, y)
    assert all(torch.isfinite(v) for v in terms.values())


class _Killed(Exception):
    pass


class _KillableDiffKD(DiffKDLoss):
    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.calls: dict[int, int] = {}  # epoch -> forward calls

    def forward(self, *args: Any, **context: Any) -> dict[str, Tensor]:
        epoch = context["epoch"]
        self.calls[epoch] = self.calls.get(epoch, 0) + 1
        if self.kill_at == (epoch, self.calls[epoch]):
            raise _Killed
        return super().forward(*args, **context)


@pytest.mark.slow
def test_trainer_resume_with_diffkd_is_bit_identical(tmp_path: Path) -> None:
    """The generator state travels in last.pt: a killed and resumed run equals a whole one."""
    teacher_file = tmp_path / "teacher.pt"
    torch.manual_seed(7)
    save_atomic(model_payload(create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)),
                teacher_file)  # fmt: skip

    def cfg(name: str) -> Config:
        return config_from_dict({
            "experiment": name, "output_dir": str(tmp_path),
            "model": {"name": "tiny_cnn", "args": {"width": 4}},
            "teacher": {"name": "tiny_cnn", "args": {"width": 8}, "checkpoint": str(teacher_file)},
            "data": {"dataset": "digits", "num_workers": 0}, "loss": {"name": "diffkd"},
            "schedule": {"milestones": [3]},
            "train": {"epochs": 2, "device": "cpu", "num_threads": 1, "progress": "none",
                      "deterministic": True, "max_steps_per_epoch": 4},
        })  # fmt: skip

    full = Trainer(cfg("full"), tmp_path / "full", loss=_KillableDiffKD()).fit()
    run = tmp_path / "killed"
    with pytest.raises(_Killed):
        Trainer(cfg("killed"), run, loss=_KillableDiffKD(kill_at=(2, 3))).fit()
    resumed = Trainer(cfg("killed"), run, resume=True, loss=_KillableDiffKD()).fit()
    a = load_weights_only(tmp_path / "full/checkpoints/last.pt")
    b = load_weights_only(run / "checkpoints/last.pt")
    assert "_extra_state" in a["loss"] and set(a["loss"]) == set(b["loss"])
    for part in ("model", "loss"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert resumed["resumed"] == 1 and resumed["final"] == full["final"]


def test_default_map_is_the_one_the_head_pools() -> None:
    """DiffKD distils "features before pooling": ``pooled_map``, which for MobileNetV2 is the
    1280-channel head map, not the last 160-channel stage; ``stage=`` picks a stage."""
    torch.manual_seed(0)
    teacher = create_model("ResNet50", num_classes=100).eval().requires_grad_(False)
    student = create_model("MobileNetV2", num_classes=100)
    x = torch.randn(2, 3, 32, 32)
    default = build_loss("diffkd")
    assert isinstance(default, DiffKDLoss)
    default.setup(student, teacher, example_input=x, num_train_samples=2)
    assert default.feature_branch is not None
    assert default.feature_branch.connector.in_channels == 1280
    staged = build_loss("diffkd", stage=-1)
    assert isinstance(staged, DiffKDLoss)
    staged.setup(student, teacher, example_input=x, num_train_samples=2)
    assert staged.feature_branch is not None
    assert staged.feature_branch.connector.in_channels == 160
    feats = student.forward_features(x)
    assert torch.equal(default._stage(feats, "student"), feats["pooled_map"])
