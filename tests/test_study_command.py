"""``figkd study``'s command layer: the warning, the data branch, the recorded command, the wall
time and the exit code, with the training itself replaced by a recorder.

The study's scheduling and tables are tested in ``test_study.py``; here ``run_study`` is a fake
that records what the command handed it and returns a manifest the test chose, so each case
runs in well under a second.  Expected values are written by hand (the command line a user
would type, the subset folder's documented name) or measured around the call (wall time).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import figkd.analysis.study as S
from figkd.cli import main
from figkd.commands.study import canonical_command, configure
from figkd.data import synthetic


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


# --------------------------------------------------------------------------- recorded command


@pytest.mark.parametrize(
    "argv,expected",
    [
        ((), "figkd study --tier smoke"),
        # defaults are left out, so the recorded command is the one a user would type
        (("--out", "runs/study", "--device", "auto", "--amp", "none"), "figkd study --tier smoke"),
        (("--out", "my runs", "--device", "cpu"),
         "figkd study --tier smoke --out 'my runs' --device cpu"),
        (
            ("train.channels_last=true", "--tier", "short", "--amp", "bf16", "--device", "cuda",
             "--seeds", "0", "1", "--parallel", "4", "--methods", "ce", "figkd"),
            (
                "figkd study train.channels_last=true --tier short --seeds 0 1 --methods ce figkd "
                "--parallel 4 --device cuda --amp bf16"
            ),
        ),
        (("--teacher-epochs", "2", "--test-per-class", "5"),
         "figkd study --tier smoke --teacher-epochs 2 --test-per-class 5"),
        (("--parallel", "12", "--first", "kd", "figkd", "--methods", "ce", "kd", "figkd"),
         "figkd study --tier smoke --methods ce kd figkd --first kd figkd --parallel 12"),
    ],
)
def test_recorded_command_repeats_the_study(argv: tuple[str, ...], expected: str) -> None:
    args = _args(*argv)
    assert canonical_command(args) == expected
    # pasted back into a shell, it parses to the same options (overrides are not swallowed by
    # a list option such as --methods)
    again = _args(*shlex.split(expected)[2:])
    assert vars(again) == vars(args)


@pytest.mark.parametrize(
    "option,named",
    [("--methods", "unknown method(s) train.channels_last=true"),
     ("--ablations", "unknown ablation 'train.channels_last=true'")],
)
def test_an_override_after_a_list_option_is_named_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, named: str
) -> None:
    first = "ce" if option == "--methods" else "bands"
    argv = ["study", "--out", str(tmp_path), option, first, "train.channels_last=true"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err
    assert f"KEY=VALUE overrides go before {option}" in err


# --------------------------------------------------------------------------- run() around a fake


@pytest.fixture()
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))
    return synthetic.write_fake_tiny_imagenet(
        tmp_path / "data", num_classes=3, train_per_class=4, val_per_class=2, size=32
    )


class Recorder:
    """Stands in for ``run_study`` and wraps ``write_study_report``: keeps what they were given."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.studies: list[S.Study] = []
        self.walls: list[float | None] = []

    def run_study(self, study: S.Study, say: Any, gpus: Any = None) -> dict[str, Any]:
        self.studies.append(study)
        return {"runs": [{"status": s} for s in self.statuses]}


@pytest.fixture()
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    record = Recorder(["trained", "reused"])
    real_report = S.write_study_report

    def report(study: S.Study, manifest: Any, command: str, wall_s: float | None) -> Path:
        record.walls.append(wall_s)
        return real_report(study, manifest, command, wall_s)

    monkeypatch.setattr(S, "run_study", record.run_study)
    monkeypatch.setattr(S, "write_study_report", report)
    return record


def _study_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "study", "--data-root", str(root), "--out", str(out), "--epochs", "1",
        "--teacher-epochs", "1", "--train-per-class", "2", "--test-per-class", "1",
        "--seeds", "0", "--methods", "ce", *extra,
    ]


@pytest.mark.parametrize(
    "tier,device,extra,cuda,warned",
    [
        ("short", "auto", (), False, True),
        ("short", "cuda", (), False, True),
        ("short", "cpu", (), False, False),  # asked for the CPU: nothing to warn about
        ("short", "auto", (), True, False),
        ("smoke", "auto", (), False, False),  # sized for the CPU
        ("short", "auto", ("--plan",), False, False),  # trains nothing
        ("short", "auto", ("--report-only",), False, False),
    ],
)
def test_a_gpu_tier_on_a_machine_without_cuda_warns_once_before_training(
    fake_root: Path,
    tmp_path: Path,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tier: str,
    device: str,
    extra: tuple[str, ...],
    cuda: bool,
    warned: bool,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    argv = _study_argv(fake_root, tmp_path / "out", "--tier", tier, "--device", device, *extra)
    assert main(argv) == 0
    err = capsys.readouterr().err
    warning = f"the {tier} tier is sized for a GPU and none is available; it will run on the CPU"
    assert err.count(warning) == (1 if warned else 0)


def test_a_tiny_imagenet_study_trains_on_the_per_class_subset(
    fake_root: Path, tmp_path: Path, recorder: Recorder
) -> None:
    """The subset is a folder named after its source and its per-class counts, under --out."""
    out = tmp_path / "out"
    assert main(_study_argv(fake_root, out)) == 0
    (study,) = recorder.studies
    subset = out / "data" / f"{fake_root.name}-train2-test1"
    assert study.data_root == subset.resolve()
    assert sorted(p.name for p in (subset / "train").iterdir()) == sorted(
        p.name for p in (fake_root / "train").iterdir()
    )
    per_class = [len(list((subset / "train" / w / "images").iterdir()))
                 for w in (fake_root / "wnids.txt").read_text().split()]
    assert per_class == [2, 2, 2]


def test_a_packed_dataset_is_read_in_place_without_a_subset_folder(
    fake_root: Path, tmp_path: Path, recorder: Recorder
) -> None:
    """``--dataset uint8-shards`` takes per-class limits as reader options: no subset copy."""
    packed = tmp_path / "packed"
    assert main(["pack", "tiny-imagenet", "--data-root", str(fake_root), "--size", "32",
                 "--out", str(packed)]) == 0
    out = tmp_path / "out"
    assert main(_study_argv(packed, out, "--dataset", "uint8-shards")) == 0
    (study,) = recorder.studies
    assert study.data_root == packed.resolve()
    assert not (out / "data").exists()


def test_ablations_are_added_after_the_main_methods(
    fake_root: Path, tmp_path: Path, recorder: Recorder
) -> None:
    out = tmp_path / "out"
    assert main(_study_argv(fake_root, out, "--ablations", "bands")) == 0
    (study,) = recorder.studies
    assert [m.name for m in study.methods] == ["ce", "figkd_bands-low", "figkd_bands-both"]


def test_the_wall_time_is_the_command_s_own_and_absent_for_a_report_only(
    fake_root: Path, tmp_path: Path, recorder: Recorder
) -> None:
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(_study_argv(fake_root, out)) == 0
    measured = time.perf_counter() - started
    assert main(_study_argv(fake_root, out, "--report-only")) == 0
    trained, report_only = recorder.walls
    assert trained is not None and 0.0 < trained <= measured
    assert report_only is None
    assert len(recorder.studies) == 1  # --report-only trains nothing


@pytest.mark.parametrize("statuses,code", [(["trained", "failed", "failed"], 1), (["reused"], 0)])
def test_failed_runs_make_the_command_fail_and_say_how_many(
    fake_root: Path,
    tmp_path: Path,
    recorder: Recorder,
    capsys: pytest.CaptureFixture[str],
    statuses: list[str],
    code: int,
) -> None:
    recorder.statuses = statuses
    assert main(_study_argv(fake_root, tmp_path / "out")) == code
    err = capsys.readouterr().err
    assert ("figkd study: 2 run(s) failed: see study.json" in err) is (code == 1)


# --------------------------------------------------------------------------- --first


def test_first_keeps_this_studys_methods_and_names_the_rest(
    fake_root: Path, tmp_path: Path, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """The device script always passes ``--first kd figkd``; a session that runs only CE and KD
    must still start, with FiGKD left out of the first group and said so."""
    argv = _study_argv(fake_root, tmp_path / "out", "kd", "--first", "kd", "figkd",
                       "--device", "cpu")
    assert main(argv) == 0
    assert recorder.studies[-1].first == ["kd"]
    assert "--first figkd: not in this study's methods, skipped" in capsys.readouterr().out


def test_first_refuses_a_name_of_no_method(
    fake_root: Path, tmp_path: Path, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _study_argv(fake_root, tmp_path / "out", "--first", "figdk", "--device", "cpu")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--first: unknown method(s) figdk; choose from ce" in err
    assert not recorder.studies
