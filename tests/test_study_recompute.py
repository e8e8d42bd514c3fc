"""A study's finished students outlive its checkout when the teacher can be retrained.

Weights are never committed, so a new checkout has no ``teacher.pt``.  Finished students'
text records (``figkd state records``) come back with ``figkd state import``; they count
only while the retrained teacher's ``teacher.pt`` has the SHA-256 their summaries pin.  On a
CPU training is reproducible, so these tests show the whole path: the same teacher retrained
in another folder, from data at another path, gives the same file (``teacher.pt`` holds no
paths), the records are skipped rather than retrained, and a record pinned to another
teacher is refused, left out of the table, or set aside and retrained on request.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import unit_tier

from figkd.analysis import study as S
from figkd.analysis import study_state as state
from figkd.cli import main
from figkd.config import Config, ConfigError, config_from_dict, config_to_dict, validate_config
from figkd.data import synthetic
from figkd.engine.seeding import set_deterministic
from figkd.models.checkpoint import file_sha256

QUIET: dict[str, Any] = {"say": lambda _: None}
METHODS = [m for m in S.main_methods(2) if m.name in ("ce", "kd", "figkd")]


def _tier() -> S.Tier:
    return unit_tier(epochs=2, teacher_epochs=2)


PAIR = _tier().pairs[0].name


def _study(out: Path, data: Path, **options) -> S.Study:
    return S.plan_study(_tier(), out, data, methods=METHODS, device="cpu",
                        deterministic_teacher=True, **options)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _restore_determinism() -> object:
    """The runs switch torch's global deterministic mode; leave it as it was."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same images at two paths (two checkouts), under the same folder name."""
    first = synthetic.write_fake_tiny_imagenet(
        tmp_path_factory.mktemp("data_a"), num_classes=5, train_per_class=8, val_per_class=3,
        size=32,
    )
    second = tmp_path_factory.mktemp("data_b") / first.name
    shutil.copytree(first, second)
    return first, second


@pytest.fixture(scope="module")
def original(data_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Checkout A: the whole study, then its records (what would be committed)."""
    root = tmp_path_factory.mktemp("checkout_a")
    study = _study(root / "study", data_dirs[0])
    manifest = S.run_study(study, **QUIET)
    assert sorted(r["status"] for r in manifest["runs"]) == ["trained"] * 4
    records = root / "records"
    written = state.export_records(root / "study", records, **QUIET)
    assert len(written) == 4  # the teacher's record too: evidence, though it cannot import
    return {"study": study, "records": records, "manifest": manifest}


def _pair_dir(study: S.Study) -> Path:
    return study.out / study.tier.pairs[0].name


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_the_teacher_retrained_in_another_checkout_keeps_the_students_records(
    original: dict, data_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    first: S.Study = original["study"]
    assert not any(p.suffix == ".pt" for p in original["records"].rglob("*"))
    second = _study(tmp_path / "study", data_dirs[1])
    report = state.import_state(original["records"], tmp_path / "study", **QUIET)
    assert len(report.taken) == 3 and len(report.incomplete) == 1  # no weights: no teacher

    manifest = S.run_study(second, **QUIET)
    statuses = {r["run"].split("/")[-1]: r["status"] for r in manifest["runs"]}
    assert statuses == {"teacher seed0": "trained", "ce seed0": "skipped",
                        "kd seed0": "skipped", "figkd seed0": "skipped"}
    a, b = (s.teacher_checkpoint(s.tier.pairs[0]) for s in (first, second))
    assert file_sha256(a) == file_sha256(b) == manifest["teachers"][PAIR]["sha256"]
    teacher = _summary(second.teachers[PAIR].run_dir)
    assert teacher["deterministic"] == "warn-only"

    S.write_study_report(second, manifest, "figkd study --tier unit", 1.0)
    S.write_study_report(first, original["manifest"], "figkd study --tier unit", 1.0)
    rows = [line for line in (second.out / "study.md").read_text().splitlines()
            if line.startswith("| ") and "±" not in line and "run" not in line]
    want = [line for line in (first.out / "study.md").read_text().splitlines()
            if line.startswith("| ") and "±" not in line and "run" not in line]
    strip = [line.rsplit("|", 2)[0] for line in rows]  # time / run differs by machine load
    assert strip == [line.rsplit("|", 2)[0] for line in want] and len(strip) >= 4
    assert "left out of the tables" not in (second.out / "study.md").read_text()


def test_the_plan_before_the_teacher_retrains_names_the_checksum_each_record_needs(
    original: dict, data_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Records imported without their teacher are neither kept nor stale until the teacher
    has trained again: the plan says which SHA-256 keeps them, and does not call them stale."""
    second = _study(tmp_path / "study", data_dirs[1], write=False)
    state.import_state(original["records"], tmp_path / "study", **QUIET)
    jobs = S.student_jobs(second, {PAIR: S.PENDING_TEACHER}, write=False)
    lines = S.describe_plan(second, [*second.teachers.values(), *jobs]).splitlines()[1:]
    sha = original["manifest"]["teachers"][PAIR]["sha256"]
    assert lines[0].split()[:2] == ["new", "train"]  # the teacher
    by_method = {line.split(".yaml")[0].rsplit("/", 1)[-1]: line for line in lines[1:]}
    assert by_method["ce"].split()[0] == "finished" and "(" not in by_method["ce"]
    for method in ("kd", "figkd"):
        assert by_method[method].split()[0] == "finished"
        assert by_method[method].endswith(
            f"(kept if the teacher trains again to SHA-256 {sha[:12]}…; otherwise stale)")
    second.replace_stale = True
    again = S.describe_plan(second, jobs)
    assert again.count("otherwise stale, set aside and trained again)") == 2
    # once the teacher is there its checksum decides, and the plan says which way
    known = S.describe_plan(second, S.student_jobs(second, {PAIR: sha}, write=False))
    assert "kept if" not in known and known.count("  finished distill ") == 2


def test_teacher_pt_holds_no_paths_so_its_bytes_follow_the_weights(original: dict) -> None:
    study: S.Study = original["study"]
    payload = torch.load(study.teacher_checkpoint(study.tier.pairs[0]), weights_only=True)
    config = payload["config"]
    default = config_to_dict(Config())
    assert config["output_dir"] == default["output_dir"] and config["data"]["root"] is None
    assert config["train"]["device"] == default["train"]["device"]
    assert config["experiment"] is None and config["train"]["num_threads"] is None
    # what the weights depend on stays: the model, the recipe, the deterministic switches
    assert config["model"]["name"] == "tiny_cnn" and config["model"]["args"] == {"width": 8}
    assert config["train"]["epochs"] == 2 and config["data"]["batch_size"] == 16
    assert config["train"]["deterministic"] and config["train"]["deterministic_warn_only"]
    validate_config(config_from_dict(config))


def test_portable_config_resets_only_execution_keys() -> None:
    data = config_to_dict(Config())
    data["output_dir"], data["data"]["root"] = "/somewhere/runs", "/data/tiny"
    data["train"].update(device="cuda:1", num_threads=3, epochs=7)
    data["teacher"].update(cache="auto", cache_batch_size=1024)
    data["optim"]["lr"] = 0.2
    out = S.portable_config(data)
    assert out["output_dir"] == "runs" and out["data"]["root"] is None
    assert out["train"]["device"] == "auto" and out["train"]["num_threads"] is None
    assert out["teacher"]["cache"] == "none" and out["teacher"]["cache_batch_size"] is None
    assert out["train"]["epochs"] == 7 and out["optim"]["lr"] == 0.2
    assert data["output_dir"] == "/somewhere/runs"  # the input is not changed


@pytest.fixture()
def tampered(original: dict, data_dirs: tuple[Path, Path], tmp_path: Path) -> S.Study:
    """Checkout A's study copied, with KD's record pinned to another teacher file (what a
    record from a session whose teacher came out differently looks like)."""
    shutil.copytree(original["study"].out.parent, tmp_path / "study")
    study = _study(tmp_path / "study", data_dirs[0])
    kd = _pair_dir(study) / "kd" / "seed0"
    summary = _summary(kd)
    summary["teacher"]["sha256"] = "0" * 64
    (kd / "summary.json").write_text(json.dumps(summary))
    return study


def test_a_record_of_another_teacher_fails_and_is_left_out_of_the_table(
    tampered: S.Study,
) -> None:
    manifest = S.run_study(tampered, **QUIET)
    kd = next(r for r in manifest["runs"] if r["run"].endswith("kd seed0")
              and "figkd" not in r["run"])
    assert kd["status"] == "failed" and "another teacher" in kd["error"]
    sha = file_sha256(tampered.teacher_checkpoint(tampered.tier.pairs[0]))
    assert "--replace-stale" in kd["error"] and sha in kd["error"]
    # why a carried record goes stale: the CPU kernels' instruction set, or the GPU model
    assert "cpu_capability AVX2 against AVX512" in kd["error"]
    assert "another GPU model" in kd["error"]
    S.write_study_report(tampered, manifest, "figkd study --tier unit", 1.0)
    text = (tampered.out / "study.md").read_text()
    bullets = text.split("\n\nTest accuracy")[0]  # among the provenance bullets
    assert "- left out of the tables: 1 finished run(s)" in bullets
    assert "- finished runs: 3," in bullets  # teacher, CE, FiGKD: not the stale KD
    assert {row["method"] for row in _report_rows(tampered)} == {"ce", "figkd"}  # no kd
    assert not any(line.startswith("| KD |") for line in text.splitlines())
    assert any(line.startswith("| FiGKD") for line in text.splitlines())


def test_the_plan_names_a_stale_record_and_what_becomes_of_it(tampered: S.Study) -> None:
    sha = file_sha256(tampered.teacher_checkpoint(tampered.tier.pairs[0]))
    jobs = S.student_jobs(tampered, {PAIR: sha}, write=False)
    lines = S.describe_plan(tampered, jobs).splitlines()[1:]
    stale = [line for line in lines if line.lstrip().startswith("stale")]
    assert len(stale) == 1 and stale[0].endswith("(fails: --replace-stale trains it again)")
    assert "/kd.yaml" in stale[0]
    assert sum(line.lstrip().startswith("finished") for line in lines) == 2  # CE, FiGKD
    tampered.replace_stale = True
    again = S.describe_plan(tampered, jobs)
    assert "stale" in again and again.count("(set aside and trained again)") == 1


def test_replace_stale_sets_the_record_aside_and_trains_it_again(
    tampered: S.Study, original: dict
) -> None:
    tampered.replace_stale = True
    manifest = S.run_study(tampered, **QUIET)
    statuses = {r["run"].split("/")[-1]: r["status"] for r in manifest["runs"]}
    assert statuses == {"teacher seed0": "skipped", "ce seed0": "skipped",
                        "kd seed0": "trained", "figkd seed0": "skipped"}
    kd = _pair_dir(tampered) / "kd" / "seed0"
    sha = manifest["teachers"][PAIR]["sha256"]
    assert _summary(kd)["teacher"]["sha256"] == sha
    aside = tampered.out / S.STALE / PAIR / "kd" / "seed0.1"
    assert _summary(aside)["teacher"]["sha256"] == "0" * 64
    # retrained from the same teacher, it lands where the original did
    want = _summary(_pair_dir(original["study"]) / "kd" / "seed0")
    assert _summary(kd)["final"]["test"] == want["final"]["test"]
    assert aside not in state.find_run_dirs(tampered.out.parent)  # hidden from `figkd state`
    # the engine's report.csv counts the retrained seed only, not the one set aside
    S.write_study_report(tampered, manifest, "figkd study --tier unit", 1.0)
    kd_row = next(row for row in _report_rows(tampered) if row["method"] == "kd")
    assert (kd_row["n"], kd_row["seeds"]) == ("1", "0")
    assert float(kd_row["top1_last_mean"]) == want["final"]["test"]["top1"]


def _report_rows(study: S.Study) -> list[dict[str, str]]:
    import csv

    with open(study.out / "report.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_find_summaries_skips_hidden_folders(tmp_path: Path) -> None:
    from figkd.engine.report import find_summaries

    for where in ("exp/seed0", ".stale/exp/seed0.1", "exp/.state-incoming-x/seed0"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "summary.json").write_text(json.dumps({"where": where}))
    assert [s["where"] for s in find_summaries([tmp_path])] == ["exp/seed0"]
    hidden = tmp_path / ".stale" / "exp" / "seed0.1"  # named directly, it is read
    assert [s["where"] for s in find_summaries([hidden])] == [".stale/exp/seed0.1"]
    assert [s["where"] for s in find_summaries([tmp_path / ".stale"])] == [".stale/exp/seed0.1"]


def test_set_aside_numbers_repeated_moves(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for n in (1, 2):
        run = out / "pair" / "kd" / "seed0"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(str(n))
        moved = S.set_aside(run, out)
        assert moved == out / ".stale" / "pair" / "kd" / f"seed0.{n}"
        assert (moved / "summary.json").read_text() == str(n) and not run.exists()


def test_distilled_from() -> None:
    assert S.distilled_from({"teacher": {"sha256": "a"}}, "a")
    assert not S.distilled_from({"teacher": {"sha256": "a"}}, "b")
    assert S.distilled_from({"teacher": None}, "b")  # CE: no teacher to disagree with
    assert S.distilled_from({"teacher": {"sha256": "a"}}, None)  # no teacher here yet


def test_deterministic_teacher_reaches_only_the_teacher_and_its_key(
    data_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    plain = S.plan_study(_tier(), tmp_path, data_dirs[0], methods=METHODS, device="cpu",
                         write=False)
    fixed = _study(tmp_path, data_dirs[0], write=False)
    t_plain, t_fixed = (s.teachers[PAIR].config for s in (plain, fixed))
    assert (t_plain.train.deterministic, t_plain.train.deterministic_warn_only) == (False, False)
    assert (t_fixed.train.deterministic, t_fixed.train.deterministic_warn_only) == (True, True)
    assert t_plain.experiment != t_fixed.experiment  # another teacher: another folder
    students = S.student_jobs(fixed, {PAIR: "f" * 64}, write=False)
    assert not any(job.config.train.deterministic for job in students)


def test_warn_only_needs_deterministic() -> None:
    cfg = Config()
    cfg.train.deterministic_warn_only = True
    with pytest.raises(ConfigError, match="also set train.deterministic=true"):
        validate_config(cfg)
    cfg.train.deterministic = True
    validate_config(cfg)


def test_set_deterministic_warn_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_deterministic(True, warn_only=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic(True)
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic(False, warn_only=True)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


def test_cli_flags_reach_the_study_and_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict = {}

    def plan(*args, **kwargs):  # test double
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(S, "plan_study", plan)
    monkeypatch.setattr(S, "locate_dataset", lambda tier, root: tmp_path)
    with pytest.raises(SystemExit):
        main(["study", "--tier", "smoke", "--dataset", "uint8-shards", "--data-root",
              str(tmp_path), "--replace-stale", "--deterministic-teacher", "--plan"])
    assert seen["replace_stale"] and seen["deterministic_teacher"]

    import argparse

    from figkd.commands.study import canonical_command, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--tier", "short", "--deterministic-teacher", "--replace-stale"])
    assert canonical_command(args) == "figkd study --tier short --deterministic-teacher"
