"""The figkd command line: discovery, help, and the demo self-check."""

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


def test_demo_self_check_agrees_with_pywavelets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "vs PyWavelets" in out and ": OK" in out
    assert "figkd: ce=" in out and "detail=" in out
