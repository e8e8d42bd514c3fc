"""``figkd models``: listing, filtering and the params / FLOPs table."""

from __future__ import annotations

import pytest

from figkd.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_lists_every_model_with_family_and_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert len(lines) == 28
    assert "wrn" in lines["wrn_40_2"] and "WRN-40-2" in lines["wrn_40_2"]
    assert "ShuffleNet-V1" in lines["ShuffleV1"]
    assert "resnet_imagenet" in lines["resnet18_imagenet"]


def test_pattern_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "vgg*")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [
        "vgg11", "vgg13", "vgg16", "vgg19", "vgg8"
    ]


def test_flops_table_for_the_table15_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "resnet*x4", "--flops", "--input-size", "64",
                       "--num-classes", "200", "--compare-paper")
    assert code == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| resnet")}
    assert rows["resnet8x4"] == ["64x64", "200", "1.26", "708.23", "1.26", "714.26", "0.992"]
    assert rows["resnet32x4"] == ["64x64", "200", "7.46", "4332.11", "7.46", "4352.82", "0.995"]
    assert "FlopCounterMode" in out


def test_flops_default_to_each_models_native_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "resnet18_imagenet", "--flops", "--num-classes", "1000")
    assert code == 0
    assert "| resnet18_imagenet | 224x224 | 1000 | 11.69 | 1814.07 |" in out


def test_no_match_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "resnt*")
    assert code == 2 and "no model matches 'resnt*'" in err
