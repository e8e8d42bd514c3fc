"""The plumbing feature-based methods rely on: distiller context, setup, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import tiny_run_overrides
from torch import Tensor, nn

from figkd.config import Config, config_from_dict
from figkd.distiller import Distiller, FeatureOutput, features_view
from figkd.engine import Trainer, load_weights_only, model_payload, save_atomic
from figkd.losses import DistillationLoss, build_loss
from figkd.losses.fitnet import FitNetLoss
from figkd.models import create_model


class Probe(DistillationLoss):
    """Records what the distiller passes; the loss is the student's mean squared logit."""

    term_names = ("probe",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **context: Any
    ) -> dict[str, Tensor]:
        self.seen = {"student": student_logits, "teacher": teacher_logits, **context}
        return {"probe": student_logits.pow(2).mean()}


class FeatureProbe(Probe):
    needs_features: ClassVar[bool] = True


class IndexProbe(Probe):
    needs_teacher: ClassVar[bool] = False
    needs_sample_index: ClassVar[bool] = True


class ImageProbe(Probe):
    needs_teacher: ClassVar[bool] = False
    needs_images: ClassVar[bool] = True


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)
    return student, teacher


X, Y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))


# --------------------------------------------------------------------------- distiller


def test_feature_methods_get_both_networks_features() -> None:
    student, teacher = _nets()
    loss = FeatureProbe()
    logits, _ = Distiller(student, loss, teacher).train()(X, Y, index=torch.arange(6), epoch=3)
    seen = loss.seen
    assert set(seen) == {"student", "teacher", "student_features", "teacher_features", "epoch"}
    assert seen["student"] is seen["student_features"]["logits"] is logits
    assert seen["teacher"] is seen["teacher_features"]["logits"]
    assert len(seen["teacher_features"]["stages"]) == 2
    assert not any(t.requires_grad for t in seen["teacher_features"]["stages"])
    assert seen["student_features"]["stages"][-1].requires_grad
    assert torch.allclose(seen["teacher"], teacher.eval()(X))  # eval-mode teacher


def test_feature_output_wrapper_gives_the_same_terms() -> None:
    student, teacher = _nets()
    loss = FitNetLoss()
    loss.setup(student, teacher, example_input=X, num_train_samples=6)
    assert loss.regressor is not None  # setup builds the connector
    _, a = Distiller(student, loss, teacher).eval()(X, Y)
    wrapped = Distiller(features_view(student, loss), loss, teacher).eval()
    assert isinstance(wrapped.student, FeatureOutput)
    _, b = wrapped(X, Y)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert features_view(student, build_loss("kd")) is student
    wrapped.train()  # connectors follow the student; the teacher stays in eval mode
    assert loss.regressor.training and student.training and not teacher.training
    wrapped.eval()
    assert not loss.regressor.training and not student.training


def test_sample_index_and_images_are_passed_only_when_declared() -> None:
    student, _ = _nets()
    index = torch.tensor([5, 3, 9, 0, 1, 2])
    loss = IndexProbe()
    Distiller(student, loss)(X, Y, index=index, epoch=1)
    assert loss.seen["index"] is index and loss.seen["teacher"] is None
    with pytest.raises(ValueError, match="dataset indices"):
        Distiller(student, IndexProbe())(X, Y, epoch=1)
    images = ImageProbe()
    Distiller(student, images)(X, Y, index=index, epoch=1)
    assert images.seen["images"] is X and "index" not in images.seen
    plain = Probe()
    plain.needs_teacher = False  # type: ignore[misc]
    Distiller(student, plain)(X, Y, index=index, epoch=1)
    assert set(plain.seen) == {"student", "teacher", "epoch"}  # the logit path is unchanged


def test_unsupported_combinations_are_clear_errors() -> None:
    class TwoViewFeatures(FeatureProbe):
        num_views: ClassVar[int] = 2

    student, teacher = _nets()
    with pytest.raises(ValueError, match="only single-view methods"):
        Distiller(student, TwoViewFeatures(), teacher)
    with pytest.raises(TypeError, match="no forward_features"):
        Distiller(nn.Linear(3, 2), FeatureProbe(), teacher)


# --------------------------------------------------------------------------- trainer


def digits_config(out: Path, name: str, method: str, teacher: Path | None, **train: Any) -> Config:
    data: dict[str, Any] = {"dataset": "digits", "num_workers": 0}
    data.update(train.pop("data", {}))
    cfg: dict[str, Any] = {
        "experiment": name,
        "output_dir": str(out),
        "model": {"name": "tiny_cnn", "args": {"width": 4}},
        "data": data,
        "loss": {"name": method},
        "schedule": {"milestones": [3]},
        "train": {
            "epochs": 2,
            "device": "cpu",
            "num_threads": 1,
            "progress": "none",
            "deterministic": True,
            **train,
        },
    }
    if teacher is not None:
        cfg["teacher"] = {"name": "tiny_cnn", "args": {"width": 8}, "checkpoint": str(teacher)}
    return config_from_dict(cfg)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(7)
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8)
    save_atomic(model_payload(teacher), path)
    return path


@pytest.mark.parametrize("method", ["fitnet", "at", "pkt", "rkd", "sp", "vid", "dml"])
def test_two_epochs_on_digits_finish_with_a_finite_loss(
    method: str, teacher_file: Path, tmp_path: Path
) -> None:
    teacher = None if method == "dml" else teacher_file
    cfg = digits_config(tmp_path, method, method, teacher, max_steps_per_epoch=6)
    summary = Trainer(cfg, tmp_path / method).fit()
    lines = (tmp_path / method / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert all(torch.isfinite(torch.tensor(v)) for v in record["train"].values())
    assert summary["final"]["test"]["top1"] >= 0
    last = load_weights_only(tmp_path / method / "checkpoints/last.pt")
    if method in ("fitnet", "vid", "dml"):  # connectors / peer travel with the run
        assert last["loss"] and all(isinstance(v, Tensor) for v in last["loss"].values())
        assert "loss" in load_weights_only(tmp_path / method / "checkpoints/best.pt")
    else:
        assert "loss" not in last
    if method == "dml":
        assert 0 <= records[-1]["peer"]["test"]["top1"] <= 100
        assert any(k.startswith("peer.") for k in last["loss"])


class SetupRecorder(IndexProbe):
    """Records setup's arguments and every batch's (index, target) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.setup_args: dict[str, Any] = {}
        self.pairs: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self.scale = nn.Parameter(torch.ones(()))

    def setup(self, student: nn.Module, teacher: nn.Module | None, **kwargs: Any) -> None:
        self.setup_args = {"student": student, "teacher": teacher, **kwargs}

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor,
                **context: Any) -> dict[str, Tensor]:
        self.pairs.setdefault(context["epoch"], []).append((context["index"].cpu(), targets.cpu()))
        ce = nn.functional.cross_entropy(student_logits, targets)
        return {"ce": ce, "anchor": (self.scale - 1).pow(2)}


@pytest.mark.parametrize("loader", ["fast", "torch"])
def test_setup_gets_a_real_batch_and_every_data_path_gives_indices(
    loader: str, tmp_path: Path
) -> None:
    loss = SetupRecorder()
    cfg = digits_config(tmp_path, loader, "ce", None, data={"loader": loader, "batch_size": 32})
    trainer = Trainer(cfg, tmp_path / loader, loss=loss)
    trainer.fit()
    assert trainer.data.path == loader
    args = loss.setup_args
    assert args["student"] is trainer.student and args["teacher"] is None
    assert args["example_input"].shape == (32, 1, 8, 8)
    assert args["num_train_samples"] == trainer.data.train_size
    label_of: dict[int, int] = {}
    for epoch, batches in loss.pairs.items():
        index = torch.cat([i for i, _ in batches])
        targets = torch.cat([t for _, t in batches])
        assert len(index.unique()) == len(index)  # no sample twice in an epoch
        assert 0 <= int(index.min()) and int(index.max()) < trainer.data.train_size
        for i, t in zip(index.tolist(), targets.tolist(), strict=True):
            assert label_of.setdefault(i, t) == t, f"epoch {epoch}: index {i} changed label"
    assert len(loss.pairs) == 2 and label_of
    assert loss.scale.grad is not None  # the loss's own parameter is trained


class Killed(Exception):
    pass


class KillableFitNet(FitNetLoss):
    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        super().__init__(hint_layer=1)
        self.kill_at = kill_at
        self.calls: dict[int, int] = {}  # epoch -> forward calls

    def forward(self, *args: Any, **context: Any) -> dict[str, Tensor]:
        epoch = context["epoch"]
        self.calls[epoch] = self.calls.get(epoch, 0) + 1
        if self.kill_at == (epoch, self.calls[epoch]):
            raise Killed
        return super().forward(*args, **context)


def test_resume_with_trainable_connectors_is_bit_identical(
    teacher_file: Path, tmp_path: Path
) -> None:
    def cfg(name: str) -> Config:
        return digits_config(tmp_path, name, "fitnet", teacher_file, epochs=3,
                             max_steps_per_epoch=8)

    full = Trainer(cfg("full"), tmp_path / "full", loss=KillableFitNet()).fit()
    run = tmp_path / "killed"
    with pytest.raises(Killed):
        Trainer(cfg("killed"), run, loss=KillableFitNet(kill_at=(2, 5))).fit()
    assert load_weights_only(run / "checkpoints/last.pt")["epoch"] == 1
    resumed = Trainer(cfg("killed"), run, resume=True, loss=KillableFitNet()).fit()
    a = load_weights_only(tmp_path / "full/checkpoints/last.pt")
    b = load_weights_only(run / "checkpoints/last.pt")
    assert set(a["loss"]) == set(b["loss"]) and any("regressor" in k for k in a["loss"])
    for part in ("model", "loss"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert resumed["resumed"] == 1 and resumed["final"] == full["final"]


# --------------------------------------------------------------------------- shipped configs


CIFAR_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"


@pytest.fixture
def cifar(fake_cifar100: Path) -> Path:
    return fake_cifar100


_cifar_small = tiny_run_overrides


def _run_shipped(cifar: Path, out: Path, method: str, teacher: str | None, swap: list[str]) -> dict:
    from figkd.cli import main

    pair = CIFAR_CONFIGS / method / "resnet32x4_resnet8x4.yaml"
    extra: list[str] = []
    if teacher is not None:
        ckpt = out / "teacher.pt"
        save_atomic(model_payload(create_model(teacher, num_classes=100)), ckpt)
        extra = ["--teacher", str(ckpt)]
    # `figkd distill` runs every method, DML (peers, no frozen teacher) included
    argv = ["distill", str(pair), *_cifar_small(cifar), *swap, *extra, "--output-dir", str(out)]
    assert main(argv) == 0
    run = out / f"cifar100/{method}/resnet32x4_resnet8x4/seed0"
    return json.loads((run / "summary.json").read_text())


def test_shipped_fitnet_and_dml_configs_run_from_the_command_line(
    cifar: Path, tmp_path: Path
) -> None:
    small = ["model.name=resnet8", "teacher.name=resnet8"]  # the pair's shape, smaller nets
    fitnet = _run_shipped(cifar, tmp_path, "fitnet", "resnet8", small)
    assert set(fitnet["final"]["train"]) == {"loss", "ce", "hint", "top1"}
    assert fitnet["paper"]["top1"] == 73.50 and fitnet["method"] == "fitnet"
    dml_swap = ["model.name=resnet8", "loss.args.peer=resnet8"]
    dml = _run_shipped(cifar, tmp_path, "dml", None, dml_swap)
    assert set(dml["final"]["train"]) == {"loss", "ce", "kl", "peer_ce", "peer_kl", "top1"}
    assert dml["paper"]["top1"] == 72.12 and dml["teacher"] is None
    metrics = Path(dml["run_dir"]) / "metrics.jsonl"
    assert "top1" in json.loads(metrics.read_text().splitlines()[-1])["peer"]["test"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fitnet", "at", "pkt", "rkd", "sp", "vid"])
def test_shipped_configs_with_the_papers_models(method: str, cifar: Path, tmp_path: Path) -> None:
    summary = _run_shipped(cifar, tmp_path, method, "resnet32x4", [])
    assert summary["model"] == "resnet8x4" and summary["teacher"]["arch"] == "resnet32x4"
