"""User-facing messages: each names the problem and the fix, in one line, without a traceback.

Small fixtures only: the bundled ``digits`` dataset and ``tiny_cnn`` width-4 checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from figkd.cli import main
from figkd.config import ConfigError, load_config
from figkd.engine import load_teacher
from figkd.losses import build_loss
from figkd.models import CheckpointMismatchError, ZooModel, create_model, load_checkpoint
from figkd.models.checkpoint import file_sha256

#: a distill run on digits that fails (or finishes) in seconds on one CPU thread
DIGITS = [
    "data.dataset=digits",
    "data.num_workers=0",
    "train.device=cpu",
    "train.num_threads=1",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "model.name=tiny_cnn",
    "model.args.width=4",
    "schedule.milestones=[0,0,0]",
]


def _tiny(num_classes: int = 10, width: int = 4) -> ZooModel:
    return create_model("tiny_cnn", num_classes=num_classes, in_channels=1, width=width)


def _error_line(err: str, command: str) -> str:
    """The single error line the CLI printed (warnings may precede it), and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"figkd {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps --help at $COLUMNS


# --------------------------------------------------------------------------- #10 teachers


@pytest.fixture
def mdistiller_100(tmp_path: Path) -> Path:
    """A RepDistiller/mdistiller-style teacher: {"model": state_dict, "epoch": ...}, 100 classes."""
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": _tiny(100).state_dict(), "epoch": 240, "best_acc": 70.0}, path)
    return path


def test_plain_state_dict_teacher_with_other_classes_names_its_file_and_the_fix(
    mdistiller_100: Path,
) -> None:
    with pytest.raises(CheckpointMismatchError) as info:
        load_teacher("tiny_cnn", mdistiller_100, 10, in_channels=1, args={"width": 4})
    message = str(info.value)
    assert f"checkpoint {mdistiller_100} has 100 classes (fc.weight (100, 16))" in message
    assert message.endswith("; use a teacher trained on this dataset (10 classes)")
    assert "<state dict>" not in message


def test_plain_state_dict_of_another_architecture_says_which_name_fits(tmp_path: Path) -> None:
    bare = tmp_path / "resnet8.pth"
    torch.save(create_model("resnet8", num_classes=10, in_channels=1).state_dict(), bare)
    with pytest.raises(CheckpointMismatchError) as info:
        load_teacher("tiny_cnn", bare, 10, in_channels=1, args={"width": 4})
    message = str(info.value)
    assert message.startswith(f"checkpoint {bare} does not fit the model 'tiny_cnn'")
    assert message.endswith("; set teacher.name=resnet8")
    assert info.value.fits == ("resnet8",)
    # figkd eval names its architecture with model.name / --model
    with pytest.raises(CheckpointMismatchError, match=r"; set model\.name=resnet8$"):
        load_teacher("tiny_cnn", bare, 10, in_channels=1, args={"width": 4}, config_key="model")


def test_same_architecture_at_another_width_points_at_teacher_args(tmp_path: Path) -> None:
    wide = tmp_path / "wide.pth"
    torch.save(_tiny(width=8).state_dict(), wide)
    with pytest.raises(CheckpointMismatchError) as info:
        load_teacher("tiny_cnn", wide, 10, in_channels=1, args={"width": 4})
    message = str(info.value)
    assert str(wide) in message and "shape mismatches" in message
    assert message.endswith("the file has tiny_cnn's layers at other sizes: check teacher.args "
                            "(e.g. width)")


def test_library_mismatch_messages_end_with_a_fix_too(mdistiller_100: Path) -> None:
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(_tiny(10), mdistiller_100)
    assert str(info.value).endswith(
        "use a checkpoint trained on 10 classes, or exclude_classifier=True to keep the "
        "model's own classifier"
    )
    state = create_model("resnet8", num_classes=10, in_channels=1).state_dict()
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(_tiny(10), state, source="teachers/r8.pth")
    assert str(info.value).startswith("checkpoint teachers/r8.pth does not fit")
    assert str(info.value).endswith("the file fits 'resnet8': build that model instead")


def test_an_expected_sha256_is_never_skipped(tmp_path: Path, mdistiller_100: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(_tiny().state_dict(), good)
    with pytest.raises(ValueError, match="sha256= is checked against a file: pass the checkpoint"):
        load_checkpoint(_tiny(), torch.load(good), sha256=file_sha256(good))
    # load_teacher hashes the file itself, before anything else can fail
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, but the config expects 0+$"):
        load_teacher("tiny_cnn", mdistiller_100, 10, in_channels=1, args={"width": 4},
                     sha256="0" * 64)
    _, record = load_teacher("tiny_cnn", good, 10, in_channels=1, args={"width": 4},
                             sha256=file_sha256(good).upper())
    assert record["sha256"] == file_sha256(good)


def test_distill_and_eval_name_the_teacher_file(
    mdistiller_100: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["distill", *DIGITS, "loss.name=kd", "teacher.name=tiny_cnn",
            "teacher.args.width=4", f"teacher.checkpoint={mdistiller_100}",
            f"output_dir={tmp_path / 'runs'}"]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err, "distill")
    assert f"checkpoint {mdistiller_100} has 100 classes" in line
    assert line.endswith("use a teacher trained on this dataset (10 classes)")

    argv = ["eval", str(mdistiller_100), "--model", "tiny_cnn", "--dataset", "digits",
            "model.args.width=4", "data.num_workers=0", "--device", "cpu"]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err, "eval")
    assert f"checkpoint {mdistiller_100} has 100 classes" in line and "<state dict>" not in line


# --------------------------------------------------------------------------- #11 datasets


def test_dataset_not_found_hint_gives_the_cli_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from figkd.data import DatasetNotFoundError
    from figkd.data.api import resolve_root

    with pytest.raises(DatasetNotFoundError) as info:
        resolve_root("cifar100", tmp_path / "nope")
    message = str(info.value)
    assert "Set data.root=<folder> (figkd study/pack: --data-root <folder>; " in message
    assert "Pass root=<folder>" not in message
    argv = ["train", "configs/cifar100/student/resnet8x4.yaml", f"data.root={tmp_path / 'nope'}",
            "train.device=cpu"]
    assert main(argv) == 2
    assert "Set data.root=<folder>" in capsys.readouterr().err


# --------------------------------------------------------------------------- #12 loss options


def test_a_loss_option_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["loss.name=figkd", "loss.args.beta=abc"])
    assert str(info.value) == "loss.args.beta: expected a number, got 'abc'"
    with pytest.raises(ConfigError, match=r"^loss\.args\.level: expected an integer, got 'two'$"):
        load_config(None, ["loss.name=figkd", "loss.args.level=two"])
    # a number written as a string (YAML reads 1e-3 as one) is converted, not refused
    assert build_loss("figkd", beta="1e-3").beta == pytest.approx(1e-3)
    assert build_loss("figkd", level="2").level == 2


def test_a_misspelt_loss_option_gets_a_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) bta \(did you mean 'beta'\?\); "
                       r"its options are: alpha, beta"):
        load_config(None, ["loss.name=figkd", "loss.args.bta=2"])
    assert main(["distill", "loss.name=figkd", "loss.args.beta=abc", "--print-config"]) == 2
    line = _error_line(capsys.readouterr().err, "distill")
    assert line == "figkd distill: error: loss.args.beta: expected a number, got 'abc'"


# --------------------------------------------------------------------------- #14 config keys


def test_config_did_you_mean_gives_the_full_dotted_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'\. "
                       r"Did you mean 'train\.epochs'\?"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"Did you mean 'train'\?"):
        load_config(None, ["trian.epochs=3"])
    assert main(["train", "optim.lrr=1"]) == 2
    assert "Did you mean 'optim.lr'?" in _error_line(capsys.readouterr().err, "train")


# --------------------------------------------------------------------------- #13 --resume


def test_resume_without_a_checkpoint_says_it_starts_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", *DIGITS, f"output_dir={tmp_path}", "experiment=typo", "--resume"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'typo' / 'seed0'}: no checkpoints/last.pt to resume; starting at epoch 1" \
        in out
    assert main(argv) == 0  # a real resume (the run finished) prints no such line
    assert "no checkpoints/last.pt" not in capsys.readouterr().out


# --------------------------------------------------------------------------- #14 figkd state


def test_state_show_and_import_refuse_folders_without_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["state", "show", str(tmp_path / "nope")]) == 2
    line = _error_line(capsys.readouterr().err, "state")
    assert f"{tmp_path / 'nope'} does not exist: give a bundle folder" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "dest"
    assert main(["state", "import", str(empty), str(dest)]) == 2
    line = _error_line(capsys.readouterr().err, "state")
    assert f"{empty} holds no state.json and no runs" in line and "figkd state import" in line
    assert not dest.exists()
    assert main(["state", "show", str(empty)]) == 2
    assert "holds no state.json and no runs" in capsys.readouterr().err


# --------------------------------------------------------------------------- #14 figkd models


def test_models_options_that_need_flops_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--compare-paper"]) == 2
    line = _error_line(capsys.readouterr().err, "models")
    assert line.endswith("--compare-paper only applies to the params / MACs table: add --flops")
    assert main(["models", "--input-size", "64"]) == 2
    assert "--input-size only applies" in _error_line(capsys.readouterr().err, "models")


def test_compare_paper_warns_outside_the_papers_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "resnet8", "--flops", "--compare-paper"]) == 0
    err = capsys.readouterr().err
    assert ("figkd models: warning: the paper's Table 15 figures are for 64x64 inputs and 200 "
            "classes, this table for each model's native size and 100 classes") in err
    assert err.count("\n") == 1
    argv = ["models", "resnet8", "--flops", "--compare-paper", "--input-size", "64",
            "--num-classes", "200"]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err


# --------------------------------------------------------------------------- #15 figures


def test_figures_says_what_is_missing_and_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["figures", str(tmp_path / "nope")]) == 2
    line = _error_line(capsys.readouterr().err, "figures")
    assert f"{tmp_path / 'nope'} does not exist:" in line
    assert main(["figures", str(tmp_path)]) == 2
    line = _error_line(capsys.readouterr().err, "figures")
    assert f"no figkd/seed0 run below {tmp_path}" in line
    assert line.endswith("name the runs with --teacher/--kd/--figkd <run folder>")
    run = tmp_path / "pair" / "figkd" / "seed3"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    assert main(["figures", str(tmp_path)]) == 2
    assert "pass --seed 3 for the runs there" in capsys.readouterr().err


# --------------------------------------------------------------------------- (D) --help


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_texts_keep_examples_and_drop_default_noise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _help(capsys, "pack")
    assert "--max-mib 45\n    figkd pack cifar100" in out  # the examples stay two lines
    assert "folder for the shards (required)\n" in out
    assert "which splits to pack (default: ['train', 'test'])" in out
    assert "(default: None)" not in out
    out = _help(capsys, "models")
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "(default: each model's native size)" in out
    out = _help(capsys, "state", "export")
    assert "(default: 58.0)" in out and "(default: 15.0)" in out
    out = _help(capsys, "state", "show")
    assert "a bundle folder (state.json + parts) or a study's --out folder" in out
    out = _help(capsys, "study")
    assert "trains nothing and writes nothing under --out" in out
    assert "run nothing" not in out
