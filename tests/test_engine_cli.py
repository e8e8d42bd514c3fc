"""The engine's CLI commands: complete --help, shortcuts, config printing, clear errors."""

from __future__ import annotations

import pytest
import yaml

from figkd.cli import main

COMMANDS = ("train", "distill", "eval", "report", "demo")


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_complete(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: figkd {name}" in out and "figkd" in out.split("usage:")[1]
    if name in ("train", "distill"):
        for text in (
            "--seeds",
            "--resume",
            "--device",
            "--amp",
            "--channels-last",
            "--compile",
            "--deterministic",
            "--workers",
            "config keys",
            "train.epochs (int) = 240",
        ):
            assert text in out, text
    if name == "distill":
        assert "--teacher" in out


def test_print_config_applies_shortcuts_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "train",
                "configs/cifar100/student/shufflev1.yaml",
                "optim.momentum=0.8",
                "--epochs",
                "3",
                "--amp",
                "bf16",
                "--deterministic",
                "--workers",
                "2",
                "--print-config",
            ]
        )
        == 0
    )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["experiment"] == "cifar100/student/shufflev1"
    assert (
        cfg["train"]["epochs"] == 3
        and cfg["train"]["amp"] == "bf16"
        and cfg["train"]["deterministic"]
    )
    assert cfg["data"]["num_workers"] == 2 and cfg["optim"]["momentum"] == 0.8
    assert cfg["paper"]["top1"] == 70.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "optim.lrr=1"], "Did you mean 'optim.lr'"),
        (["train", "a.yaml", "b.yaml"], "at most one config file"),
        (["train", "missing.yaml"], "config file not found"),
        (["distill", "loss.name=kd", "model.name=resnet8x4"], "needs teacher.name"),
        (["eval", "missing.pt"], "not found"),
    ],
)
def test_errors_are_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"figkd {argv[0]}: error:") and message in err


def test_distill_refuses_plain_ce_but_runs_teacherless_distillation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["distill", "loss.name=ce", "model.name=resnet8"]) == 2
    assert "trains without distillation: use `figkd train`" in capsys.readouterr().err
    argv = ["distill", "configs/cifar100/dml/resnet32x4_resnet8x4.yaml", "--print-config"]
    assert main(argv) == 0
    assert "name: dml" in capsys.readouterr().out
