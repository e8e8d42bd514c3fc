"""The figkd command line: discovery, help, and where overrides may go."""

from __future__ import annotations

import pytest

from figkd.cli import build_parser, discover_commands, main


def test_commands_are_discovered_and_have_complete_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = discover_commands()
    assert "demo" in commands
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: figkd " + name in capsys.readouterr().out


def test_missing_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_overrides_after_options_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--epochs", "3", "optim.momentum=0.8", "train.seed=7", "--print-config"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "momentum: 0.8" in out and "seed: 7" in out and "epochs: 3" in out


def test_override_swallowed_by_seeds_names_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--seeds", "0", "1", "train.epochs=2", "--print-config"])
    assert exit_info.value.code == 2
    assert "put key=value overrides before --seeds" in capsys.readouterr().err


def test_unknown_option_is_still_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--no-such-flag", "--print-config"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["figkd", "figkd.cli"])
def test_python_dash_m_runs_the_cli(module: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(  # noqa: PLW1510 (the test reads the return code)
        [sys.executable, "-m", module, "train", "train.epochs=3", "--print-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "epochs: 3" in result.stdout
