"""Edge cases of the baseline losses that the mutation runs showed untested.

Each test closes a gap `tools/mutation.py` found (see docs/testing.md): argument checks at
their boundaries, the documented defaults, and terms the value tests did not look at. Expected
values are worked here in NumPy or by hand from the module docstrings' formulas (the official
code's settings they cite), never read back from the loss under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from figkd.losses import build_loss
from figkd.losses.dml import DMLLoss
from figkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def _np_log_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = z / t
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_ce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(-_np_log_softmax(logits)[np.arange(len(y)), y].mean())


def _np_kl(p_logits: np.ndarray, q_logits: np.ndarray, t: float = 1.0) -> float:
    """Batch mean of KL(softmax(p / t) || softmax(q / t))."""
    lp, lq = _np_log_softmax(p_logits, t), _np_log_softmax(q_logits, t)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def _logits(batch: int = 5, classes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(0, 2, (batch, classes)), rng.normal(0, 2, (batch, classes))
    return s, t, rng.integers(0, classes, batch)


def _tiny_pair(seed: int = 0, classes: int = 5):
    torch.manual_seed(seed)
    student = create_model("tiny_cnn", num_classes=classes, width=2)
    teacher = create_model("tiny_cnn", num_classes=classes, width=4).eval().requires_grad_(False)
    return student, teacher


# -------------------------------------------------------------------------------- CAT-KD


def test_catkd_defaults_are_the_official_resnet32x4_config() -> None:
    # module docstring: r = 2, normalize off, cat_weight 15, CE 1
    loss = build_loss("catkd")
    assert (loss.ce_weight, loss.cat_weight, loss.resolution, loss.normalize) == (
        1.0,
        15.0,
        2,
        False,
    )


@pytest.mark.parametrize("resolution", [0, -1, 1.5, True])
def test_catkd_refuses_a_resolution_that_is_not_a_positive_integer(resolution: object) -> None:
    with pytest.raises(ValueError, match="resolution"):
        build_loss("catkd", resolution=resolution)


def test_catkd_ce_term_is_weighted_cross_entropy_and_needs_both_features() -> None:
    student, teacher = _tiny_pair(3)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 4, 2])
    loss = build_loss("catkd", ce_weight=0.5)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    with torch.no_grad():
        tf = teacher.forward_features(x)
    sf = student.forward_features(x)
    terms = loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf)
    assert terms["ce"].item() == pytest.approx(0.5 * _np_ce(_np(sf["logits"]), y.numpy()), rel=1e-6)
    for one_side in ({"student_features": sf}, {"teacher_features": tf}):
        with pytest.raises(ValueError, match="needs student_features"):
            loss(sf["logits"], tf["logits"], y, **one_side)


# -------------------------------------------------------------------------------- LDRLD


def test_ldrld_with_k_2_is_one_weighted_pair_plus_the_same_pair_unweighted() -> None:
    # k = 2 is the smallest legal k: one pair (ranks 1, 2) with ADW weight 2 e^{-0.15} / 2.5, the
    # top-k KL over the same two classes, divided by P + 1 = 2; the rest KL over the other C - 2
    s, t, y = _logits(batch=4, classes=5, seed=21)
    temp = 4.0
    local, rest = [], []
    for si, ti in zip(s, t):
        top = np.argsort(-si, kind="stable")[:2]
        others = np.setdiff1d(np.arange(5), top)
        pair = _np_kl(ti[None, top], si[None, top], temp)
        w = 2.0 * math.exp(-0.05 * (1 + 2)) / (1.5 + 1)
        local.append((w * pair + pair) / 2)
        rest.append(_np_kl(ti[None, others], si[None, others], temp))
    terms = build_loss("ldrld", alpha=1.0, beta=1.0, k=2)(
        torch.tensor(s), torch.tensor(t), torch.tensor(y)
    )
    assert terms["local"].item() == pytest.approx(16 * np.mean(local), rel=1e-10)
    assert terms["rest"].item() == pytest.approx(16 * np.mean(rest), rel=1e-10)


@pytest.mark.parametrize("k", [1, 0, True, 2.0])
def test_ldrld_refuses_a_k_that_is_not_an_integer_of_at_least_2(k: object) -> None:
    with pytest.raises(ValueError, match="k must be an integer"):
        build_loss("ldrld", k=k)


@pytest.mark.parametrize("name", ["ldrld", "rld", "tekap", "ekd"])
def test_logit_baselines_validate_by_default_and_not_when_told(name: str) -> None:
    s, t, y = (torch.tensor(a) for a in _logits(classes=8, seed=22))  # LDRLD: k = 7 < 8
    s[0, 1] = float("nan")
    opts = {"warmup_epochs": 0} if name in ("rld", "ekd") else {}
    with pytest.raises(ValueError, match="non-finite"):
        build_loss(name, **opts)(s, t, y)
    # validate=False skips the check (the trainer checks the loss itself): NaN flows through
    terms = build_loss(name, validate=False, **opts)(s, t, y)
    assert math.isnan(float(sum(terms.values())))


def test_ldrld_refuses_a_zero_adw_offset_and_weights_ce() -> None:
    with pytest.raises(ValueError, match="adw_offset must be > 0"):
        build_loss("ldrld", adw_offset=0.0)
    s, t, y = _logits(batch=4, classes=8, seed=23)
    terms = build_loss("ldrld", ce_weight=0.3)(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    assert terms["ce"].item() == pytest.approx(0.3 * _np_ce(s, y), rel=1e-10)


# ------------------------------------------------------------------ flags, all baselines
# (teacher, features, sample index, images): what each method reads, per its module docstring
FLAGS = {
    "ldrld": (True, False, False, False),
    "rld": (True, False, False, False),
    "tekap": (True, False, False, False),
    "ekd": (True, False, False, False),
    "dml": (False, False, False, True),  # a peer network on the same images, no teacher
    "catkd": (True, True, False, False),
    "at": (True, True, False, False),
    "sp": (True, True, False, False),
    "rkd": (True, True, False, False),
    "pkt": (True, True, False, False),
    "fitnet": (True, True, False, False),
    "vid": (True, True, False, False),
    "ofd": (True, True, False, False),
    "crd": (True, True, True, False),  # memory-bank rows are indexed by sample
    "reviewkd": (True, True, False, False),
    "diffkd": (True, True, False, False),
}


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_baselines_declare_what_the_distiller_must_supply(name: str) -> None:
    from figkd.losses import LOSSES

    cls = LOSSES.get(name)
    got = (cls.needs_teacher, cls.needs_features, cls.needs_sample_index, cls.needs_images)
    assert got == FLAGS[name] and cls.num_views == 1


# -------------------------------------------------------------------------------- DML


def test_dml_student_ce_term_and_defaults() -> None:
    # module docstring: T = 1 and both weights 1 by default (the paper)
    default = build_loss("dml")
    assert (default.ce_weight, default.kl_weight, default.temperature) == (1.0, 1.0, 1.0)
    torch.manual_seed(4)
    student = create_model("tiny_cnn", num_classes=5, in_channels=1, width=2)
    loss = build_loss("dml", ce_weight=0.4, kl_weight=2.0, temperature=3.0)
    assert isinstance(loss, DMLLoss)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    loss.setup(student, None, example_input=x, num_train_samples=6)
    assert loss.peer is not None
    zs = student(x)
    terms = loss(zs, None, y, images=x)
    zp = _np(loss.peer(x))
    a = _np(zs)
    assert terms["ce"].item() == pytest.approx(0.4 * _np_ce(a, y.numpy()), rel=1e-5)
    assert terms["peer_ce"].item() == pytest.approx(0.4 * _np_ce(zp, y.numpy()), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(2.0 * 9.0 * _np_kl(zp, a, 3.0), rel=1e-5)
    assert terms["peer_kl"].item() == pytest.approx(2.0 * 9.0 * _np_kl(a, zp, 3.0), rel=1e-5)


def test_dml_builds_the_peer_on_the_students_device() -> None:
    # the student's device wins over the example input's: a meta-device student gets a meta peer
    student = create_model("tiny_cnn", num_classes=5, in_channels=1, width=2).to("meta")
    loss = build_loss("dml")
    assert isinstance(loss, DMLLoss)
    loss.setup(student, None, example_input=torch.randn(2, 1, 8, 8), num_train_samples=2)
    assert loss.peer is not None
    assert {p.device.type for p in loss.peer.parameters()} == {"meta"}


# -------------------------------------------------------------------------------- RLD


def test_rld_with_two_classes_matches_the_definitions_and_one_class_is_refused() -> None:
    # 2 classes, the smallest legal case. SCD: binary KL between the teacher's split around its
    # top class and the student's around the label. MCD keeps the classes the teacher ranks
    # strictly below the label: with 2 classes that is the other class alone (KL 0) or nothing.
    s = np.array([[0.3, -1.2], [2.0, 0.5], [-0.4, 0.9]])
    t = np.array([[1.5, -0.5], [-1.0, 0.7], [0.2, 1.1]])
    y = np.array([1, 0, 1])
    scd = []
    for si, ti, yi in zip(s, t, y):
        ps, pt = np.exp(_np_log_softmax(si)), np.exp(_np_log_softmax(ti))
        b_t = np.array([pt.max(), 1 - pt.max()])
        b_s = np.array([ps[yi], 1 - ps[yi]])
        scd.append(float((b_t * np.log(b_t / b_s)).sum()))
    terms = build_loss("rld", warmup_epochs=0)(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    assert terms["scd"].item() == pytest.approx(np.mean(scd), rel=1e-10)  # alpha 1, T_c 1
    assert terms["mcd"].item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_loss("rld", warmup_epochs=0)(
            torch.zeros(2, 1, dtype=torch.float64),
            torch.zeros(2, 1, dtype=torch.float64),
            torch.zeros(2, dtype=torch.long),
        )


@pytest.mark.parametrize("name", ["rld", "ekd"])
@pytest.mark.parametrize("warmup", [-1, 2.5, True])
def test_warmup_epochs_must_be_a_non_negative_integer(name: str, warmup: object) -> None:
    with pytest.raises(ValueError, match="warmup_epochs must be an integer"):
        build_loss(name, warmup_epochs=warmup)


# -------------------------------------------------------------------------------- TeKAP


def test_tekap_noise_mix_1_is_allowed_and_gives_pure_noise_teachers() -> None:
    # lam = 1 is the edge of [0, 1]: each synthetic teacher is its noise draw alone
    s, t, y = _logits(batch=3, classes=4, seed=24)
    loss = build_loss("tekap", num_augmented=2, noise_mix=1.0, noise_std=2.0, temperature=2.0)
    torch.manual_seed(3)
    terms = loss(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    torch.manual_seed(3)  # the docstring's draw: one (M, B, C) tensor from the global generator
    noise = (torch.randn((2, 3, 4), dtype=torch.float64) * 2.0).numpy()
    aug = sum(_np_kl(n, s, 2.0) for n in noise) * 4.0
    assert terms["aug"].item() == pytest.approx(0.9 * 0.8 * aug, rel=1e-10)
    with pytest.raises(ValueError, match="noise_mix"):
        build_loss("tekap", noise_mix=1.0 + 1e-9)


@pytest.mark.parametrize("m", [-1, 1.5, True])
def test_tekap_num_augmented_must_be_a_non_negative_integer(m: object) -> None:
    with pytest.raises(ValueError, match="num_augmented must be an integer"):
        build_loss("tekap", num_augmented=m)


# -------------------------------------------------------------------------------- EKD


def test_ekd_teacher_lamb_sets_the_teacher_concentration_only() -> None:
    from scipy import special

    s, t, y = _logits(batch=4, classes=5, seed=25)
    c_s, c_t = math.exp(-0.5), math.exp(0.7)
    a_s, a_t = np.exp(s) + c_s, np.exp(t) + c_t
    ce = special.digamma(a_s.sum(1)) - special.digamma(a_s[np.arange(4), y])
    m_s, m_t = a_s / a_s.sum(1, keepdims=True), a_t / a_t.sum(1, keepdims=True)
    first = (m_t * np.log(m_t / m_s)).sum(1)
    b_s, b_t = np.log1p(np.exp(s)) + c_s, np.log1p(np.exp(t)) + c_t
    second = (
        special.gammaln(b_t.sum(1))
        - special.gammaln(b_s.sum(1))
        - (special.gammaln(b_t) - special.gammaln(b_s)).sum(1)
        + ((b_t - b_s) * (special.digamma(b_t) - special.digamma(b_t.sum(1))[:, None])).sum(1)
    )
    loss = build_loss(
        "ekd", lamb=-0.5, teacher_lamb=0.7, first_weight=1.0, second_weight=1.0, warmup_epochs=0
    )
    assert (loss.lamb, loss.teacher_lamb) == (-0.5, 0.7)
    terms = loss(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    assert terms["ce"].item() == pytest.approx(ce.mean(), rel=1e-10)
    assert terms["first"].item() == pytest.approx(first.mean(), rel=1e-10)
    assert terms["second"].item() == pytest.approx(second.mean(), rel=1e-9)
    assert build_loss("ekd", lamb=0.3).teacher_lamb == 0.3  # None: the student's lamb


def test_ekd_digamma_of_exp_just_above_the_series_switch() -> None:
    # psi(e^u) = u - e^{-u} / 2 - e^{-2u} / 12 + ...; at u ~ 30 the e^{-u}/2 term is ~13 ulps of u,
    # so a wrong coefficient shows, while the next term (1e-28) does not
    from scipy import special

    from figkd.losses.ekd import digamma_of_exp

    u = np.array([30.0001, 30.5, 31.0])
    want = special.digamma(np.exp(u))
    got = digamma_of_exp(torch.tensor(u)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=8e-15)  # ~2 ulps of u


# ----------------------------------------------------------------- feature baselines: CE


@pytest.mark.parametrize("name", ["at", "sp", "rkd", "pkt", "fitnet", "vid", "ofd"])
def test_feature_baselines_weight_the_students_cross_entropy(name: str) -> None:
    student, teacher = _tiny_pair(5)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 0, 4, 2])
    loss = build_loss(name, ce_weight=0.7)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    with torch.no_grad():
        tf = teacher.forward_features(x)
    sf = student.forward_features(x)
    terms = loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf)
    assert terms["ce"].item() == pytest.approx(0.7 * _np_ce(_np(sf["logits"]), y.numpy()), rel=1e-6)


def test_at_refuses_p_0() -> None:
    # |F|^0 == 1 everywhere: every attention map would be the same constant
    with pytest.raises(ValueError, match="p must be > 0"):
        build_loss("at", p=0.0)


def test_sp_defaults_are_the_papers_cifar_setting() -> None:
    # module docstring: the last stage, CE 1, feature weight 3000
    loss = build_loss("sp")
    assert (loss.stage, loss.ce_weight, loss.feat_weight) == (-1, 1.0, 3000.0)
