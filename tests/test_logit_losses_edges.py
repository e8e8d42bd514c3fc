"""Edge cases of the logit baselines (CE, KD, DKD, DIST, MLKD) and their shared checks.

Written to kill the mutants a mutation audit (``tools/mutation.py``) left alive: every
value is checked against NumPy / plain-Python transcriptions of the published formulas,
and every bound against a value just inside and just outside it.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from figkd.losses import LOSSES, CELoss, DISTLoss, DKDLoss, KDLoss, MLKDLoss, build_loss
from figkd.losses.base import DistillationLoss, LossOptionError, _number_type
from figkd.losses.mlkd import confidence_masks
from figkd.losses.validation import NonFiniteLogitsError


def _np_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def _np_log_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = z / t
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-_np_log_softmax(z)[np.arange(len(y)), y].mean())


def _case(batch: int = 6, classes: int = 7, seed: int = 0, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, scale, (batch, classes)), rng.normal(0, scale, (batch, classes)),
            rng.integers(0, classes, batch))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a)


def _nan_logits(batch: int = 3, classes: int = 5) -> torch.Tensor:
    z = torch.zeros(batch, classes, dtype=torch.float64)
    z[1, 2] = float("nan")
    return z


# ----------------------------------------------------------------------------- CE


@pytest.mark.parametrize("smoothing", [0.0, 0.3, 0.999])
def test_ce_label_smoothing_accepted_up_to_one_and_matches_formula(smoothing: float) -> None:
    # CE with label smoothing eps: (1 - eps) * (-log p_y) + eps * mean_c(-log p_c).
    s, _, y = _case(seed=1)
    logp = _np_log_softmax(s)
    rows = np.arange(len(y))
    expected = ((1 - smoothing) * -logp[rows, y] - smoothing * logp.mean(axis=1)).mean()
    terms = CELoss(weight=0.7, label_smoothing=smoothing)(_t(s), None, _t(y))
    assert terms["ce"].item() == pytest.approx(0.7 * expected, rel=1e-12)


@pytest.mark.parametrize("smoothing", [1.0, 1.5, -1e-9])
def test_ce_label_smoothing_outside_zero_one_is_refused(smoothing: float) -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got"):
        CELoss(label_smoothing=smoothing)


@pytest.mark.parametrize(("name", "options"), [
    ("ce", {}), ("dkd", {"warmup_epochs": 0}), ("dist", {}),
])
def test_validation_is_on_by_default_and_can_be_switched_off(name: str, options: dict) -> None:
    bad, y = _nan_logits(), torch.tensor([0, 1, 2])
    with pytest.raises(NonFiniteLogitsError, match="student_logits contains 1 non-finite"):
        build_loss(name, **options)(bad, torch.zeros(3, 5, dtype=torch.float64), y)
    terms = build_loss(name, validate=False, **options)(bad, torch.zeros(3, 5, dtype=torch.float64), y)
    assert torch.isnan(terms["ce"])  # computed, not refused: the hot loop's choice


# ----------------------------------------------------------------------------- DKD


def test_dkd_two_classes_single_sample_is_the_binary_kl() -> None:
    # With two classes the non-target softmax is over one class: NCKD = 0 and TCKD is the full
    # KL of the binary split (Zhao et al., Eq. 1-5).  A single sample is a valid batch.
    s, t, y = np.array([[0.3, -1.2]]), np.array([[2.0, 0.5]]), np.array([1])
    temp = 2.0
    ps, pt = _np_softmax(s, temp)[0], _np_softmax(t, temp)[0]
    kl = float((pt * np.log(pt / ps)).sum())
    terms = DKDLoss(alpha=1.5, beta=8.0, temperature=temp, warmup_epochs=0)(_t(s), _t(t), _t(y))
    assert terms["tckd"].item() == pytest.approx(1.5 * temp**2 * kl, rel=1e-10)
    assert abs(terms["nckd"].item()) < 1e-12


def test_dkd_one_class_is_refused() -> None:
    z = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="DKD needs at least 2 classes"):
        DKDLoss(warmup_epochs=0)(z, z.clone(), torch.zeros(3, dtype=torch.long))


def test_dkd_warmup_of_one_epoch_still_needs_the_epoch() -> None:
    s, t, y = _case(seed=2)
    loss = DKDLoss(warmup_epochs=1)
    with pytest.raises(ValueError, match="ramps its loss over the first 1 epochs and needs epoch="):
        loss(_t(s), _t(t), _t(y))
    # epoch 1 of a 1-epoch warm-up: full weight, NCKD = T^2 * beta * mean KL(q_t || q_s) over
    # the non-target classes (Zhao et al., Eq. 6)
    keep = np.ones_like(s, dtype=bool)
    keep[np.arange(len(y)), y] = False
    qs, qt = (_np_softmax(z[keep].reshape(len(y), -1), 4.0) for z in (s, t))
    nckd = (qt * np.log(qt / qs)).sum(axis=1).mean()
    assert loss(_t(s), _t(t), _t(y), epoch=1)["nckd"].item() == pytest.approx(16.0 * 8.0 * nckd, rel=1e-10)


@pytest.mark.parametrize("warmup", [-1, 2.5, True, "3"])
def test_dkd_warmup_epochs_must_be_a_non_negative_integer(warmup: object) -> None:
    with pytest.raises(ValueError, match="warmup_epochs must be an integer >= 0, got"):
        DKDLoss(warmup_epochs=warmup)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- DIST


def _np_dist(s: np.ndarray, t: np.ndarray, tau: float, eps: float = 1e-8) -> tuple[float, float]:
    """Official DIST: rho = <a - mean a, b - mean b> / (||a - mean a|| ||b - mean b|| + eps)."""
    def rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)

    ys, yt = _np_softmax(s, tau), _np_softmax(t, tau)
    return 1.0 - rho(ys, yt).mean(), 1.0 - rho(ys.T, yt.T).mean()


def test_dist_epsilon_is_the_official_one_on_the_norm_product() -> None:
    # Nearly uniform predictions: the centred norms' product is ~1e-8, so the epsilon moves rho
    # by tens of percent and its value and sign are pinned.
    s, t, y = _case(batch=5, classes=8, seed=3, scale=2e-3)
    tau = 4.0
    inter, intra = _np_dist(s, t, tau)
    assert abs(inter - _np_dist(s, t, tau, eps=0.0)[0]) > 1e-2  # the epsilon matters here
    terms = DISTLoss(temperature=tau, inter_weight=1.5, intra_weight=0.5, ce_weight=0.3)(_t(s), _t(t), _t(y))
    assert terms["inter"].item() == pytest.approx(tau**2 * 1.5 * inter, rel=1e-9)
    assert terms["intra"].item() == pytest.approx(tau**2 * 0.5 * intra, rel=1e-9)
    assert terms["ce"].item() == pytest.approx(0.3 * _np_ce(s, y), rel=1e-12)


# ----------------------------------------------------------------------------- MLKD


def _np_mlkd_paper(sw, tw, ss, ts, temps) -> tuple[float, float, float]:
    """Paper reading of MLKD: per-sample / per-class masks at or below the teacher's median
    weak-view confidence (tau = 1); instance tau^2 KL, batch ||G_t - G_s||^2 / B with
    G = P P^T, class ||M_t - M_s||^2 / C with M = P^T P; both views, every temperature."""
    p = _np_softmax(tw)
    conf, class_conf = p.max(axis=1), p.sum(axis=0)
    m = (conf <= np.median(conf)).astype(float)
    n = (class_conf <= np.median(class_conf)).astype(float)
    instance = batch = klass = 0.0
    for s, t in ((sw, tw), (ss, ts)):
        for tau in temps:
            ps, pt = _np_softmax(s, tau), _np_softmax(t, tau)
            kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1) * tau**2
            instance += (kl * m).mean()
            g = pt @ pt.T - ps @ ps.T
            batch += ((g**2).sum(axis=1) * m).sum() / s.shape[0]
            c = pt.T @ pt - ps.T @ ps
            klass += ((c**2).sum(axis=1) * n).sum() / s.shape[1]
    return instance, batch, klass


def _mlkd_views(batch: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 2, (batch, classes)) for _ in range(4)] + [rng.integers(0, classes, batch)]


def test_mlkd_odd_batch_and_classes_keep_the_median_itself() -> None:
    # With an odd count the median is one of the confidences; "at or below" keeps it:
    # 4 of 7 samples and 5 of 9 classes.
    sw, tw, ss, ts, y = _mlkd_views(batch=7, classes=9, seed=11)
    sample_mask, class_mask = confidence_masks(_t(tw))
    assert sample_mask.sum().item() == 4 and class_mask.sum().item() == 5
    instance, batch, klass = _np_mlkd_paper(sw, tw, ss, ts, (4.0, 3.0, 5.0, 2.0, 6.0))
    out = MLKDLoss()(_t(sw), _t(tw), _t(y), student_logits_strong=_t(ss), teacher_logits_strong=_t(ts))
    assert out["instance"].item() == pytest.approx(0.9 * instance, rel=1e-10)
    assert out["batch"].item() == pytest.approx(0.9 * batch, rel=1e-10)
    assert out["class"].item() == pytest.approx(0.9 * klass, rel=1e-10)
    # the default CE weight, 0.1, on the sum of both views' CE
    assert out["ce"].item() == pytest.approx(0.1 * (_np_ce(sw, y) + _np_ce(ss, y)), rel=1e-12)


@pytest.mark.parametrize("missing", ["student_logits_strong", "teacher_logits_strong"])
def test_mlkd_either_strong_view_missing_is_a_clear_error(missing: str) -> None:
    sw, tw, ss, ts, y = _mlkd_views(batch=4, classes=5, seed=12)
    strong = {"student_logits_strong": _t(ss), "teacher_logits_strong": _t(ts)}
    del strong[missing]
    with pytest.raises(ValueError, match="MLKD needs logits of a strong augmented view"):
        MLKDLoss()(_t(sw), _t(tw), _t(y), **strong)


def test_mlkd_validates_the_strong_view_by_default_and_can_skip_it() -> None:
    sw, tw, _ss, ts, y = _mlkd_views(batch=3, classes=5, seed=13)
    bad = _nan_logits()
    with pytest.raises(NonFiniteLogitsError, match="student_logits contains 1 non-finite"):
        MLKDLoss()(_t(sw), _t(tw), _t(y), student_logits_strong=bad, teacher_logits_strong=_t(ts))
    out = MLKDLoss(validate=False)(_t(sw), _t(tw), _t(y), student_logits_strong=bad,
                                   teacher_logits_strong=_t(ts))
    assert torch.isnan(out["ce"])


# ----------------------------------------------------------------------------- build_loss options


def test_string_options_are_converted_to_the_declared_number_type() -> None:
    # config files and the CLI hand options over as strings
    kd = build_loss("kd", temperature="2.5")
    assert kd.temperature == 2.5
    dkd = build_loss("dkd", warmup_epochs=" 3 ")  # DKD itself refuses anything but an int
    assert dkd.warmup_epochs == 3 and type(dkd.warmup_epochs) is int
    assert build_loss("kd", temperature=None).temperature == 4.0  # None: the default
    assert build_loss("mlkd", variant="official").variant == "official"  # str options untouched
    with pytest.raises(ValueError, match="warmup_epochs must be an integer >= 0, got True"):
        build_loss("dkd", warmup_epochs=True)  # a bool is passed on, not read as 1


@pytest.mark.parametrize(("name", "option", "value", "message"), [
    ("kd", "temperature", "abc", "loss 'kd' option temperature: expected a number, got 'abc'"),
    ("hinton", "kd_weight", "1,5", "loss 'kd' option kd_weight: expected a number, got '1,5'"),
    ("dkd", "warmup_epochs", "2.5", "loss 'dkd' option warmup_epochs: expected an integer, got '2.5'"),
    ("dkd", "warmup_epochs", "two", "loss 'dkd' option warmup_epochs: expected an integer, got 'two'"),
])
def test_unconvertible_string_options_name_the_option(name: str, option: str, value: str, message: str) -> None:
    with pytest.raises(LossOptionError) as info:
        build_loss(name, **{option: value})
    assert str(info.value) == message
    assert info.value.option == option and info.value.problem == message.split(": ", 1)[1]


def test_number_type_of_unannotated_and_union_parameters() -> None:
    def param(default: object = inspect.Parameter.empty, annotation: object = inspect.Parameter.empty):
        return inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                 annotation=annotation)

    # no annotation (or one that did not evaluate): the default's type decides
    assert _number_type(param(1.5)) is float
    assert _number_type(param(2)) is int
    assert _number_type(param(2, annotation="NotAType")) is int
    assert _number_type(param(False)) is None
    assert _number_type(param("paper")) is None
    assert _number_type(param()) is None
    # annotations: numbers only (None allowed) -> the widest of them
    assert _number_type(param(annotation=int | float)) is float
    assert _number_type(param(annotation=float | None)) is float
    assert _number_type(param(annotation=int)) is int
    assert _number_type(param(annotation=str)) is None
    assert _number_type(param(annotation=int | str)) is None


def test_unknown_option_suggests_only_the_closest_option() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) betta \(did you mean 'beta'\?\); its options") as info:
        build_loss("dkd", betta=2.0)  # similarity 0.89 with 'beta'
    assert "alpha, beta, temperature" in str(info.value)
    with pytest.raises(ValueError) as info:
        build_loss("dist", inter_weigh=1.0)  # close to inter_weight, and to intra_weight
    assert "(did you mean 'inter_weight'?)" in str(info.value) and "'intra_weight'?" not in str(info.value)
    with pytest.raises(ValueError) as info:
        build_loss("dist", zzz=1.0)
    assert "unknown option(s) zzz; its options are" in str(info.value)


@pytest.mark.parametrize(("cls", "teacher", "views"), [
    (CELoss, False, 1), (KDLoss, True, 1), (DKDLoss, True, 1), (DISTLoss, True, 1), (MLKDLoss, True, 2),
])
def test_logit_baselines_declare_what_the_distiller_must_supply(cls: type, teacher: bool, views: int) -> None:
    # the distiller skips the teacher, extra views, features, indices and images by these flags
    assert issubclass(cls, DistillationLoss) and LOSSES.get(cls.__name__[:-4].lower()) is cls
    assert (cls.needs_teacher, cls.num_views) == (teacher, views)
    assert not (cls.needs_features or cls.needs_sample_index or cls.needs_images)
