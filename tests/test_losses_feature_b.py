"""OFD, CRD, ReviewKD and CAT-KD: values against independent NumPy computations, gradient
flow (student and the loss's own modules, never the teacher), bf16 autocast, CRD's memory bank.

Every reference value here is written out from the papers' formulas with NumPy/SciPy and
reads only the networks' and loss modules' parameters, never the loss modules' helpers.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pytest
import torch
from functional_weights import submodule as _part
from numpy_reference import as_numpy, np_bn_train, np_ce, np_conv1x1
from scipy.stats import norm

from figkd.losses import build_loss
from figkd.losses.crd import CRDLoss, crd_memory_bytes
from figkd.losses.ofd import OFDLoss
from figkd.losses.reviewkd import ABF, ReviewKDLoss
from figkd.models import create_model

METHODS = ("ofd", "crd", "reviewkd", "catkd")


pytestmark = pytest.mark.usefixtures("one_thread")


def _abfs(loss: torch.nn.Module) -> list[ABF]:
    """ReviewKD's fusion modules (built by setup), deepest level first."""
    assert isinstance(loss, ReviewKDLoss) and loss.abfs is not None
    abfs = list(loss.abfs)
    assert all(isinstance(abf, ABF) for abf in abfs)
    return cast("list[ABF]", abfs)


def _pair(seed: int = 0, s_width: int = 2, t_width: int = 4, classes: int = 5):
    torch.manual_seed(seed)
    student = create_model("tiny_cnn", num_classes=classes, width=s_width)
    teacher = create_model("tiny_cnn", num_classes=classes, width=t_width)
    # non-trivial BN parameters so margins and BN paths are exercised
    for net in (student, teacher):
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    teacher.eval().requires_grad_(False)
    return student, teacher


def _features(student, teacher, x):
    with torch.no_grad():
        tf = teacher.forward_features(x)
    sf = student.forward_features(x)
    return sf, tf


def _np_conv3x3(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    w = as_numpy(conv.weight)  # (O, C, 3, 3)
    b, c, h, wd = x.shape
    pad = np.zeros((b, c, h + 2, wd + 2))
    pad[:, :, 1:-1, 1:-1] = x
    out = np.zeros((b, w.shape[0], h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, :, i, j] = np.einsum("bcuv,ocuv->bo", pad[:, :, i:i + 3, j:j + 3], w)
    return out


def _np_block_mean(x: np.ndarray, size: int) -> np.ndarray:
    b, c, h, w = x.shape
    assert h % size == 0 and w % size == 0
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _np_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    rows = (np.arange(size[0]) * h // size[0]).astype(int)
    cols = (np.arange(size[1]) * w // size[1]).astype(int)
    return x[:, :, rows][:, :, :, cols]


# ------------------------------------------------------------------------------------ OFD
def _np_margin(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E[x | x < 0], x ~ N(mean, std^2); -3 std when P(x < 0) <= 1e-3 (official fallback)."""
    std = np.abs(std)
    p = norm.cdf(-mean / std)
    cond = mean - std * norm.pdf(mean / std) / np.maximum(p, 1e-300)
    return np.where(p > 1e-3, cond, -3 * std)


def test_ofd_margin_is_the_mean_of_the_negative_part() -> None:
    from figkd.losses.ofd import gaussian_negative_mean

    mean = np.array([-1.0, 0.0, 0.7, 2.0, 4.0])
    std = np.array([1.0, 0.5, 1.3, 1.0, 1.0])
    # numerical integration of E[x | x < 0]
    got_all = gaussian_negative_mean(torch.tensor(mean), torch.tensor(std))
    for mu, sd, got in zip(mean, std, got_all):
        grid = np.linspace(mu - 12 * sd, 0.0, 400001)
        dens = norm.pdf(grid, mu, sd)
        if norm.cdf(-mu / sd) > 1e-3:
            want = np.trapezoid(grid * dens, grid) / np.trapezoid(dens, grid)
        else:
            want = -3 * sd
        assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_ofd_value_matches_numpy_with_bn_margins() -> None:
    student, teacher = _pair(1)
    x = torch.randn(6, 3, 8, 8)
    y = torch.randint(0, 5, (6,))
    loss = build_loss("ofd")
    loss.setup(student, teacher, example_input=x, num_train_samples=6)
    assert loss.margin_sources == ["bn", "bn"]  # tiny_cnn's pre-activation is a BN output
    for m in loss.modules():  # random connector BN affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    sf, tf = _features(student, teacher, x)
    terms = loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf)

    total = 0.0
    n = len(sf["preact_stages"])
    for i in range(n):
        conv = _part(loss, f"connectors.{i}.0", torch.nn.Conv2d)
        bn = _part(loss, f"connectors.{i}.1", torch.nn.BatchNorm2d)
        s = np_bn_train(np_conv1x1(as_numpy(sf["preact_stages"][i]), conv), bn)
        t_bn = _part(teacher, f"stages.{i}.0.bn", torch.nn.BatchNorm2d)
        margin = _np_margin(as_numpy(t_bn.bias), as_numpy(t_bn.weight)).reshape(1, -1, 1, 1)
        t = np.maximum(as_numpy(tf["preact_stages"][i]), margin)
        d = 0.0
        for sv, tv in zip(s.ravel(), np.broadcast_to(t, s.shape).ravel()):
            d += 0.0 if (sv <= tv <= 0) else (tv - sv) ** 2
        total += d / x.shape[0] * 0.5 ** (n - 1 - i)
    assert terms["ofd"].item() == pytest.approx(1e-3 * total, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(np_ce(as_numpy(sf["logits"]), y.numpy()), rel=1e-5)


def test_ofd_batch_margin_when_preact_is_not_a_bn_output() -> None:
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=5)
    teacher = create_model("resnet8", num_classes=5).eval().requires_grad_(False)
    x = torch.randn(4, 3, 16, 16)
    loss = build_loss("ofd")
    assert isinstance(loss, OFDLoss)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    assert loss.margin_sources == ["batch"] * 3  # BN + shortcut sums
    sf, tf = _features(student, teacher, x)
    loss(sf["logits"], tf["logits"], torch.zeros(4, dtype=torch.long),
         student_features=sf, teacher_features=tf)
    for i, t in enumerate(tf["preact_stages"]):
        a = as_numpy(t).transpose(1, 0, 2, 3).reshape(t.shape[1], -1)
        want = _np_margin(a.mean(1), a.std(1))
        np.testing.assert_allclose(as_numpy(loss.margins()[i]), want, rtol=1e-4, atol=1e-5)
    # fixed after the first batch, and carried by the state dict
    before = [m.clone() for m in loss.margins()]
    sf2, tf2 = _features(student, teacher, 3 * torch.randn(4, 3, 16, 16))
    loss(sf2["logits"], tf2["logits"], torch.zeros(4, dtype=torch.long),
         student_features=sf2, teacher_features=tf2)
    for a, b in zip(before, loss.margins()):
        assert torch.equal(a, b)
    assert {"margin0", "margin0_ready"} <= set(loss.state_dict())


# ------------------------------------------------------------------------------------ CRD
def test_crd_value_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    student, teacher = _pair(2)
    n_samples, k = 20, 5
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 5, (4,))
    index = torch.tensor([3, 0, 19, 7])
    loss = build_loss("crd", num_negatives=k, feat_dim=8)
    assert isinstance(loss, CRDLoss)
    loss.setup(student, teacher, example_input=x, num_train_samples=n_samples)
    rng = np.random.default_rng(0)
    rows = np.concatenate([index.numpy()[:, None], rng.integers(0, n_samples, (4, k))], 1)
    # fixed draws for the reference
    monkeypatch.setattr(loss, "sample_indices", lambda idx: torch.as_tensor(rows))
    bank_s, bank_t = as_numpy(loss.memory_s), as_numpy(loss.memory_t)
    sf, tf = _features(student, teacher, x)
    terms = loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf,
                 index=index)

    def embed(f, lin):
        v = as_numpy(f) @ as_numpy(lin.weight).T + as_numpy(lin.bias)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    s = embed(sf["embedding"], _part(loss, "embed_s.linear", torch.nn.Linear))
    t = embed(tf["embedding"], _part(loss, "embed_t.linear", torch.nn.Linear))

    def nce(anchor, bank):
        e = np.exp(np.einsum("bkd,bd->bk", bank[rows], anchor) / 0.07)
        z = e.mean() * n_samples  # estimated on this (the first) batch
        p = e / z
        h = p / (p + k / n_samples)
        return -(np.log(h[:, 0]) + np.log(1 - h[:, 1:]).sum(1)).mean()

    want = 0.8 * (nce(s, bank_t) + nce(t, bank_s))
    assert terms["crd"].item() == pytest.approx(want, rel=1e-4)
    assert set(terms) == {"ce", "crd"}
    # momentum update of the banks' rows at index; the others untouched
    for bank_before, v, bank_after in ((bank_s, s, loss.memory_s), (bank_t, t, loss.memory_t)):
        after = as_numpy(bank_after)
        upd = 0.5 * bank_before[index.numpy()] + 0.5 * v
        upd /= np.linalg.norm(upd, axis=1, keepdims=True)
        np.testing.assert_allclose(after[index.numpy()], upd, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
        rest = np.setdiff1d(np.arange(n_samples), index.numpy())
        np.testing.assert_array_equal(after[rest], bank_before[rest])


def test_crd_negatives_are_seeded_uniform_and_never_the_positive() -> None:
    student, teacher = _pair(3)
    x = torch.randn(4, 3, 8, 8)

    def make(seed):
        loss = build_loss("crd", num_negatives=64, feat_dim=8, seed=seed)
        loss.setup(student, teacher, example_input=x, num_train_samples=50)
        return loss

    a, b, c = make(0), make(0), make(1)
    index = torch.tensor([0, 10, 49, 25])
    ra1, ra2 = a.sample_indices(index), a.sample_indices(index)
    assert torch.equal(ra1, b.sample_indices(index))  # same seed, same stream
    assert not torch.equal(ra1, ra2) and not torch.equal(ra1, c.sample_indices(index))
    assert torch.equal(ra1[:, 0], index)
    assert bool((ra1[:, 1:] != index[:, None]).all()) and ra1.min() >= 0 and ra1.max() < 50
    # the generator state is a buffer: a restored copy continues the same stream
    d = make(5)
    d.load_state_dict(a.state_dict())
    assert torch.equal(d.sample_indices(index), a.sample_indices(index))
    # roughly uniform over the other samples
    draws = torch.cat([a.sample_indices(torch.tensor([7]))[0, 1:] for _ in range(200)])
    counts = torch.bincount(draws, minlength=50).double()
    assert counts[7] == 0
    others = torch.cat([counts[:7], counts[8:]])
    assert others.min() > 0.5 * others.mean() and others.max() < 1.5 * others.mean()


def test_crd_memory_accounting_dtype_and_device_pinning() -> None:
    student, teacher = _pair(4)
    x = torch.randn(2, 3, 8, 8)
    for dtype, b in (("float32", 4), ("float16", 2), ("bfloat16", 2)):
        loss = build_loss("crd", num_negatives=16, memory_dtype=dtype)
        assert isinstance(loss, CRDLoss)
        loss.setup(student, teacher, example_input=x, num_train_samples=100)
        assert loss.memory_s.dtype == getattr(torch, dtype)
        nbytes = loss.memory_s.nelement() * loss.memory_s.element_size() * 2
        acc = loss.memory_bytes(batch_size=8)
        assert acc["banks"] == nbytes == 2 * 100 * 128 * b
        assert acc["gathered_per_step"] == 2 * 8 * 17 * 128 * 4  # CPU computes in float32
        assert acc["scores_per_step"] == 2 * 8 * 17 * 4
    cifar = crd_memory_bytes(45000, batch_size=64)
    assert cifar["banks"] == 2 * 45000 * 128 * 4  # 46 MB
    assert cifar["gathered_per_step"] == 2 * 64 * 16385 * 128 * 4  # 1.07 GB
    assert crd_memory_bytes(45000, memory_dtype="float16")["banks"] == 45000 * 128 * 4
    # memory_device pins the banks: module casts/moves leave them alone
    pinned = build_loss("crd", num_negatives=16, memory_dtype="float16", memory_device="cpu")
    pinned.setup(student, teacher, example_input=x, num_train_samples=100)
    pinned.double()
    assert pinned.memory_s.dtype == torch.float16
    assert _part(pinned, "embed_s.linear", torch.nn.Linear).weight.dtype == torch.float64
    with pytest.raises(ValueError, match="2 training samples"):
        build_loss("crd").setup(student, teacher, example_input=x, num_train_samples=1)
    with pytest.raises(ValueError, match="memory_dtype"):
        build_loss("crd", memory_dtype="int8")


def test_crd_eval_mode_leaves_the_banks_alone_and_needs_index() -> None:
    student, teacher = _pair(5)
    x = torch.randn(4, 3, 8, 8)
    loss = build_loss("crd", num_negatives=8, feat_dim=8)
    assert isinstance(loss, CRDLoss)
    loss.setup(student, teacher, example_input=x, num_train_samples=30)
    sf, tf = _features(student, teacher, x)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="index"):
        loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf)
    loss.eval()
    before = loss.memory_s.clone()
    loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf,
         index=torch.arange(4))
    assert torch.equal(before, loss.memory_s)


# ------------------------------------------------------------------------------- ReviewKD
def _np_hcl(fs: np.ndarray, ft: np.ndarray) -> float:
    h = fs.shape[-1]
    loss, weight, norm_ = ((fs - ft) ** 2).mean(), 1.0, 1.0
    for size in (4, 2, 1):
        if size >= h:
            continue
        weight /= 2
        loss += weight * ((_np_block_mean(fs, size) - _np_block_mean(ft, size)) ** 2).mean()
        norm_ += weight
    return loss / norm_


def test_reviewkd_value_matches_numpy() -> None:
    student, teacher = _pair(6)
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 5, (4,))
    loss = build_loss("reviewkd", review_weight=5.0)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    for m in loss.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    sf, tf = _features(student, teacher, x)
    terms = loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf,
                 epoch=4)

    s_lv = [as_numpy(s) for s in sf["stages"]] + [as_numpy(sf["embedding"])[:, :, None, None]]
    t_lv = [as_numpy(t) for t in tf["preact_stages"]] + [as_numpy(tf["embedding"])[:, :, None, None]]
    outs, residual = [], None
    for abf, xs, xt in zip(_abfs(loss), s_lv[::-1], t_lv[::-1]):  # deepest level first
        conv1 = _part(abf, "conv1.0", torch.nn.Conv2d)
        bn1 = _part(abf, "conv1.1", torch.nn.BatchNorm2d)
        h = np_bn_train(np_conv1x1(xs, conv1), bn1)
        if residual is not None:
            r = _np_nearest(residual, h.shape[-2:])
            att_conv = _part(abf, "att_conv.0", torch.nn.Conv2d)
            att = 1 / (1 + np.exp(-np_conv1x1(np.concatenate([h, r], 1), att_conv)))
            h = h * att[:, 0:1] + r * att[:, 1:2]
        else:
            assert abf.att_conv is None
        h = _np_nearest(h, xt.shape[-2:])
        conv2 = _part(abf, "conv2.0", torch.nn.Conv2d)
        bn2 = _part(abf, "conv2.1", torch.nn.BatchNorm2d)
        outs.append(np_bn_train(_np_conv3x3(h, conv2), bn2))
        residual = h
    want = 5.0 * (4 / 20) * sum(_np_hcl(o, t) for o, t in zip(outs, t_lv[::-1]))
    assert terms["review"].item() == pytest.approx(want, rel=1e-4)


def test_reviewkd_warmup_and_epoch_requirement() -> None:
    student, teacher = _pair(7)
    x = torch.randn(4, 3, 8, 8)
    loss = build_loss("reviewkd")
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    loss.eval()  # fixed BN statistics: the term is then linear in the ramp
    sf, tf = _features(student, teacher, x)
    y = torch.zeros(4, dtype=torch.long)
    call = lambda **kw: loss(sf["logits"], tf["logits"], y, student_features=sf,
                             teacher_features=tf, **kw)["review"].item()
    full = call(epoch=20)
    assert call(epoch=1) == pytest.approx(full / 20, rel=1e-6)
    assert call(epoch=100) == pytest.approx(full, rel=1e-6)
    with pytest.raises(ValueError, match="epoch"):
        call()


# -------------------------------------------------------------------------------- CAT-KD
@pytest.mark.parametrize("resolution,normalize", [(2, False), (2, True), (1, False)])
def test_catkd_value_matches_numpy(resolution: int, normalize: bool) -> None:
    student, teacher = _pair(8)
    x = torch.randn(4, 3, 16, 16)
    y = torch.randint(0, 5, (4,))
    loss = build_loss("catkd", cat_weight=7.0, resolution=resolution, normalize=normalize)
    loss.setup(student, teacher, example_input=x, num_train_samples=4)
    sf, tf = _features(student, teacher, x)
    terms = loss(sf["logits"], tf["logits"], y, student_features=sf, teacher_features=tf)

    def cams(feats, net):
        pooled = _np_block_mean(as_numpy(feats["stages"][-1]), resolution)
        a = np.einsum("kc,bchw->bkhw", as_numpy(net.fc.weight), pooled)
        if normalize:
            a = a / np.linalg.norm(a.reshape(*a.shape[:2], -1), axis=2)[:, :, None, None]
        return a

    want = 7.0 * ((cams(sf, student) - cams(tf, teacher)) ** 2).mean()
    assert terms["cat"].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1", "MobileNetV2", "ShuffleV2", "vgg8"])
def test_catkd_cams_come_from_the_map_behind_the_logits(arch: str) -> None:
    """Plain stage, WRN's head BN-ReLU, head convs: mean over space of the CAMs + classifier
    bias == logits, so the CAMs are the ones the network classifies with."""
    from figkd.losses.catkd import _classifier_weight, class_activation_maps

    torch.manual_seed(0)
    student = create_model(arch, num_classes=7)
    teacher = create_model("tiny_cnn", num_classes=7).eval().requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    loss = build_loss("catkd")
    loss.setup(student, teacher, example_input=x, num_train_samples=2)
    student.eval()
    feats = student.forward_features(x)
    cam = class_activation_maps(feats["pooled_map"], _classifier_weight(student), 1)[:, :, 0, 0]
    bias = dict(student.named_modules())[student.classifier_name()].bias
    torch.testing.assert_close(cam + bias, feats["logits"], rtol=1e-4, atol=1e-4)


def test_catkd_refuses_a_network_without_the_pooled_map() -> None:
    class NoMap(torch.nn.Module):
        num_classes = 7

        def __init__(self) -> None:
            super().__init__()
            self.inner = create_model("tiny_cnn", num_classes=7)

        def classifier_name(self) -> str:
            return "inner.fc"

        def forward_features(self, x: torch.Tensor) -> dict:
            feats: dict[str, Any] = dict(self.inner.forward_features(x))
            feats["pooled_map"] = feats["pooled_map"] * 2  # not what the head averages
            return feats

    teacher = create_model("tiny_cnn", num_classes=7).eval().requires_grad_(False)
    with pytest.raises(TypeError, match="pooled_map"):
        build_loss("catkd").setup(NoMap(), teacher, example_input=torch.randn(2, 3, 8, 8),
                                  num_train_samples=2)


# ------------------------------------------------------------------- all four: gradients
def _run(method: str, student, teacher, x, *, autocast: bool = False, **opts):
    loss = build_loss(method, **opts)
    loss.setup(student, teacher, example_input=x, num_train_samples=32)
    # teacher features computed from an input that requires grad: any leak shows on x_t.grad
    x_t = x.clone().requires_grad_(True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with ctx:
        tf = teacher.forward_features(x_t)
        sf = student.forward_features(x)
        terms = loss(sf["logits"], tf["logits"], torch.randint(0, 5, (x.shape[0],)),
                     student_features=sf, teacher_features=tf,
                     index=torch.arange(x.shape[0]), epoch=30)
    total = sum(terms.values())
    total.backward()
    return loss, terms, sf, x_t


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_student_and_connectors_never_teacher(method: str) -> None:
    student, teacher = _pair(9)
    x = torch.randn(8, 3, 8, 8)
    opts: dict[str, Any] = {"num_negatives": 16} if method == "crd" else {}
    loss, terms, _sf, x_t = _run(method, student, teacher, x, **opts)
    feat_term = next(v for k, v in terms.items() if k != "ce")
    assert feat_term.requires_grad and feat_term.item() > 0
    assert x_t.grad is None  # teacher features were detached
    for p in teacher.parameters():
        assert not p.requires_grad and p.grad is None
    own = list(loss.parameters())
    if method == "catkd":
        assert own == []  # no connectors; the CAT term trains the student's classifier
        assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    else:
        assert own and all(p.grad is not None for p in own)
        assert sum(float(p.grad.abs().sum()) for p in own) > 0
    # the feature term alone (CE left out) reaches the student's stage parameters
    sf2 = student.forward_features(x)
    with torch.no_grad():
        tf2 = teacher.forward_features(x)
    terms2 = loss(sf2["logits"], tf2["logits"], torch.zeros(8, dtype=torch.long),
                  student_features=sf2, teacher_features=tf2, index=torch.arange(8), epoch=30)
    feat2 = next(v for k, v in terms2.items() if k != "ce")
    grads = torch.autograd.grad(feat2, list(student.stages.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("method", METHODS)
def test_finite_under_bf16_autocast(method: str) -> None:
    student, teacher = _pair(10)
    x = torch.randn(8, 3, 8, 8)
    opts = {"num_negatives": 16} if method == "crd" else {}
    loss, terms, _, _ = _run(method, student, teacher, x, autocast=True, **opts)
    for v in terms.values():
        assert v.dtype == torch.float32 and torch.isfinite(v)
    for p in list(student.parameters()) + list(loss.parameters()):
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("method", METHODS)
def test_forward_before_setup_is_a_clear_error(method: str) -> None:
    student, teacher = _pair(11)
    x = torch.randn(2, 3, 8, 8)
    sf, tf = _features(student, teacher, x)
    with pytest.raises(RuntimeError, match="setup"):
        build_loss(method)(sf["logits"], tf["logits"], torch.zeros(2, dtype=torch.long),
                           student_features=sf, teacher_features=tf, index=torch.arange(2),
                           epoch=1)


# ---------------------------------------------------------- the paper's pairs (slow)
PAIRS = [("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"),
         ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("wrn_40_2", "ShuffleV1"),
         ("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
         ("vgg13", "MobileNetV2")]


@pytest.mark.slow
@pytest.mark.parametrize("teacher_name,student_name", PAIRS)
def test_every_cifar_pair_builds_and_steps(teacher_name: str, student_name: str) -> None:
    torch.manual_seed(0)
    teacher = create_model(teacher_name).eval().requires_grad_(False)
    student = create_model(student_name)
    x = torch.randn(4, 3, 32, 32)
    for method in METHODS:
        opts = {"num_negatives": 64} if method == "crd" else {}
        loss = build_loss(method, **opts)
        loss.setup(student, teacher, example_input=x, num_train_samples=128)
        with torch.no_grad():
            tf = teacher.forward_features(x)
        sf = student.forward_features(x)
        terms = loss(sf["logits"], tf["logits"], torch.zeros(4, dtype=torch.long),
                     student_features=sf, teacher_features=tf, index=torch.arange(4), epoch=1)
        total = sum(terms.values())
        assert torch.isfinite(total)
        total.backward()
        student.zero_grad()


def test_losses_are_registered_with_their_flags() -> None:
    from figkd.losses import LOSSES

    for name in METHODS:
        cls = LOSSES.get(name)
        assert cls.needs_features
        assert cls.needs_sample_index == (name == "crd")
    ofd = build_loss("ofd")
    assert isinstance(ofd, OFDLoss)
    assert math.isclose(ofd.feat_weight, 1e-3)


# ------------------------------------------------------------- CRD under DDP (slow)
def _crd_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        banks = _crd_step(torch.arange(rank * 3, rank * 3 + 3 - rank))  # sizes 3 and 2
        torch.save(banks, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _crd_step(rows_of_batch: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    student, teacher = _pair(12)
    student.eval()  # BN batch statistics would differ between a half batch and the full one
    x_all = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = build_loss("crd", num_negatives=8, feat_dim=8)
    loss.setup(student, teacher, example_input=x_all, num_train_samples=20)
    x = x_all[rows_of_batch]
    sf, tf = _features(student, teacher, x)
    loss(sf["logits"], tf["logits"], torch.zeros(len(x), dtype=torch.long),
         student_features=sf, teacher_features=tf, index=rows_of_batch * 3)
    keep = ("memory_s", "memory_t", "log_z")
    return {k: v.clone() for k, v in loss.state_dict().items() if k in keep}


@pytest.mark.slow
def test_crd_banks_stay_identical_across_ddp_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_crd_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = _crd_step(torch.tensor([0, 1, 2, 3, 4]))  # both ranks' samples in one process
    for key in ("memory_s", "memory_t", "log_z"):
        torch.testing.assert_close(r0[key], r1[key])
    for key in ("memory_s", "memory_t"):  # Z differs: the ranks draw other negatives
        torch.testing.assert_close(r0[key], single[key], rtol=1e-5, atol=1e-6)
