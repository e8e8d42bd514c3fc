"""Losses against hand-worked cases and independent (NumPy / PyWavelets) computations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F

from figkd import wavelets as W
from figkd.losses import CELoss, FiGKDLoss, KDLoss, build_loss, figkd_loss, list_losses
from figkd.losses.validation import check_logits

DETAIL_PATHS = ["matrix", "direct", "band"]


@pytest.fixture(params=DETAIL_PATHS)
def detail_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per way of computing the detail loss (all must agree).

    "matrix": the precomputed band matrix; "direct": the fused Haar node (or
    the band path for non-Haar variants); "band": explicit bands only.
    """
    if request.param == "matrix":
        monkeypatch.setattr(figkd_loss, "BAND_MATRIX_MAX_CLASSES", {"cpu": 10**9})
    else:
        monkeypatch.setattr(figkd_loss, "BAND_MATRIX_MAX_CLASSES", {})
    if request.param == "band":
        monkeypatch.setattr(FiGKDLoss, "_fused_haar", lambda self, s, t, scale: self._band_path(s - t) * scale)
    return request.param


def _logits(batch: int, classes: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(0, 3, (batch, classes)), dtype=dtype)


def _labels(batch: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).integers(0, classes, batch))


def _np_detail_loss(
    student: np.ndarray, teacher: np.ndarray, wavelet: str = "haar", level: int = 1,
    bands: str = "high", transform: str = "2d", reduction: str = "mean",
    detail_levels: str = "all",
) -> float:
    """Independent reference: PyWavelets on each side separately, no difference trick."""
    def decompose(z: np.ndarray) -> list:
        if transform == "1d":
            coeffs = pywt.wavedec(z, wavelet, mode="zero", level=level)
            return [coeffs[0]] + [[d] for d in coeffs[1:]]
        h, w = W.logit_grid_shape(z.shape[1])
        grid = np.zeros((z.shape[0], h * w))
        grid[:, : z.shape[1]] = z
        return pywt.wavedec2(grid.reshape(-1, h, w), wavelet, mode="zero", level=level)

    cs, ct = decompose(student), decompose(teacher)
    pairs = []
    if bands in ("high", "both"):
        last = 2 if detail_levels == "deepest" else None  # wavedec lists level J first
        pairs += [(s, t) for sb, tb in zip(cs[1:last], ct[1:last]) for s, t in zip(sb, tb)]
    if bands in ("low", "both"):
        pairs.append((cs[0], ct[0]))
    total = 0.0
    for s, t in pairs:
        sq = ((s - t) ** 2).reshape(s.shape[0], -1)
        total += sq.mean() if reduction == "mean" else sq.sum(axis=1).mean()
    return float(total)


# ----------------------------------------------------------------------------- KD


def _hand_kd(student: list[list[float]], teacher: list[list[float]], labels: list[int], t: float) -> tuple[float, float]:
    """CE and T^2 * batch-mean KL(p_t || p_s), written out with math only."""
    def softmax(row: list[float], temp: float) -> list[float]:
        exps = [math.exp(v / temp) for v in row]
        return [e / sum(exps) for e in exps]

    ce = sum(-math.log(softmax(s, 1.0)[y]) for s, y in zip(student, labels)) / len(student)
    kl = 0.0
    for s, te in zip(student, teacher):
        ps, pt = softmax(s, t), softmax(te, t)
        kl += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return ce, t * t * kl / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_hand_computation_on_2x3(temperature: float) -> None:
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [1.0, 0.5, 4.0]]
    labels = [1, 2]
    ce, kd = _hand_kd(student, teacher, labels, temperature)
    loss = KDLoss(temperature=temperature, ce_weight=0.3, kd_weight=0.7)
    terms = loss(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
                 torch.tensor(labels))
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(0.3 * ce, rel=1e-12)
    assert terms["kd"].item() == pytest.approx(0.7 * kd, rel=1e-12)


def test_kd_first_row_worked_by_hand() -> None:
    # Student uniform over 2 classes, teacher (ln 3, 0) -> p_t = (3/4, 1/4), T = 1:
    # KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 3/4 ln 1.5 - 1/4 ln 2.
    terms = KDLoss(temperature=1.0, ce_weight=0.0, kd_weight=1.0)(
        torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0]))
    assert terms["kd"].item() == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2.0), rel=1e-6)


def test_kd_defaults_and_zero_when_student_equals_teacher() -> None:
    loss = KDLoss()
    assert (loss.temperature, loss.ce_weight, loss.kd_weight) == (4.0, 0.1, 0.9)
    z = _logits(8, 10, 1)
    assert loss(z, z.clone(), _labels(8, 10))["kd"].abs().item() < 1e-12


# ----------------------------------------------------------------------------- CE


def test_ce_loss_matches_hand_computation() -> None:
    student = [[1.0, 2.0, 3.0, 4.0]]
    expected = math.log(sum(math.exp(v) for v in student[0])) - 4.0  # label 3
    loss = CELoss()
    assert not loss.needs_teacher
    terms = loss(torch.tensor(student), None, torch.tensor([3]))
    assert terms["ce"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.4401896985, rel=1e-9)


# ----------------------------------------------------------------------------- FiGKD


def test_figkd_hand_worked_single_block() -> None:
    # C = 4 -> 2x2 map [[1, 2], [3, 4]] against a zero teacher:
    # LH = (1+2-3-4)/2 = -2, HL = (1-2+3-4)/2 = -1, HH = (1-2-3+4)/2 = 0, LL = 5.
    # detail = 4 + 1 + 0 = 5; CE with label 3 = log(e + e^2 + e^3 + e^4) - 4 = 0.44019.
    loss = FiGKDLoss(alpha=1.0, beta=2.0)
    terms = loss(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(1, 4), torch.tensor([3]))
    assert terms["detail"].item() == pytest.approx(2.0 * 5.0, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(0.4401896985, rel=1e-6)
    assert FiGKDLoss(bands="low").detail_loss(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(1, 4)).item() == \
        pytest.approx(25.0)


def test_figkd_hand_worked_two_blocks_mean_and_sum() -> None:
    # 2x4 map [[1, 3, 0, 2], [5, 1, 2, 2]]: blocks [[1,3],[5,1]] and [[0,2],[2,2]].
    # LH = (-1, -1), HL = (1, -1), HH = (-3, -1).
    # mean: 1 + 1 + 5 = 7; sum (per-sample squared norm over bands): 2 + 2 + 10 = 14.
    student = torch.tensor([[1.0, 3.0, 0.0, 2.0, 5.0, 1.0, 2.0, 2.0]])
    teacher = torch.zeros(1, 8)
    assert FiGKDLoss(grid=(2, 4)).detail_loss(student, teacher).item() == pytest.approx(7.0)
    assert FiGKDLoss(grid=(2, 4), reduction="sum").detail_loss(student, teacher).item() == pytest.approx(14.0)


def test_figkd_defaults_are_the_documented_ones() -> None:
    loss = build_loss("figkd")
    assert isinstance(loss, FiGKDLoss)
    assert (loss.alpha, loss.beta, loss.wavelet, loss.level, loss.bands, loss.transform,
            loss.noise_std, loss.reduction, loss.mode) == (1.0, 2.0, "haar", 1, "high", "2d", 0.0, "mean", "zero")


@pytest.mark.parametrize("num_classes", [10, 40, 67, 100, 120, 200, 1000])
def test_figkd_default_equals_pywavelets_reference(num_classes: int, detail_path: str) -> None:
    s, t = _logits(6, num_classes, 1), _logits(6, num_classes, 2)
    ours = FiGKDLoss().detail_loss(s, t).item()
    assert ours == pytest.approx(_np_detail_loss(s.numpy(), t.numpy()), rel=1e-10)


@pytest.mark.parametrize(
    "options",
    [dict(level=2), dict(level=3), dict(bands="low"), dict(bands="both"), dict(transform="1d"),
     dict(transform="1d", level=3), dict(wavelet="db2"), dict(wavelet="bior1.3"),
     dict(reduction="sum"), dict(level=2, bands="both", reduction="sum"),
     dict(level=2, detail_levels="deepest"), dict(level=3, detail_levels="deepest", bands="both"),
     dict(transform="1d", level=3, detail_levels="deepest")],
)
@pytest.mark.parametrize("num_classes", [67, 100, 200])
@pytest.mark.filterwarnings("ignore:level")
def test_figkd_variants_equal_pywavelets_reference(options: dict, num_classes: int, detail_path: str) -> None:
    s, t = _logits(5, num_classes, 3), _logits(5, num_classes, 4)
    ours = FiGKDLoss(**options).detail_loss(s, t).item()
    assert ours == pytest.approx(_np_detail_loss(s.numpy(), t.numpy(), **options), rel=1e-10)


def test_figkd_is_zero_for_identical_logits(detail_path: str) -> None:
    z = _logits(8, 100, 5)
    variants: list[dict[str, Any]] = [
        {}, dict(level=3), dict(bands="both"), dict(transform="1d"), dict(wavelet="db2")
    ]
    for options in variants:
        assert FiGKDLoss(**options).detail_loss(z, z.clone()).item() == 0.0


# Sizes whose level-J decomposition needs no boundary padding, so that a map
# rebuilt from an LL band alone has exactly zero detail bands.
@pytest.mark.parametrize(
    "num_classes, grid, level",
    [(100, None, 1), (24, (4, 6), 1), (64, None, 1), (64, None, 2), (64, None, 3), (32, (4, 8), 2)],
)
def test_figkd_ignores_differences_confined_to_the_low_band(
    num_classes: int, grid, level: int, detail_path: str
) -> None:
    teacher = _logits(4, num_classes, 6)
    h, w = grid or W.logit_grid_shape(num_classes)
    # A perturbation built from an LL band with all detail bands zero.
    template = W.wavedec2(torch.zeros(4, h, w, dtype=torch.float64), "haar", "zero", level)
    low_only = [torch.randn_like(template[0])] + [tuple(torch.zeros_like(b) for b in bands) for bands in template[1:]]
    perturbation = W.waverec2(low_only, "haar", "zero")[..., :h, :w].reshape(4, -1)[:, :num_classes]
    student = teacher + 5.0 * perturbation
    loss = FiGKDLoss(level=level, grid=grid)
    assert abs(loss.detail_loss(student, teacher).item()) < 1e-20
    assert FiGKDLoss(level=level, grid=grid, bands="low").detail_loss(student, teacher).item() > 1.0
    # A change in one single logit has detail energy, so the loss is positive.
    bumped = teacher.clone()
    bumped[:, 3] += 1.0
    assert loss.detail_loss(bumped, teacher).item() > 0.0


def test_figkd_switches_change_only_what_they_should() -> None:
    s, t, y = _logits(16, 100, 7), _logits(16, 100, 8), _labels(16, 100)
    base = FiGKDLoss()(s, t, y)
    ce_reference = F.cross_entropy(s, y)
    variants: list[dict[str, Any]] = [
        dict(level=2), dict(bands="both"), dict(transform="1d"), dict(wavelet="db2"),
        dict(reduction="sum"), dict(noise_std=0.3), dict(mode="symmetric"),
    ]
    for options in variants:
        terms = FiGKDLoss(**options).train()(s, t, y)
        torch.testing.assert_close(terms["ce"], ce_reference)  # CE never moves
        if options == dict(mode="symmetric"):  # 10x10 has even sides: the mode is irrelevant
            torch.testing.assert_close(terms["detail"], base["detail"])
        else:
            assert not torch.allclose(terms["detail"], base["detail"]), options
    # 'sum' with equal-size bands is the per-band coefficient count (25 for 5x5 bands) times 'mean'.
    summed = FiGKDLoss(reduction="sum").detail_loss(s, t)
    torch.testing.assert_close(summed, 25.0 * FiGKDLoss().detail_loss(s, t))
    # alpha and beta scale their own term only.
    scaled = FiGKDLoss(alpha=0.5, beta=3.0)(s, t, y)
    torch.testing.assert_close(scaled["ce"], 0.5 * base["ce"])
    torch.testing.assert_close(scaled["detail"], 1.5 * base["detail"])
    # Odd map sides: the boundary mode matters.
    s67, t67 = _logits(4, 67, 1), _logits(4, 67, 2)
    assert FiGKDLoss(mode="symmetric").detail_loss(s67, t67) != FiGKDLoss().detail_loss(s67, t67)


def test_figkd_noise_only_in_training_and_with_the_expected_size() -> None:
    torch.manual_seed(0)
    s, t = _logits(4096, 100, 9), _logits(4096, 100, 10)
    clean = FiGKDLoss().detail_loss(s, t)
    noisy_loss = FiGKDLoss(noise_std=0.5)
    torch.testing.assert_close(noisy_loss.eval().detail_loss(s, t), clean)
    # E[(d - n)^2] = d^2 + sigma^2 per coefficient -> +sigma^2 per band, three bands.
    noisy = noisy_loss.train().detail_loss(s, t)
    assert (noisy - clean).item() == pytest.approx(3 * 0.25, abs=0.08)
    with pytest.raises(ValueError, match="bands='low' matches none"):
        FiGKDLoss(noise_std=0.1, bands="low")


def test_figkd_gradients_reach_student_never_teacher(detail_path: str) -> None:
    s = _logits(3, 67, 11).requires_grad_(True)
    t = _logits(3, 67, 12).requires_grad_(True)
    y = _labels(3, 67)
    variants: list[dict[str, Any]] = [
        {}, dict(level=2), dict(transform="1d"), dict(wavelet="db2"), dict(bands="both")
    ]
    for options in variants:
        loss = FiGKDLoss(**options)
        assert torch.autograd.gradcheck(lambda z: loss.detail_loss(z, t), (s,))
        sum(loss(s, t, y).values()).backward()
        assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()
        s.grad = None


@pytest.mark.parametrize("options", [{}, dict(level=3, bands="both"), dict(bands="low", level=2),
                                     dict(reduction="sum", level=2), dict(wavelet="db2", transform="1d"),
                                     dict(level=3, detail_levels="deepest")])
@pytest.mark.parametrize("num_classes", [67, 200, 1000])
@pytest.mark.filterwarnings("ignore:level")
def test_figkd_fast_path_gradients_equal_band_path_gradients(options: dict, num_classes: int) -> None:
    s = _logits(4, num_classes, 13).requires_grad_(True)
    t = _logits(4, num_classes, 14)
    loss = FiGKDLoss(**options)
    reference = torch.autograd.grad(loss._band_path(s - t), s)[0]
    matrix = torch.autograd.grad(figkd_loss.linear_band_loss(s, t, loss.band_matrix(num_classes), 1 / 4), s)[0]
    torch.testing.assert_close(matrix, reference, atol=1e-12, rtol=1e-10)
    if not options.get("wavelet"):
        fused = torch.autograd.grad(loss._fused_haar(s, t, 1.0), s)[0]
        torch.testing.assert_close(fused, reference, atol=1e-12, rtol=1e-10)


def test_losses_run_under_bf16_autocast() -> None:
    s = torch.randn(8, 100, requires_grad=True)
    t, y = torch.randn(8, 100), _labels(8, 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = s @ torch.eye(100)  # a bf16 matmul output, as a student head would give
        for loss in (FiGKDLoss(), KDLoss(), FiGKDLoss(wavelet="db2", level=2)):
            terms = loss(z, t.bfloat16(), y)
            total = sum(terms.values())
            assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors() -> None:
    s, t, y = torch.randn(4, 100), torch.randn(4, 100), torch.randint(0, 100, (4,))
    loss = FiGKDLoss()
    with pytest.raises(ValueError, match=r"student_logits must be shaped \(batch, num_classes\)"):
        loss(s[0], t, y)
    with pytest.raises(ValueError, match="student_logits has 100 classes but teacher_logits has 200"):
        loss(s, torch.randn(4, 200), y)
    with pytest.raises(ValueError, match="batch size 4 but teacher_logits has 3"):
        loss(s, t[:3], y)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 99\]"):
        loss(s, t, torch.tensor([0, 1, 2, 100]))
    with pytest.raises(ValueError, match="targets must be class indices shaped"):
        loss(s, t, y[:2])
    bad = t.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="teacher_logits contains 1 non-finite"):
        loss(s, bad, y)
    with pytest.raises(ValueError, match="student_logits contains 1 non-finite"):
        KDLoss()(bad, t, y)
    cases: list[tuple[dict[str, Any], str | None]] = [
        (dict(bands="mid"), "bands must be one of 'high', 'low', 'both'"),
        (dict(transform="3d"), "transform must be one of '2d', '1d'"),
        (dict(reduction="none"), "reduction must be one of 'mean', 'sum'"),
        (dict(wavelet="daubechies"), "wavelet must be a discrete wavelet"),
        (dict(mode="wrap"), "mode must be one of"),
        (dict(level=0), "level must be a positive integer"),
        (dict(beta=-1.0), "beta must be a finite number >= 0"),
        (dict(grid=(3, 3)), None),
    ]
    for options, message in cases:
        if message is None:
            with pytest.raises(ValueError, match="holds 9 cells but there are 100 classes"):
                FiGKDLoss(**options)(s, t, y)
        else:
            with pytest.raises(ValueError, match=message):
                FiGKDLoss(**options)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KDLoss(temperature=0.0)


def test_registry_builds_and_suggests() -> None:
    assert {"ce", "kd", "figkd"} <= set(list_losses())
    assert isinstance(build_loss("FiGKD"), FiGKDLoss)
    assert build_loss("kd", temperature=2.0).temperature == 2.0
    with pytest.raises(ValueError, match="unknown loss 'figdk'.*Did you mean 'figkd'"):
        build_loss("figdk")
    with pytest.raises(ValueError, match="unknown option.*betta.*its options are: alpha, beta"):
        build_loss("figkd", betta=2.0)


def test_validation_can_be_switched_off_for_hot_loops() -> None:
    s = torch.randn(2, 10)
    s[0, 0] = float("inf")
    check_logits(s, None, None, check_finite=False)  # no error: the trainer checks the loss
    loss = FiGKDLoss(validate=False)
    assert not torch.isfinite(loss.detail_loss(s, torch.zeros(2, 10)))
