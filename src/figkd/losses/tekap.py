"""TeKAP, logit level (Hossain et al., "Single Teacher, Multiple Perspectives: Teacher Knowledge
Augmentation for Enhanced Knowledge Distillation", ICLR 2025).

TeKAP perturbs one frozen teacher's knowledge with Gaussian noise to simulate an ensemble of
teachers. At the logit level, each step draws M synthetic teachers

    z~_m = (1 - lam) * z_t + lam * eps_m,   eps_m ~ N(0, sigma^2) i.i.d. per sample and class,

and the student distils from the real teacher and from every synthetic one:

    L = ce_weight * CE + kd_weight * T^2 * (KL(p_t || p_s) + aug_weight * sum_m KL(p~_m || p_s)),

with p = softmax(z / T) and each KL a batch mean. Defaults are the official CIFAR-100 command
and code (mdimtiazh/TeKAP, README and ``distiller_zoo/Ours_TeKAP_L.py``): CE 0.1, KD 0.9, T 4,
M = 3, lam = 0.1, sigma = 1, aug_weight 0.8. The noise is drawn afresh on every call from
PyTorch's global generator (seeded by the engine) as one (M, B, C) tensor. It is drawn in
train and eval mode alike, because the noise *is* the method. With M = 0 or aug_weight = 0
the loss is exactly KD.

Not implemented: TeKAP's feature-level variant, which perturbs the teacher's penultimate
features inside CRD and needs a feature-based base method. The "TeKAP" row of the FiGKD paper's
Tables 1-2 is compared among logit methods, and this module is that logit-level method.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from figkd.losses.base import DistillationLoss, register_loss
from figkd.losses.kd import check_temperature, kd_divergence
from figkd.losses.precision import as_float
from figkd.losses.validation import check_logits, check_weight


def synthetic_teachers(teacher_logits: Tensor, noise: Tensor, mix: float) -> Tensor:
    """(M, B, C) synthetic teacher logits (1 - mix) * z_t + mix * noise."""
    return (1.0 - mix) * teacher_logits.unsqueeze(0) + mix * noise


@register_loss("tekap", aliases=("TeKAP",))
class TeKAPLoss(DistillationLoss):
    """Terms ``{"ce", "kd", "aug"}``: CE, KD from the teacher, KD from the noisy teachers."""

    term_names = ("ce", "kd", "aug")

    def __init__(
        self,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        num_augmented: int = 3,
        noise_mix: float = 0.1,
        noise_std: float = 1.0,
        aug_weight: float = 0.8,
        validate: bool = True,
    ):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)
        if type(num_augmented) is not int or num_augmented < 0:
            raise ValueError(f"num_augmented must be an integer >= 0, got {num_augmented!r}")
        self.num_augmented = num_augmented
        self.noise_mix = check_weight("noise_mix", noise_mix)
        if self.noise_mix > 1.0:
            raise ValueError(f"noise_mix must lie in [0, 1], got {noise_mix}")
        self.noise_std = check_weight("noise_std", noise_std)
        self.aug_weight = check_weight("aug_weight", aug_weight)
        self.validate = validate

    def draw_noise(self, teacher_logits: Tensor) -> Tensor:
        """The (M, B, C) Gaussian draws for one call, in at least float32."""
        dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
        shape = (self.num_augmented, *teacher_logits.shape)
        return torch.randn(shape, device=teacher_logits.device, dtype=dtype) * self.noise_std

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        **context: Any,
    ) -> dict[str, Tensor]:
        if self.validate:
            check_logits(student_logits, teacher_logits, targets)
        temperature = self.temperature
        kd = kd_divergence(student_logits, teacher_logits, temperature)
        if self.num_augmented and self.aug_weight:
            dtype = torch.promote_types(student_logits.dtype, torch.float32)
            teacher = teacher_logits.detach().to(dtype)
            fake = synthetic_teachers(teacher, self.draw_noise(teacher), self.noise_mix)
            log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
            log_p_fake = F.log_softmax(fake / temperature, dim=2)
            kl = (log_p_fake.exp() * (log_p_fake - log_p_s.unsqueeze(0))).sum(2)  # (M, B)
            aug = kl.mean(1).sum() * temperature**2
        else:
            aug = kd.new_zeros(())
        return {
            "ce": self.ce_weight * F.cross_entropy(as_float(student_logits), targets),
            "kd": self.kd_weight * kd,
            "aug": self.kd_weight * self.aug_weight * aug,
        }

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, ce_weight={self.ce_weight}, "
            f"kd_weight={self.kd_weight}, "
            f"num_augmented={self.num_augmented}, noise_mix={self.noise_mix}, "
            f"noise_std={self.noise_std}, aug_weight={self.aug_weight}"
        )
