"""``figkd eval`` on figkd checkpoints and on plain state dicts: splits, shortcuts, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_OVERRIDES

from figkd.cli import main
from figkd.engine import load_weights_only


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of tiny_cnn on digits with a 20 % validation split; its run folder."""
    out = tmp_path_factory.mktemp("eval")
    argv = ["train", *DIGITS_OVERRIDES, "data.val_fraction=0.2", "train.max_steps_per_epoch=3",
            f"output_dir={out}", "experiment=run"]
    assert main(argv) == 0
    return out / "run" / "seed0"


@pytest.fixture(scope="module")
def bare_weights(trained: Path) -> Path:
    """The same weights as a plain state dict, as other code bases save them: no config."""
    path = trained.parent / "bare.pt"
    torch.save(load_weights_only(trained / "checkpoints" / "last.pt")["model"], path)
    return path


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip()


def test_json_result_matches_the_runs_own_test_score(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json``: indented JSON whose top-1 is the one the trainer recorded for the epoch."""
    assert main(["eval", str(trained / "checkpoints" / "last.pt"), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    summary = json.loads((trained / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["final"]["test"]["top1"])
    assert (result["split"], result["dataset"], result["model"]) == ("test", "digits", "tiny_cnn")
    assert out == json.dumps(result, indent=2) + "\n"


def test_val_split_is_the_one_carved_at_training(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint's config carries ``val_fraction`` and ``val_seed``: the same images."""
    assert main(["eval", str(trained / "checkpoints" / "last.pt"), "--split", "val",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((trained / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["best"]["val"]["top1"])


def test_val_split_without_a_carved_val_set_is_refused(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(trained / "checkpoints" / "last.pt"), "data.val_fraction=0",
            "--split", "val"]
    assert main(argv) == 2
    assert _error(capsys) == "figkd eval: error: --split val needs data.val_fraction > 0"


def test_a_bare_state_dict_needs_the_architecture(
    bare_weights: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(bare_weights), "--dataset", "digits"]) == 2
    assert _error(capsys) == (
        f"figkd eval: error: {bare_weights} records no config: name the architecture with "
        "--model and the dataset with --dataset"
    )
    # model.name as an override names it as well as --model does
    argv = ["eval", str(bare_weights), "model.name=tiny_cnn", "model.args.width=4",
            "--dataset", "digits", "--device", "cpu", "--json"]
    assert main(argv) == 0
    bare = json.loads(capsys.readouterr().out)
    assert main(["eval", str(trained / "checkpoints" / "last.pt"), "--json"]) == 0
    assert bare["top1"] == json.loads(capsys.readouterr().out)["top1"]


def test_data_root_shortcut_is_where_the_dataset_is_looked_for(
    bare_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-cifar-here"
    argv = ["eval", str(bare_weights), "--model", "tiny_cnn", "--dataset", "cifar100",
            "--data-root", str(missing)]
    assert main(argv) == 2
    assert f"{missing} (missing)" in _error(capsys)


def test_a_checkpoint_without_a_data_folder_takes_its_run_folders(
    fake_cifar100: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study's ``teacher.pt`` keeps no paths (its bytes must not depend on where it was
    trained); evaluated in its run folder, it reads the data the run's config.yaml names."""
    from conftest import tiny_run_overrides

    from figkd.analysis.study import teacher_weights

    argv = ["train", "configs/cifar100/teacher/resnet32x4.yaml", "model.name=tiny_cnn",
            "model.args={width: 4}", *tiny_run_overrides(fake_cifar100),
            f"output_dir={tmp_path}", "experiment=teacher"]
    assert main(argv) == 0
    run = tmp_path / "teacher" / "seed0"
    portable = teacher_weights(run)
    assert load_weights_only(portable)["config"]["data"]["root"] is None
    capsys.readouterr()
    assert main(["eval", str(portable), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"figkd eval: data.root={fake_cifar100} (from {run.resolve() / 'config.yaml'})"
    )
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(captured.out)["top1"] == pytest.approx(summary["final"]["test"]["top1"])
    # --data-root still wins, and outside a run folder nothing is guessed
    missing = tmp_path / "elsewhere"
    assert main(["eval", str(portable), "--data-root", str(missing)]) == 2
    assert f"{missing} (missing)" in _error(capsys)
    for loose in (tmp_path / "teacher.pt", run / "exported" / "teacher.pt"):
        # the second one's grandparent is the run folder, but it is no checkpoints/ file
        loose.parent.mkdir(exist_ok=True)
        loose.write_bytes(portable.read_bytes())
        assert main(["eval", str(loose)]) == 2
        error = _error(capsys)
        assert "figkd eval: data.root=" not in error and "Set data.root=<folder>" in error
    # a run folder whose config names another dataset lends nothing
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("dataset: cifar100", "dataset: digits"))
    assert main(["eval", str(portable)]) == 2
    error = _error(capsys)
    assert "figkd eval: data.root=" not in error and "Set data.root=<folder>" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_shortcut_reaches_the_config(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(trained / "checkpoints" / "last.pt"), "--device", "cuda"]) == 2
    assert "no GPU is visible; use train.device=cpu" in _error(capsys)
