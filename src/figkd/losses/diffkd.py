"""DiffKD: knowledge diffusion for distillation (Huang et al., NeurIPS 2023).

A small student's features are treated as *noisy* versions of the teacher's.
A light diffusion model learns the teacher's feature distribution (standard
DDPM noise prediction on teacher features), and the student's feature is
denoised by a few deterministic DDIM steps before it is matched to the
teacher.  The pieces, per distilled tensor (the feature map the head pools,
``pooled_map``, and by default the logits):

* connector: a 1x1 conv from the student's channels to the (latent) teacher's;
* optional linear autoencoder (1x1 conv + BN encoder, 1x1 conv decoder) that
  compresses the teacher feature to ``ae_channels``; the diffusion model and
  the KD loss live in that latent space, the AE learns from a reconstruction
  loss only (its latent is detached as a target);
* denoiser eps(x, t): x + emb(t) -> two residual bottlenecks -> 1x1 conv -> BN
  (for logits, kernel size 1: a 1x1 conv MLP);
* noise adapter: bottleneck -> global pool -> linear -> softmax[0] gives a
  per-sample gamma in (0, 1); the sampler starts from
  x = gamma * s + (1 - gamma) * noise (the official code's mixing);
* DDIM (eta = 0) from t = T/2 - T/(2n) down to 0 in n steps of T/(2n)
  (official: n = 5, T = 1000, timesteps 400, 300, 200, 100, 0), then a 1x1
  projection.

    L = ce_weight * CE + feat_weight * MSE(proj(DDIM(s)), z_t) + diff_weight * L_ddpm(z_t)
        + ae_weight * MSE(dec(enc(F_t)), F_t)
        + logit_weight * T^2 * KL(p_t^T || p(proj(DDIM(z_s)))^T) + diff_weight * L_ddpm(z_t logits)

Defaults: every weight 1 (the paper's lambdas), KD temperature 4, the AE
halves the teacher's channels, the logits are diffused too.  The official
repository (hunto/DiffKD) releases the module, not its CIFAR-100 config; the
choices are listed in docs/methods.md.

Every random draw (sampler start noise, DDPM noise and timesteps) comes from a
``torch.Generator`` the loss owns, seeded in ``setup`` from torch's global RNG
and saved in the loss's state_dict, so runs and resumed runs reproduce.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.feature_utils import match_spatial, probe_features, require_setup
from figkd.losses.kd import check_temperature, kd_divergence
from figkd.losses.precision import as_float
from figkd.losses.validation import check_weight

Denoiser = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- schedule
def linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), betas linear from beta_start to beta_end (float64)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of the truncated DDIM chain; t_prev = -1 means abar = 1.

    The stride is T // (2 * steps) and the chain runs the lower half of a
    2*steps grid: T=1000, steps=5 -> (400, 300), (300, 200), ..., (0, -100 -> -1).
    """
    stride = num_train_timesteps // (2 * steps)
    if stride < 1:
        raise ValueError(f"{steps} DDIM steps need at least {2 * steps} training timesteps")
    return [(stride * i, stride * i - stride if i > 0 else -1) for i in reversed(range(steps))]


def ddim_step(x: Tensor, eps: Tensor, abar_t: float | Tensor, abar_prev: float | Tensor) -> Tensor:
    """Deterministic DDIM update (eta = 0): x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t),
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    x0 = (x - math.sqrt(1.0 - float(abar_t)) * eps) / math.sqrt(float(abar_t))
    return math.sqrt(float(abar_prev)) * x0 + math.sqrt(1.0 - float(abar_prev)) * eps


def ddpm_noise_loss(
    denoiser: Denoiser, x0: Tensor, alphas_cumprod: Tensor, generator: torch.Generator
) -> Tensor:
    """DDPM's simple loss: mean((eps - denoiser(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t))^2).

    Draws eps ~ N(0, I) (shape of x0) first, then t ~ U{0, .., T-1} per sample,
    both from ``generator``.
    """
    x0 = as_float(x0)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = torch.randint(
        0, len(alphas_cumprod), (x0.shape[0],), generator=generator, device=x0.device
    )
    abar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t].view(-1, *[1] * (x0.dim() - 1))
    noisy = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    return F.mse_loss(as_float(denoiser(noisy, t)), noise)


# ----------------------------------------------------------------------------- modules
class Bottleneck(nn.Module):
    """Residual 1x1 -> 3x3 -> 1x1 bottleneck (BN after each conv, ReLU after the first two)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = max(channels // reduction, 1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1), nn.BatchNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _conv_mlp(*widths: int, final_bn: bool = True) -> list[nn.Module]:
    """1x1 conv -> BN [-> ReLU] chain through ``widths`` (no ReLU after the last conv)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Conv2d(cin, cout, 1))
        last = i == len(widths) - 2
        if not last or final_bn:
            layers.append(nn.BatchNorm2d(cout))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return layers


class NoisePredictor(nn.Module):
    """eps(x, t): add a learned timestep embedding (per channel), then a light conv net.

    kernel_size 3 (feature maps): two residual bottlenecks, 1x1 conv, BN.
    kernel_size 1 (logits as B x C x 1 x 1): two 1x1-conv MLPs of width 4C.
    """

    def __init__(self, channels: int, num_train_timesteps: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.time_embedding = nn.Embedding(num_train_timesteps, channels)
        if kernel_size == 3:
            self.net = nn.Sequential(
                Bottleneck(channels), Bottleneck(channels),
                nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels),
            )  # fmt: skip
        elif kernel_size == 1:
            wide = 4 * channels
            self.net = nn.Sequential(
                *_conv_mlp(channels, wide, channels),
                *_conv_mlp(channels, wide, channels, final_bn=False),
            )
        else:
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embedding(t.long().expand(x.shape[0]))
        return self.net(x + emb[:, :, None, None].to(x.dtype))


class NoiseAdapter(nn.Module):
    """gamma(s) in (0, 1): how much of the sampler's start is the student feature itself."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size == 3:
            self.body = nn.Sequential(Bottleneck(channels, reduction=8), nn.AdaptiveAvgPool2d(1))
        else:
            mlp = _conv_mlp(channels, 2 * channels, channels)
            self.body = nn.Sequential(*mlp, nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(channels, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).flatten(1)).float().softmax(dim=1)[:, 0]


class LinearAutoEncoder(nn.Module):
    """Encoder 1x1 conv -> BN to ``latent`` channels; decoder 1x1 conv back."""

    def __init__(self, channels: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, latent, 1), nn.BatchNorm2d(latent))
        self.decoder = nn.Conv2d(latent, channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


class KnowledgeDiffusion(nn.Module):
    """One DiffKD branch: connector, optional AE, denoiser, noise adapter, projection."""

    # non-persistent buffers registered in __init__
    alphas_cumprod: Tensor
    chain_t: Tensor

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        kernel_size: int,
        ae_channels: int | None,
        num_train_timesteps: int,
        inference_steps: int,
        beta_start: float,
        beta_end: float,
    ) -> None:
        super().__init__()
        self.ae = LinearAutoEncoder(teacher_channels, ae_channels) if ae_channels else None
        latent = ae_channels or teacher_channels
        self.connector = nn.Conv2d(student_channels, latent, 1)
        self.denoiser = NoisePredictor(latent, num_train_timesteps, kernel_size)
        self.noise_adapter = NoiseAdapter(latent, kernel_size)
        self.proj = nn.Conv2d(latent, latent, 1)
        self.register_buffer(
            "alphas_cumprod",
            linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end).float(),
            persistent=False,
        )
        abar = linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end).tolist()
        pairs = ddim_timesteps(num_train_timesteps, inference_steps)
        self.chain = [(t, abar[t], abar[prev] if prev >= 0 else 1.0) for t, prev in pairs]
        # the chain's timesteps as a device tensor: no host-to-device copy per step
        self.register_buffer("chain_t", torch.tensor([t for t, _ in pairs]), persistent=False)

    def teacher_target(self, f_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(detached target in the diffusion space, AE reconstruction loss or None)."""
        f_t = f_t.detach()
        if self.ae is None:
            return as_float(f_t), None
        z, rec = self.ae(f_t)
        return as_float(z).detach(), F.mse_loss(as_float(rec), as_float(f_t))

    def denoise(self, f_s: Tensor, generator: torch.Generator) -> Tensor:
        """Connector, noise-adapted start, the DDIM chain, projection (float32 arithmetic)."""
        s = as_float(self.connector(f_s))
        gamma = self.noise_adapter(s).view(-1, 1, 1, 1)
        noise = torch.randn(s.shape, generator=generator, device=s.device, dtype=s.dtype)
        x = gamma * s + (1.0 - gamma) * noise
        for i, (_, abar_t, abar_prev) in enumerate(self.chain):
            eps = as_float(self.denoiser(x, self.chain_t[i]))
            x = ddim_step(x, eps, abar_t, abar_prev)
        return as_float(self.proj(x))

    def ddpm_loss(self, target: Tensor, generator: torch.Generator) -> Tensor:
        return ddpm_noise_loss(self.denoiser, target, self.alphas_cumprod, generator)


# ----------------------------------------------------------------------------- the loss
@register_loss("diffkd", aliases=("DiffKD",))
class DiffKDLoss(DistillationLoss):
    """Terms ``ce``, ``feat``, ``diff``, ``ae``, ``logit`` (+ ``logit_diff`` with logit diffusion).

    ``feat`` is the MSE between the denoised student map (``pooled_map``, or
    ``stages[stage]``) and the (AE-compressed) teacher map; ``diff`` the DDPM
    loss of the feature denoiser; ``ae`` the AE's reconstruction loss (0 without AE); ``logit`` KD
    (T^2 KL) from the teacher's logits to the student's logits, denoised by a
    second, 1x1 diffusion branch when ``logit_diffusion`` (then ``logit_diff``
    is that branch's DDPM loss).
    """

    term_names = ("ce", "feat", "diff", "ae", "logit", "logit_diff")
    needs_features = True

    def __init__(
        self,
        stage: int | None = None,
        ce_weight: float = 1.0,
        feat_weight: float = 1.0,
        diff_weight: float = 1.0,
        ae_weight: float = 1.0,
        logit_weight: float = 1.0,
        temperature: float = 4.0,
        use_ae: bool = True,
        ae_channels: int | None = None,
        logit_diffusion: bool = True,
        inference_steps: int = 5,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        self.stage = None if stage is None else int(stage)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)
        self.diff_weight = check_weight("diff_weight", diff_weight)
        self.ae_weight = check_weight("ae_weight", ae_weight)
        self.logit_weight = check_weight("logit_weight", logit_weight)
        self.temperature = check_temperature(temperature)
        self.use_ae = bool(use_ae)
        self.ae_channels = ae_channels
        self.logit_diffusion = bool(logit_diffusion)
        if int(inference_steps) < 1:
            raise ValueError(f"inference_steps must be >= 1, got {inference_steps}")
        self.inference_steps = int(inference_steps)
        self.num_train_timesteps = int(num_train_timesteps)
        ddim_timesteps(self.num_train_timesteps, self.inference_steps)  # validates the pair
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.feature_branch: KnowledgeDiffusion | None = None
        self.logit_branch: KnowledgeDiffusion | None = None
        self.seed: int | None = None
        self._generator: torch.Generator | None = None

    # -- randomness -------------------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        """The loss's own generator on ``device`` (re-seeded from ``seed`` on a device change)."""
        if self.seed is None:  # setup() draws it right after building the branches
            require_setup(self, "feature_branch")
            raise RuntimeError(
                f"{type(self).__name__} has a feature_branch but no seed: call setup()"
            )
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def get_extra_state(self) -> Tensor:
        """The generator's state, so ``--resume`` continues the same noise stream."""
        if self._generator is None:
            return torch.empty(0, dtype=torch.uint8)
        return self._generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        if state.numel() == 0 or self._generator is None:
            return
        try:
            self._generator.set_state(state.to("cpu", torch.uint8))
        except RuntimeError:
            warnings.warn(
                "DiffKD: the saved noise-generator state is for another device type; "
                "keeping the current generator (noise draws will differ from the saved run)",
                stacklevel=2,
            )

    # -- construction -------------------------------------------------------------------------
    def _stage(self, features: Any, who: str) -> Tensor:
        """The distilled map: ``pooled_map`` (the map the head pools, the paper's "features
        before pooling") by default, else ``stages[stage]``."""
        if self.stage is None:
            if features.get("pooled_map") is None:
                raise ValueError(
                    f"DiffKD distils the {who}'s 'pooled_map' (the map before global pooling), "
                    "which its forward_features() does not give; set stage= to use a stage"
                )
            return features["pooled_map"]
        stages = features["stages"]
        if not -len(stages) <= self.stage < len(stages):
            raise ValueError(f"stage={self.stage} but the {who} has {len(stages)} stages")
        return stages[self.stage]

    def _branch(self, c_s: int, c_t: int, kernel_size: int, ae: int | None) -> KnowledgeDiffusion:
        return KnowledgeDiffusion(
            c_s,
            c_t,
            kernel_size=kernel_size,
            ae_channels=ae,
            num_train_timesteps=self.num_train_timesteps,
            inference_steps=self.inference_steps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
        )

    def setup(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_input: Tensor,
        num_train_samples: int,
    ) -> None:
        if teacher is None:
            raise ValueError("DiffKD needs a teacher")
        f_s, f_t = probe_features(student, example_input), probe_features(teacher, example_input)
        s, t = match_spatial(self._stage(f_s, "student"), self._stage(f_t, "teacher"))
        c_t = t.shape[1]
        ae = (self.ae_channels or max(c_t // 2, 1)) if self.use_ae else None
        device = s.device
        self.feature_branch = self._branch(s.shape[1], c_t, 3, ae).to(device)
        if self.logit_diffusion:
            n_s, n_t = f_s["logits"].shape[1], f_t["logits"].shape[1]
            self.logit_branch = self._branch(n_s, n_t, 1, None).to(device)
        self.seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's global RNG
        self._generator = None
        self.generator(device)

    # -- loss -------------------------------------------------------------------------------
    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        student_features: Any,
        teacher_features: Any,
        **context: Any,
    ) -> dict[str, Tensor]:
        branch: KnowledgeDiffusion = require_setup(self, "feature_branch")
        gen = self.generator(student_logits.device)
        if teacher_logits is None:
            teacher_logits = teacher_features["logits"]
        f_s, f_t = match_spatial(
            self._stage(student_features, "student"), self._stage(teacher_features, "teacher")
        )
        target, rec = branch.teacher_target(f_t)
        refined = branch.denoise(f_s, gen)
        terms = {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "feat": self.feat_weight * F.mse_loss(refined, target),
            "diff": self.diff_weight * branch.ddpm_loss(target, gen),
            "ae": self.ae_weight * rec if rec is not None else refined.new_zeros(()),
        }
        if self.logit_branch is not None:
            z_t = as_float(teacher_logits.detach())[:, :, None, None]
            z_s = self.logit_branch.denoise(student_logits[:, :, None, None], gen).flatten(1)
            kd = kd_divergence(z_s, z_t.flatten(1), self.temperature)
            terms["logit"] = self.logit_weight * kd
            terms["logit_diff"] = self.diff_weight * self.logit_branch.ddpm_loss(z_t, gen)
        else:
            terms["logit"] = self.logit_weight * kd_divergence(
                student_logits, teacher_logits, self.temperature
            )
        return terms

    def extra_repr(self) -> str:
        return (
            f"stage={self.stage}, ce_weight={self.ce_weight}, feat_weight={self.feat_weight}, "
            f"diff_weight={self.diff_weight}, ae_weight={self.ae_weight}, "
            f"logit_weight={self.logit_weight}, temperature={self.temperature}, "
            f"use_ae={self.use_ae}, ae_channels={self.ae_channels}, "
            f"logit_diffusion={self.logit_diffusion}, inference_steps={self.inference_steps}, "
            f"num_train_timesteps={self.num_train_timesteps}"
        )
