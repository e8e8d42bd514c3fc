"""Logit losses give their float32 values and gradients under the trainer's autocast.

The trainer computes the loss inside ``torch.autocast`` (``train.amp=bf16|fp16``), which
silently runs matmuls and convolutions in half precision.  A loss built from such an op on
a *difference* of nearly equal quantities loses most of its digits once the student fits
the teacher (MLKD's Gram matrices lost 21 % in bf16 before they were pinned to float32).
Here every logit-only loss sees float32 logits of a student close to its teacher, with
autocast off and on, and must give the same terms and gradients.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from figkd.losses import LOSSES, build_loss

LOGIT_ONLY = sorted(
    name for name in LOSSES
    if not getattr(build_loss(name), "needs_features", False)
    and not getattr(build_loss(name), "needs_images", False)
)
VARIANTS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in LOGIT_ONLY] + [
    ("kd", {"standardize": True}),
    ("dkd", {"standardize": True}),
    ("mlkd", {"standardize": True}),
    ("mlkd", {"variant": "official"}),
    ("figkd", {"noise_std": 0.1}),
    ("figkd", {"level": 3, "bands": "both"}),
    ("figkd", {"wavelet": "db2"}),
    ("figkd", {"transform": "1d"}),
]


def _terms(name: str, options: dict, student: torch.Tensor, teacher: torch.Tensor,
           targets: torch.Tensor, dtype: torch.dtype | None) -> tuple[dict, torch.Tensor]:
    loss = build_loss(name, **options)
    student = student.clone().requires_grad_(True)
    extra = {}
    if getattr(loss, "num_views", 1) == 2:  # MLKD: the strong view, also close to the teacher
        extra = {"student_logits_strong": student.flip(0), "teacher_logits_strong": teacher.flip(0)}
    torch.manual_seed(7)  # TeKAP and FiGKD's noise: the same draw in both runs
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        terms = loss(student, teacher, targets, epoch=30, **extra)
    total = sum(terms.values())
    (grad,) = torch.autograd.grad(total, student)
    return {k: v.detach() for k, v in terms.items()}, grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("name", "options"), VARIANTS,
                         ids=[f"{n}{'-' + '-'.join(map(str, o.values())) if o else ''}"
                              for n, o in VARIANTS])
def test_terms_and_gradients_equal_float32_under_autocast(
    name: str, options: dict, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(32, 100, generator=gen) * 3
    student = teacher + 0.05 * torch.randn(32, 100, generator=gen)  # late in training
    targets = torch.randint(0, 100, (32,), generator=gen)
    want, want_grad = _terms(name, options, student, teacher, targets, None)
    got, got_grad = _terms(name, options, student, teacher, targets, dtype)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == torch.float32, key
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-7, msg=key)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("name", "options"), VARIANTS,
                         ids=[f"{n}{'-' + '-'.join(map(str, o.values())) if o else ''}"
                              for n, o in VARIANTS])
def test_half_precision_logits_give_the_terms_of_their_float32_values(
    name: str, options: dict
) -> None:
    """bf16 logits passed directly (no autocast), e.g. from a ``.bfloat16()`` model: every
    term, the CE terms included, is computed in float32 from the same values."""
    gen = torch.Generator().manual_seed(1)
    teacher = (torch.randn(16, 100, generator=gen) * 3).bfloat16()
    student = (teacher.float() + 0.3 * torch.randn(16, 100, generator=gen)).bfloat16()
    targets = torch.randint(0, 100, (16,), generator=gen)
    half, _ = _terms(name, options, student, teacher, targets, None)
    full, _ = _terms(name, options, student.float(), teacher.float(), targets, None)
    for key in full:
        assert half[key].dtype == torch.float32, key
        torch.testing.assert_close(half[key], full[key], rtol=1e-6, atol=1e-8, msg=key)


# ----------------------------------------------------------------- relational feature losses
# Parameter-free feature terms built on Gram matrices, distances and similarities: their
# arithmetic must stay float32 (learned connectors of FitNet, OFD, ... keep autocast on purpose).
RELATIONAL = ["rkd", "pkt", "sp", "at", "catkd"]


def _feature_terms(name: str, dtype: torch.dtype | None) -> tuple[dict, torch.Tensor | None]:
    from figkd.models import create_model

    torch.manual_seed(3)
    teacher = create_model("resnet32x4", num_classes=100).eval().requires_grad_(False)
    student = create_model("resnet8x4", num_classes=100).eval()  # eval: no BN-stat updates
    x = torch.randn(16, 3, 32, 32)
    loss = build_loss(name)
    loss.setup(student, teacher, example_input=x[:2], num_train_samples=16)
    with torch.no_grad():
        t_feats = teacher.forward_features(x)
    s_feats = student.forward_features(x)  # float32: only the loss runs under autocast
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        terms = loss(s_feats["logits"], t_feats["logits"], torch.arange(16) % 100,
                     student_features=s_feats, teacher_features=t_feats,
                     index=torch.arange(16), epoch=30)
    feature_term = sum(v for k, v in terms.items() if k != "ce")
    (grad,) = torch.autograd.grad(feature_term, s_feats["embedding"], retain_graph=False,
                                  allow_unused=True) if name in ("rkd", "pkt") else (None,)
    return {k: v.detach() for k, v in terms.items()}, grad


@pytest.mark.parametrize("name", RELATIONAL)
def test_relational_feature_terms_equal_float32_under_autocast(name: str) -> None:
    """Untrained networks give nearly collinear embeddings, where bf16 Gram tricks fail most
    (RKD's distance term was 9x off, PKT 2x, before the arithmetic was pinned to float32)."""
    want, want_grad = _feature_terms(name, None)
    got, got_grad = _feature_terms(name, torch.bfloat16)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-9, msg=key)
    if want_grad is not None:
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-9)


def test_rkd_with_a_batch_of_one_is_zero_not_nan() -> None:
    """A single sample has no pair: the distance term is 0 (the official code gives NaN)."""
    from figkd.losses.rkd import rkd_terms

    distance, angle = rkd_terms(torch.randn(1, 8), torch.randn(1, 8))
    assert distance.item() == 0.0 and angle.item() == 0.0
