"""Edge cases of the small CLI commands (``distill``, ``report``, ``models``) and ``figkd.cli``.

Every command is called through :func:`figkd.cli.main`; exit codes, stdout and stderr are
checked exactly.  Expected numbers are worked out by hand in the tests (comments show the
arithmetic), taken from ``hashlib``/``csv``, or published counts (cited where used).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import DIGITS_OVERRIDES

from figkd.cli import main
from figkd.models import create_model


def _call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``figkd ARGV`` in-process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- figkd report


def _summary(root: Path, experiment: str, seed: int, top1: float) -> Path:
    """A hand-written summary.json of one finished seed (the fields engine/report.py reads)."""
    run = root / experiment / f"seed{seed}"
    run.mkdir(parents=True)
    data: dict[str, Any] = {
        "experiment": experiment,
        "seed": seed,
        "method": "kd",
        "model": "resnet8x4",
        "dataset": "cifar100",
        "teacher": {"arch": "resnet32x4", "test": {"top1": 79.5}},
        "final": {"epoch": 240, "test": {"top1": top1, "top5": top1 + 20.0}},
        "best": None,
        "paper": {"top1": 73.5, "table": 2, "note": None},
    }
    (run / "summary.json").write_text(json.dumps(data))
    return run


@pytest.fixture()
def three_seeds(tmp_path: Path) -> Path:
    """Seeds with top-1 70, 71 and 75: mean 72, sample std sqrt(7) (see the test)."""
    for seed, top1 in enumerate([70.0, 71.0, 75.0]):
        _summary(tmp_path / "runs", "cifar100/kd/r32x4_r8x4", seed, top1)
    return tmp_path / "runs"


def test_report_csv_no_write_prints_hand_computed_mean_and_sample_std(
    three_seeds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--format csv --no-write`` prints only the CSV, and writes nothing.

    Hand arithmetic: mean (70 + 71 + 75) / 3 = 72; deviations -2, -1, 3 square to 4 + 1 + 9 =
    14; sample variance 14 / (3 - 1) = 7; std sqrt(7). top-5 is top-1 + 20 (same spread);
    Δ vs paper 72 - 73.5 = -1.5.
    """
    code, out, err = _call(capsys, "report", str(three_seeds), "--format", "csv", "--no-write")
    assert (code, err) == (0, "")
    assert "wrote" not in out and not out.startswith("|")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1
    row = rows[0]
    assert row["experiment"] == "cifar100/kd/r32x4_r8x4" and row["n"] == "3"
    assert row["seeds"] == "0 1 2"
    assert float(row["top1_last_mean"]) == pytest.approx(72.0, abs=1e-12)
    assert float(row["top1_last_std"]) == pytest.approx(math.sqrt(7.0), abs=1e-12)
    assert float(row["top5_last_mean"]) == pytest.approx(92.0, abs=1e-12)
    assert float(row["delta_vs_paper"]) == pytest.approx(-1.5, abs=1e-12)
    assert row["top1_best_mean"] == "" and row["top1_best_std"] == ""  # no best-val record
    assert list(three_seeds.rglob("report.*")) == []


def test_report_markdown_goes_to_the_first_folder_without_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--out`` the files go to the *first* RUNS folder, and stdout names them.

    Two folders of one experiment each: first 60 and 62 (mean 61, std sqrt((1 + 1) / 1) =
    sqrt(2) = 1.41), second a single seed 50 (no spread: the cell is just "50.00").
    """
    first, second = tmp_path / "a", tmp_path / "b"
    _summary(first, "cifar100/kd/one", 0, 60.0)
    _summary(first, "cifar100/kd/one", 1, 62.0)
    _summary(second, "cifar100/kd/two", 0, 50.0)
    code, out, err = _call(capsys, "report", str(first), str(second))
    assert (code, err) == (0, "")
    md, csv_path = first / "report.md", first / "report.csv"
    assert out.endswith(f"\n\nwrote {md} and {csv_path}\n")
    assert md.read_text() + f"\nwrote {md} and {csv_path}\n" == out
    assert not (second / "report.md").exists() and not (second / "report.csv").exists()
    assert (
        "| cifar100/kd/one | kd | resnet32x4 → resnet8x4 | 2 | 61.00 ± 1.41 | – "
        "| 81.00 ± 1.41 | 79.50 | 73.50 (T2) | -12.50 |" in out
    )
    assert (
        "| cifar100/kd/two | kd | resnet32x4 → resnet8x4 | 1 | 50.00 | – "
        "| 70.00 | 79.50 | 73.50 (T2) | -23.50 |" in out
    )
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["experiment"] for r in table] == ["cifar100/kd/one", "cifar100/kd/two"]


def test_report_without_summaries_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders that exist but hold no summary.json: exit 2 and one line naming all of them."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    code, out, err = _call(capsys, "report", str(tmp_path / "x"), str(tmp_path / "y"))
    assert (code, out) == (2, "")
    assert err == (
        f"figkd report: error: no summary.json below {tmp_path / 'x'}, {tmp_path / 'y'}: "
        "have the runs finished?\n"
    )
    assert list(tmp_path.rglob("report.*")) == []


# --------------------------------------------------------------------------- figkd distill

#: a distill run on the bundled digits that finishes in about a second on one CPU thread
DIGITS = [*DIGITS_OVERRIDES, "train.max_steps_per_epoch=2", "schedule.milestones=[0,0,0]"]


def test_distill_teacher_option_is_a_shortcut_for_teacher_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--teacher FILE`` sets teacher.checkpoint; without it the config's value (none) stays."""
    base = ["distill", "loss.name=kd", "teacher.name=resnet32x4", "model.name=resnet8x4"]
    teacher = str(tmp_path / "teacher.pt")
    code, out, err = _call(capsys, *base, "--teacher", teacher, "--print-config")
    assert (code, err) == (0, "")
    cfg = yaml.safe_load(out)
    assert cfg["teacher"]["checkpoint"] == teacher and cfg["teacher"]["name"] == "resnet32x4"
    assert cfg["experiment"] == "cifar100/kd/resnet8x4"
    code, out, err = _call(capsys, *base, "--print-config")
    assert (code, err) == (0, "")
    assert yaml.safe_load(out)["teacher"]["checkpoint"] is None


def test_distill_error_messages_are_exact(capsys: pytest.CaptureFixture[str]) -> None:
    """Plain CE and a teacher-needing method without a teacher: exit 2, one exact line each."""
    assert _call(capsys, "distill", "loss.name=ce") == (
        2,
        "",
        (
            "figkd distill: error: loss 'ce' trains without distillation: use `figkd train`, "
            "or choose a distillation method with loss.name=<kd|figkd|...>\n"
        ),
    )
    assert _call(capsys, "distill", "loss.name=figkd", "model.name=resnet8x4") == (
        2,
        "",
        "figkd distill: error: distillation needs teacher.name (and teacher.checkpoint)\n",
    )


def test_distill_runs_two_seeds_from_a_teacher_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real two-step KD run per seed on digits, teacher given with ``--teacher``.

    Checked against independent facts: the teacher's SHA-256 from ``hashlib``, and each
    accuracy a whole number of the digits test split's 359 images (100 * k / 359).
    """
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)
    torch.save(teacher.state_dict(), tmp_path / "t.pt")
    argv = [*DIGITS, "loss.name=kd", "teacher.name=tiny_cnn", "teacher.args.width=4",
            "output_dir=out", "--teacher", "t.pt", "--seeds", "0", "1"]
    code, out, err = _call(capsys, "distill", *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[2] == "aggregate with: figkd report out/digits/kd/tiny_cnn"
    sha = hashlib.sha256((tmp_path / "t.pt").read_bytes()).hexdigest()
    for seed, line in zip((0, 1), lines[:2], strict=True):
        run = Path("out/digits/kd/tiny_cnn") / f"seed{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["seed"] == seed and summary["method"] == "kd"
        assert summary["teacher"]["sha256"] == sha and summary["teacher"]["checkpoint"] == "t.pt"
        top1 = summary["final"]["test"]["top1"]
        assert top1 * 359 / 100 == pytest.approx(round(top1 * 359 / 100), abs=1e-9)
        assert line == (f"{run}: test top-1 {top1:.2f} "
                        f"(best-val epoch 1: {summary['best']['test']['top1']:.2f})")


# --------------------------------------------------------------------------- figkd models

MACS_NOTE = (
    "\nMACs = torch.utils.flop_counter.FlopCounterMode FLOPs / 2 "
    "(conv and linear multiply-adds; BN, activations and pooling not counted).\n"
)
TABLE_HEAD = "| model | input | classes | params (M) | MACs (M) |\n|---|---|---|---|---|\n"


def test_models_flops_defaults_match_the_published_resnet8x4_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--flops`` with no size or class count: native 32x32 and 100 classes.

    resnet8x4 (RepDistiller: widths 32, 64, 128, 256; one BasicBlock per stage) has 1,233,540
    parameters at 100 classes (RepDistiller's count), by hand: stem 3*32*9 + 64 = 928;
    stage 1 32*64*9 + 64*64*9 + 32*64 + 3*128 = 57,728; stage 2 (x4) 230,144; stage 3 919,040;
    fc 256*100 + 100 = 25,700. MACs: stem 3*32*9*32*32 = 884,736; each stage's two 3x3 convs
    and 1x1 shortcut cost 18,874,368 + 37,748,736 + 2,097,152 = 58,720,256 (channels double
    as the map area quarters); fc 25,600: 884,736 + 3*58,720,256 + 25,600 = 177,071,104.
    """
    params = 928 + 57_728 + 230_144 + 919_040 + 25_700
    macs = 884_736 + 3 * 58_720_256 + 25_600
    assert (params, macs) == (1_233_540, 177_071_104)
    code, out, err = _call(capsys, "models", "resnet8x4", "--flops")
    assert (code, err) == (0, "")
    assert out == TABLE_HEAD + "| resnet8x4 | 32x32 | 100 | 1.23 | 177.07 |\n" + MACS_NOTE


def test_models_input_size_one_is_the_smallest_accepted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--input-size 1`` is measured; 0 and negatives are one exact error line.

    resnet8 (widths 16, 16, 32, 64) at 100 classes: params 464 + 4,672 + 14,528 + 57,728 +
    6,500 = 83,892 (0.08 M). At a 1x1 input every map stays 1x1, so MACs are the conv and fc
    weight counts: 432 + 2*2,304 + (4,608 + 9,216 + 512) + (18,432 + 36,864 + 2,048) + 6,400
    = 83,120 (0.08 M).
    """
    assert 464 + 4_672 + 14_528 + 57_728 + 6_500 == 83_892
    assert 432 + 2 * 2_304 + (4_608 + 9_216 + 512) + (18_432 + 36_864 + 2_048) + 6_400 == 83_120
    code, out, err = _call(capsys, "models", "resnet8", "--flops", "--input-size", "1")
    assert (code, err) == (0, "")
    assert out == TABLE_HEAD + "| resnet8 | 1x1 | 100 | 0.08 | 0.08 |\n" + MACS_NOTE
    for size in ("0", "-3"):
        assert _call(capsys, "models", "resnet8", "--flops", "--input-size", size) == (
            2, "", f"figkd models: error: --input-size must be positive, got {size}\n"
        )


def _paper_warning(measured: str, classes: int) -> str:
    return (
        "figkd models: warning: the paper's Table 15 figures are for 64x64 inputs and 200 "
        f"classes, this table for {measured} and {classes} classes, so 'MACs / paper' is not "
        "like for like; add --input-size 64 --num-classes 200\n"
    )


@pytest.mark.parametrize(
    ("size", "classes", "compare", "warning"),
    [
        ("64", "200", True, ""),  # exactly Table 15's setting: nothing to warn about
        ("64", "100", True, _paper_warning("64x64", 100)),  # right size, wrong classes
        ("32", "200", True, _paper_warning("32x32", 200)),  # right classes, wrong size
        (None, "100", True, _paper_warning("each model's native size", 100)),
        (None, "100", False, ""),  # no --compare-paper: never a warning
        ("64", "100", False, ""),
    ],
)
def test_models_compare_paper_warns_only_outside_table15_setting(
    size: str | None, classes: str, compare: bool, warning: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The Table 15 warning (64x64 inputs, 200 classes: the paper's setting) is printed exactly
    when ``--compare-paper`` is given and the size or the class count differs."""
    argv = ["models", "resnet8", "--flops", "--num-classes", classes]
    argv += [] if size is None else ["--input-size", size]
    argv += ["--compare-paper"] if compare else []
    code, out, err = _call(capsys, *argv)
    assert (code, err) == (0, warning)
    shown = "32x32" if size is None else f"{size}x{size}"
    assert f"| resnet8 | {shown} | {classes} |" in out


def test_models_list_columns_are_name_family_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    """Each line: the name padded to the longest, two spaces, the defining module's short name
    (``resnet_cifar`` for figkd/models/resnet_cifar.py), two spaces, the aliases."""
    from figkd.models import MODELS

    aliases = MODELS.aliases()
    code, out, err = _call(capsys, "models", "resnet8*")
    assert (code, err) == (0, "")
    expected = []
    for name in ("resnet8", "resnet8x4"):  # padded to len("resnet8x4") = 9
        names = ", ".join(sorted(a for a, target in aliases.items() if target == name))
        expected.append(f"{name:<9}  resnet_cifar  {names}".rstrip())
    assert out == "\n".join(expected) + "\n"
    assert "ResNet8x4" in expected[1]


# --------------------------------------------------------------------------- figkd.cli


def test_every_command_is_immutable_and_hashable() -> None:
    """``Command`` is a frozen dataclass: a registered command cannot be changed in place."""
    import dataclasses

    from figkd.cli import discover_commands

    commands = discover_commands()
    assert {"distill", "models", "report"} <= set(commands)
    command = commands["models"]
    assert hash(command) == hash(dataclasses.replace(command))  # equal fields, equal hash
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.help = "changed"  # type: ignore[misc]


def _help_text(capsys: pytest.CaptureFixture[str], name: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_description_is_the_docstring_or_else_the_short_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``models`` has no description: its help line stands in; ``distill`` shows its docstring
    (and not the one-line help, which belongs to ``figkd --help``)."""
    out = _help_text(capsys, "models")
    short_help = "list the model zoo, or print parameters and FLOPs (MACs) per model"
    assert f"[pattern]\n\n{short_help}\n\n" in out
    out = _help_text(capsys, "distill")
    assert "\n\n``figkd distill``: train a student from a frozen teacher" in out
    assert "distil a student from a frozen teacher (KD, FiGKD, ...) from a config" not in out


def test_overrides_after_a_config_and_options_join_the_config_items(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``figkd train CFG --epochs 3 k=v k=v``: argparse leaves the trailing overrides over;
    they must be added after the config file, not replace it."""
    argv = ["train", "configs/cifar100/student/shufflev1.yaml", "--epochs", "3",
            "optim.momentum=0.8", "train.seed=7", "--print-config"]
    code, out, err = _call(capsys, *argv)
    assert (code, err) == (0, "")
    cfg = yaml.safe_load(out)
    assert cfg["experiment"] == "cifar100/student/shufflev1"  # the config file still counts
    assert cfg["model"]["name"] == "ShuffleV1"
    assert (cfg["optim"]["momentum"], cfg["train"]["seed"], cfg["train"]["epochs"]) == (0.8, 7, 3)


@pytest.mark.parametrize("token", ["other.yaml", "-x=1", "a-b=1", "no_equals"])
def test_trailing_tokens_that_are_not_overrides_are_rejected(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After ``CFG --epochs 3`` only ``key=value`` with a dotted identifier key may follow: a
    second path, an option-like or non-identifier key, or a bare word is argparse's error."""
    with pytest.raises(SystemExit) as info:
        main(["train", "configs/cifar100/student/shufflev1.yaml", "--epochs", "3", token,
              "--print-config"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith(f"figkd: error: unrecognized arguments: {token}\n")


def test_a_commands_nonzero_exit_code_reaches_the_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``main`` returns what the command returns: a second distill into a finished run folder
    (no --resume, no --overwrite) is exit 2 with one error line, and the run is left alone."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", num_classes=10, in_channels=1, width=4)
    torch.save(teacher.state_dict(), tmp_path / "t.pt")
    argv = ["distill", *DIGITS, "loss.name=kd", "teacher.name=tiny_cnn", "teacher.args.width=4",
            "output_dir=out", "--teacher", "t.pt"]
    assert _call(capsys, *argv)[0] == 0
    summary = Path("out/digits/kd/tiny_cnn/seed0/summary.json")
    before = summary.read_bytes()
    assert _call(capsys, *argv) == (
        2,
        "",
        (
            "figkd distill: error: out/digits/kd/tiny_cnn/seed0 already holds a run; pass "
            "--resume to continue it, --overwrite to start again, or choose another experiment "
            "name\n"
        ),
    )
    assert summary.read_bytes() == before


def test_report_on_one_summary_file_writes_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RUNS may name a summary.json itself (find_summaries accepts it); without ``--out`` the
    report goes to that run's folder. This used to crash: mkdir on the summary.json path."""
    run = _summary(tmp_path, "cifar100/kd/single", 4, 66.5)
    code, out, err = _call(capsys, "report", str(run / "summary.json"))
    assert (code, err) == (0, "")
    assert out.endswith(f"\nwrote {run / 'report.md'} and {run / 'report.csv'}\n")
    assert "| cifar100/kd/single | kd | resnet32x4 → resnet8x4 | 1 | 66.50 |" in out
    assert json.loads((run / "summary.json").read_text())["seed"] == 4  # left as it was
