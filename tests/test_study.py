"""``figkd study``: tier definitions, table math, resumability, and the smoke tier (slow)."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import unit_tier

from figkd.analysis import study as S
from figkd.cli import main
from figkd.data import synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_TAR = REPO.parent / "shared" / "data" / "tiny-imagenet-100a.tar"


# --------------------------------------------------------------------------- tiers


def test_milestones_scale_down_with_floor() -> None:
    # 150/180/210 of 240 scaled to 60 are 37.5/45/52.5; the engine decays for epoch > m, and
    # for whole epochs "e > 37.5" is "e > 37": flooring keeps the schedule exactly.
    assert S.scale_milestones(60) == [37, 45, 52]
    assert S.scale_milestones(240) == [150, 180, 210]
    assert S.scale_milestones(6) == [3, 4, 5]
    assert S.scale_milestones(1) == [1, 1, 1]
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        S.scale_milestones(0)
    assert S.scale_warmup(60) == 5 and S.scale_warmup(240) == 20 and S.scale_warmup(6) == 1


def test_tier_definitions() -> None:
    short, paper, smoke = S.TIERS["short"], S.TIERS["paper"], S.TIERS["smoke"]
    assert short.epochs == short.teacher_epochs == 60 and short.milestones == [37, 45, 52]
    assert [(p.teacher, p.student) for p in short.pairs] == [("resnet32x4", "resnet8x4")]
    assert paper.epochs == 240 and paper.milestones == [150, 180, 210]
    assert [(p.teacher, p.student) for p in paper.pairs] == [
        ("resnet32x4", "resnet8x4"),
        ("vgg13", "vgg8"),
    ]
    for tier in S.TIERS.values():
        assert tier.dataset == "tiny-imagenet" and tier.preset == "tiny-imagenet-32"
        assert tier.seeds == (0, 1, 2) and tier.batch_size == 64 and tier.val_fraction == 0.1
    assert short.train_per_class is None and paper.train_per_class is None  # all 500 per class
    assert smoke.train_per_class and smoke.test_per_class and not smoke.gpu
    assert short.gpu and paper.gpu and short.parallel > 1
    names = [m.name for m in S.main_methods(60)]
    assert names == ["ce", "kd", "dkd", "dist", "mlkd", "kd_ls", "figkd"]
    by_name = {m.name: m for m in S.main_methods(60)}
    assert by_name["kd_ls"].loss == "kd" and by_name["kd_ls"].args == {"standardize": True}
    assert by_name["dkd"].args == {"warmup_epochs": 5}


def test_ablations_are_figkd_options() -> None:
    from figkd.losses import build_loss

    methods = S.ablation_methods(["all"])
    assert {m.group for m in methods} == set(S.ABLATIONS)
    for m in methods:
        assert m.loss == "figkd"
        build_loss("figkd", **m.args)  # every variant is a valid FiGKD option set
    options = {(m.group, json.dumps(m.args, sort_keys=True)) for m in methods}
    assert ("bands", '{"bands": "low"}') in options
    assert ("transform", '{"transform": "1d"}') in options
    assert {m.args.get("level") for m in methods if m.group == "level"} == {2, 3}
    assert {m.args.get("wavelet") for m in methods if m.group == "wavelet"} == {"db2", "bior1.3"}
    with pytest.raises(ValueError, match="unknown ablation"):
        S.ablation_methods(["colour"])


def test_single_ablation_rows_are_chosen_as_group_equals_value() -> None:
    """Confirming a pick on new seeds needs its row alone, not its whole group."""
    methods = S.ablation_methods(["beta=0.5", "matched=bior1.3-beta1.75", "transform"])
    assert [(m.name, m.label, m.group, m.args) for m in methods] == [
        ("figkd_beta-0.5", "FiGKD beta=0.5", "beta", {"beta": 0.5}),
        ("figkd_matched-bior1.3-beta1.75", "FiGKD matched=bior1.3-beta1.75", "matched",
         {"wavelet": "bior1.3", "beta": 1.75}),
        ("figkd_transform-1d", "FiGKD transform=1d", "transform", {"transform": "1d"}),
    ]
    # a row named again, or inside a whole group also asked for, runs once
    assert [m.name for m in S.ablation_methods(["beta=1", "beta", "beta=1"])] == [
        "figkd_beta-1", "figkd_beta-0.125", "figkd_beta-0.25", "figkd_beta-0.5",
        "figkd_beta-4", "figkd_beta-8",
    ]
    with pytest.raises(ValueError, match=r"ablation beta has no row '3'; choose from "
                                         r"0\.125, 0\.25, 0\.5, 1, 4, 8"):
        S.ablation_methods(["beta=3"])
    with pytest.raises(ValueError, match=r"unknown ablation 'loss\.beta=3'.*GROUP=VALUE\).*"
                                         "KEY=VALUE overrides go before --ablations"):
        S.ablation_methods(["loss.beta=3"])


def test_per_pair_loss_options_equal_the_pairs_configs(tmp_path: Path) -> None:
    """Each baseline of a tier pair runs with the loss options of that pair's CIFAR-100
    config (DKD's beta, KD + LS's temperature and weight), defaults included."""
    from figkd.config import load_config

    configs = REPO / "configs" / "cifar100"
    checked = 0
    for tier in ("short", "paper"):
        study = S.plan_study(S.TIERS[tier], tmp_path / tier, tmp_path, device="cpu")
        jobs = S.student_jobs(study, {p.name: "0" * 64 for p in study.tier.pairs}, write=False)
        for job in jobs:
            assert job.method is not None  # only a teacher's job has no method
            path = configs / job.method.name / f"{job.pair.teacher}_{job.pair.student}.yaml"
            if job.seed or job.method.name == "ce" or not path.is_file():
                continue
            want = _loss_of(load_config(path))
            got = _loss_of(job.config)
            for option in ("beta", "temperature", "kd_weight", "ce_weight", "alpha",
                           "standardize", "inter_weight", "intra_weight"):
                if hasattr(want, option):
                    assert getattr(got, option) == getattr(want, option), (tier, path, option)
            checked += 1
    assert checked == 6 + 2 * 6  # short: 1 pair; paper: 2 pairs; 6 distilling methods each
    by_method = {_method_name(j): j.config.loss.args for j in jobs if j.pair.teacher == "vgg13"}
    assert by_method["dkd"]["beta"] == 6.0 and by_method["kd_ls"]["temperature"] == 3.0


def _method_name(job: S.Job) -> str:
    """The method of a student job (only a teacher's job has none)."""
    assert job.method is not None, job.label
    return job.method.name


def _loss_of(cfg):
    from figkd.losses import build_loss

    return build_loss(cfg.loss.name, **dict(cfg.loss.args))


# --------------------------------------------------------------------------- table math


def _summary(folder: Path, seed: int, last: float, best: float, wall: float) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "experiment": "p/m",
                "seed": seed,
                "status": "finished",
                "epochs": 3,
                "final": {"test": {"top1": last}},
                "best": {"epoch": 2, "test": {"top1": best}},
                "wall_time_s": wall,
            }
        )
    )


def test_table_mean_and_sample_std_by_hand(tmp_path: Path) -> None:
    runs = ((0, 70.0, 69.0, 10.0), (1, 72.0, 71.0, 20.0), (2, 77.0, 74.0, 30.0))
    for seed, last, best, wall in runs:
        _summary(tmp_path / "m" / f"seed{seed}", seed, last, best, wall)
    _summary(tmp_path / "ce" / "seed0", 0, 60.0, 60.0, 5.0)
    result = S.collect(tmp_path / "m", "KD")
    assert result is not None and result.seeds == [0, 1, 2]
    # mean 73; deviations -3, -1, 4; sample variance (9 + 1 + 16) / (3 - 1) = 13
    mean, std = result.last_stats()
    assert mean == pytest.approx(73.0) and std == pytest.approx(math.sqrt(13.0))
    best_mean, best_std = result.best_stats()  # 71.333..., deviations -2.333, -0.333, 2.667
    assert best_mean == pytest.approx(214 / 3)
    assert best_std == pytest.approx(math.sqrt((49 / 9 + 1 / 9 + 64 / 9) / 2))
    assert result.wall_mean() == pytest.approx(20.0)
    ce = S.collect(tmp_path / "ce", "CE")
    assert ce is not None
    table = S.results_table([ce, result], "CE", "CE")
    assert "| CE | 1 | 60.00 | 60.00 |  | 5 s |" in table
    assert "| KD | 3 | 73.00 ± 3.61 | 71.33 ± 2.52 | +13.00 | 20 s |" in table
    assert S.duration(150) == "2.5 min" and S.duration(7200) == "2.00 h"
    assert (S.duration(119), S.duration(120), S.duration(7199)) == ("119 s", "2.0 min", "120.0 min")
    assert S.collect(tmp_path / "absent", "x") is None


def test_delta_is_paired_by_seed_when_two_or_more_seeds_are_shared() -> None:
    ce = S.Result("CE", "ce", [0, 1, 2], [60.0, 64.0, 62.0], [], [])
    # per seed +1, +2, +6 (the means differ by 3): mean 3, deviations -2, -1, 3,
    # sample variance (4 + 1 + 9) / 2 = 7
    kd = S.Result("KD", "kd", [0, 1, 2], [61.0, 66.0, 68.0], [], [])
    assert S.paired_delta(kd, ce) == f"+3.00 ± {math.sqrt(7):.2f}"
    # only the shared seeds pair: seed 3 has no CE run; seeds 1, 2 give +2, +6
    extra = S.Result("DKD", "dkd", [1, 2, 3], [66.0, 68.0, 90.0], [], [])
    assert S.paired_delta(extra, ce) == f"+4.00 ± {math.sqrt(8):.2f}"
    # one shared seed: the difference of the means, as before
    lone = S.Result("DIST", "dist", [2, 3], [70.0, 80.0], [], [])
    assert S.paired_delta(lone, ce) == "+13.00"
    worse = S.Result("X", "x", [0, 1], [59.0, 64.0], [], [])
    assert S.paired_delta(worse, ce) == f"-0.50 ± {math.sqrt(0.5):.2f}"
    table = S.results_table([ce, kd, lone], "CE", "CE")
    assert f"| KD | 3 | 65.00 ± 3.61 | – | +3.00 ± {math.sqrt(7):.2f} | – |" in table
    assert "| CE | 3 | 62.00 ± 2.00 | – |  | – |" in table


# --------------------------------------------------------------------------- running


@pytest.fixture()
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIGKD_CACHE", str(tmp_path / "cache"))  # subprocesses inherit it
    return synthetic.write_fake_tiny_imagenet(
        tmp_path / "data", num_classes=6, train_per_class=8, val_per_class=3, size=32
    )


def _tiny_tier(**changes) -> S.Tier:
    return unit_tier(**{"seeds": (0, 1), **changes})


def test_make_subset_keeps_first_images_per_class(fake_root: Path, tmp_path: Path) -> None:
    from figkd.data import load_dataset

    sub = S.make_subset(fake_root, tmp_path / "subsets", 3, 2)
    assert S.make_subset(fake_root, tmp_path / "subsets", 3, 2) == sub  # built once
    train = load_dataset("tiny-imagenet", sub, "train")
    test = load_dataset("tiny-imagenet", sub, "test")
    assert len(train) == 18 and len(test) == 12
    assert sorted(train.targets) == sorted(list(range(6)) * 3)
    full = load_dataset("tiny-imagenet", fake_root, "train")
    first = [Path(p).name for p, y in full.samples if y == 0][:3]
    assert [Path(p).name for p, y in train.samples if y == 0] == first


def test_teacher_key_follows_its_config(fake_root: Path, tmp_path: Path) -> None:
    a = S.plan_study(_tiny_tier(), tmp_path, fake_root, device="cpu")
    b = S.plan_study(_tiny_tier(), tmp_path / "elsewhere", fake_root, device="cpu", threads=2)
    c = S.plan_study(_tiny_tier(teacher_epochs=2), tmp_path, fake_root, device="cpu")
    name = lambda s: next(iter(s.teachers.values())).config.experiment
    d = S.plan_study(_tiny_tier(), tmp_path, fake_root, device="cpu",
                     overrides=["teacher.cache=on", "teacher.cache_dir=/elsewhere"])
    assert name(a) == name(b) == name(d) != name(c)  # how runs execute is not in the key


def test_study_runs_skips_finished_and_resumes_killed(fake_root: Path, tmp_path: Path) -> None:
    tier = _tiny_tier()
    study = S.plan_study(tier, tmp_path / "out", fake_root, device="cpu")
    lines: list[str] = []
    manifest = S.run_study(study, say=lines.append)
    statuses = [r["status"] for r in manifest["runs"]]
    assert statuses == ["trained"] * 15  # teacher + 7 methods x 2 seeds
    sha = manifest["teachers"][tier.pairs[0].name]["sha256"]
    figkd_cfg = (study.out / "configs" / tier.pairs[0].name / "figkd.yaml").read_text()
    assert sha in figkd_cfg  # students pin their teacher's checksum
    mlkd = json.loads(next((study.out).rglob("mlkd/seed0/summary.json")).read_text())
    assert mlkd["status"] == "finished" and mlkd["method"] == "mlkd"
    summaries = sorted(study.out.rglob("summary.json"))
    stamps = {p: p.stat().st_mtime_ns for p in summaries}

    again = S.run_study(study, say=lines.append)  # second invocation: nothing to do
    assert [r["status"] for r in again["runs"]] == ["skipped"] * 15
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps
    assert again["teachers"][tier.pairs[0].name]["sha256"] == sha

    killed = study.out / tier.pairs[0].name / "kd" / "seed1"
    (killed / "summary.json").unlink()  # killed after its last checkpoint, before the summary
    fresh = study.out / tier.pairs[0].name / "dist" / "seed0"
    for item in fresh.iterdir():  # killed before its first checkpoint: only a config left
        if item.name != "config.yaml":
            item.unlink() if item.is_file() else shutil.rmtree(item)
    third = S.run_study(study, say=lines.append)
    by_run = {r["run"]: r["status"] for r in third["runs"]}
    assert by_run[f"{tier.pairs[0].name}/kd seed1"] == "resumed"
    assert by_run[f"{tier.pairs[0].name}/dist seed0"] == "trained"
    assert sum(s == "skipped" for s in by_run.values()) == 13
    assert json.loads((killed / "summary.json").read_text())["resumed"] == 1

    # a finished student distilled from another teacher file is never passed off as current
    other = study.out / tier.pairs[0].name / "figkd" / "seed0" / "summary.json"
    data = json.loads(other.read_text())
    data["teacher"]["sha256"] = "0" * 64
    other.write_text(json.dumps(data))
    fourth = S.run_study(study, say=lines.append)
    failed = [r for r in fourth["runs"] if r["status"] == "failed"]
    assert [r["run"] for r in failed] == [f"{tier.pairs[0].name}/figkd seed0"]
    assert "another teacher" in failed[0]["error"]
    data["teacher"]["sha256"] = sha
    other.write_text(json.dumps(data))

    path = S.write_study_report(study, third, "figkd study --tier unit", 1.0)
    text = path.read_text()
    for label in ("CE", "KD", "DKD", "DIST", "MLKD", "KD + LS", "FiGKD"):
        assert f"| {label} | 2 | " in text
    assert "| teacher (tiny_cnn) | 1 | " in text and "figkd study --tier unit" in text
    assert "- finished runs: 15, 1 of them resumed after a stop" in text  # kd seed1
    assert "trained on: cpu (" in text
    # every finished run's epochs counted once, under the commit(s) that trained them
    code = next(line for line in text.splitlines() if line.startswith("- code: "))
    finished = [s for s in S.find_summaries([study.out]) if s.get("status") == "finished"]
    counted = sum(int(n) for n in re.findall(r"(\d+) epoch\(s\)", code))
    assert len(finished) == 15 and counted == sum(s["epochs"] for s in finished)
    assert (study.out / "report.md").is_file() and (study.out / "study.json").is_file()


def test_teacher_free_students_train_beside_the_teachers(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CE needs no teacher, so it shares the teachers' batch: on a GPU the slots a lone
    teacher leaves idle train it.  The distilled students wait for the teacher's checksum."""
    tier = _tiny_tier()
    methods = [m for m in S.main_methods(1) if m.name in ("ce", "kd")]
    study = S.plan_study(tier, tmp_path / "out", fake_root, device="cpu", methods=methods)
    batches: list[list[str]] = []
    # loosely typed: mypy cannot tell that the wrapper's *args leave `followers` out
    original: Callable[..., list[S.Outcome]] = S.execute

    def recording(jobs, *args, followers, **kwargs):
        batches.append([job.label for job in jobs])

        def released(outcome):
            jobs = followers(outcome)
            batches.append([f"after {outcome.job.label}: {job.label}" for job in jobs])
            return jobs

        return original(jobs, *args, followers=released, **kwargs)

    monkeypatch.setattr(S, "execute", recording)
    manifest = S.run_study(study, say=lambda _: None)
    pair = tier.pairs[0].name
    # the teacher ends first (a single slot runs the queue in order) and releases KD, which
    # joins behind the CE runs; the CE runs release nothing
    assert batches == [
        [f"{pair}/teacher seed0", f"{pair}/ce seed0", f"{pair}/ce seed1"],
        [f"after {pair}/teacher seed0: {pair}/kd seed{k}" for k in (0, 1)],
        [], [], [], [],
    ]
    assert [r["run"] for r in manifest["runs"]] == [
        f"{pair}/teacher seed0", f"{pair}/ce seed0", f"{pair}/ce seed1", f"{pair}/kd seed0",
        f"{pair}/kd seed1"]
    assert [r["status"] for r in manifest["runs"]] == ["trained"] * 5


def _start_order(study: S.Study, monkeypatch: pytest.MonkeyPatch,
                 fails: str = "") -> tuple[list[str], list[str], dict]:
    """Labels in the order the runs started (one slot: the queue's order), the study's
    lines, and its manifest.  The run labelled ``fails`` raises instead of training."""
    started: list[str] = []
    original = S._run_in_process

    def recording(job, say):
        started.append(job.label.split("/", 1)[1])
        if job.label.endswith(fails) and fails:
            raise RuntimeError("out of memory")
        return original(job, say)

    monkeypatch.setattr(S, "_run_in_process", recording)
    lines: list[str] = []
    manifest = S.run_study(study, say=lines.append)
    return started, lines, manifest


def test_first_methods_train_before_the_held_ones(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--first dkd: DKD's seeds run right after the teacher and CE; KD's wait for both."""
    methods = [m for m in S.main_methods(1) if m.name in ("ce", "kd", "dkd")]
    plain = S.plan_study(_tiny_tier(), tmp_path / "plain", fake_root, device="cpu",
                         methods=methods)
    order, _, _ = _start_order(plain, monkeypatch)
    assert order == ["teacher seed0", "ce seed0", "ce seed1", "kd seed0", "kd seed1",
                     "dkd seed0", "dkd seed1"]  # without --first: the table's order
    study = S.plan_study(_tiny_tier(), tmp_path / "first", fake_root, device="cpu",
                         methods=methods, first=["dkd"])
    released: list[tuple[str, list[str]]] = []  # (ended run, the runs it let into the queue)
    # loosely typed: mypy cannot tell that the wrapper's *args leave `followers` out
    original: Callable[..., list[S.Outcome]] = S.execute

    def recording(jobs, *args, followers, **kwargs):
        def noted(outcome):
            jobs = followers(outcome)
            released.append((outcome.job.label.split("/")[1],
                             [job.label.split("/")[1] for job in jobs]))
            return jobs

        return original(jobs, *args, followers=noted, **kwargs)

    monkeypatch.setattr(S, "execute", recording)
    order, lines, manifest = _start_order(study, monkeypatch)
    assert order == ["teacher seed0", "ce seed0", "ce seed1", "dkd seed0", "dkd seed1",
                     "kd seed0", "kd seed1"]
    # KD is held, not merely queued behind DKD: it joins when DKD's last run ends, and no
    # sooner (with more slots than runs it would otherwise start beside DKD)
    assert released == [
        ("teacher seed0", ["dkd seed0", "dkd seed1"]), ("ce seed0", []), ("ce seed1", []),
        ("dkd seed0", []), ("dkd seed1", ["kd seed0", "kd seed1"]), ("kd seed0", []),
        ("kd seed1", []),
    ]
    assert "  first dkd: 2 other run(s) wait until these 2 end" in lines
    assert "first methods ended: 2 held run(s) join the queue" in lines
    assert [r["status"] for r in manifest["runs"]] == ["trained"] * 7
    # a second invocation: the first runs are finished (skipped), so the held ones join at once
    more = S.plan_study(_tiny_tier(seeds=(0, 1, 2)), tmp_path / "first", fake_root,
                        device="cpu", methods=methods, first=["dkd"])
    released.clear()
    order, lines, _ = _start_order(more, monkeypatch)
    assert order == ["ce seed2", "dkd seed2", "kd seed2"]
    assert ("dkd seed2", ["kd seed2", "kd seed0", "kd seed1"]) in released  # longest first


def test_a_failed_first_run_still_releases_the_held_ones(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    methods = [m for m in S.main_methods(1) if m.name in ("kd", "dkd")]
    study = S.plan_study(_tiny_tier(seeds=(0,)), tmp_path / "out", fake_root, device="cpu",
                         methods=methods, first=["dkd"])
    order, _, manifest = _start_order(study, monkeypatch, fails="dkd seed0")
    assert order == ["teacher seed0", "dkd seed0", "kd seed0"]
    assert [r["status"] for r in manifest["runs"]] == ["trained", "failed", "trained"]


def test_a_failed_teacher_leaves_out_only_its_distilled_students(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = _tiny_tier(seeds=(0,))
    methods = [m for m in S.main_methods(1) if m.name in ("ce", "kd")]
    study = S.plan_study(tier, tmp_path / "out", fake_root, device="cpu", methods=methods)
    original = S._run_in_process

    def teacher_fails(job, say):
        if job.method is None:
            raise RuntimeError("out of memory")
        return original(job, say)

    monkeypatch.setattr(S, "_run_in_process", teacher_fails)
    lines: list[str] = []
    manifest = S.run_study(study, say=lines.append)
    pair = tier.pairs[0].name
    assert {r["run"]: r["status"] for r in manifest["runs"]} == {
        f"{pair}/teacher seed0": "failed",
        f"{pair}/ce seed0": "trained",
    }
    assert f"  no teacher for {pair}: its distilled students are left out" in lines
    assert not (study.out / pair / "kd").exists()


def test_cli_plan_and_parallel_subprocesses(fake_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    common = [
        "study", "--tier", "smoke", "--data-root", str(fake_root), "--out", str(out),
        "--epochs", "1", "--teacher-epochs", "1", "--train-per-class", "4",
        "--test-per-class", "2", "--seeds", "0", "--methods", "ce", "--device", "cpu",
        "data.batch_size=8",
    ]
    assert main([*common, "--plan"]) == 0
    plan = capsys.readouterr().out
    assert plan.count("  new ") == 2 and "ce.yaml  --seeds 0" in plan
    assert not out.exists()  # a plan links no subset and writes no config
    assert main([*common, "--parallel", "2"]) == 0
    text = (out / "smoke" / "study.md").read_text()
    assert "| CE | 1 | " in text and "--parallel 2" in text and "data.batch_size=8" in text
    logs = sorted((out / "smoke" / "logs").glob("*.log"))
    assert len(logs) == 2 and "--resume" in logs[0].read_text()
    assert main([*common, "--plan"]) == 0
    assert capsys.readouterr().out.count("  finished ") == 2


@pytest.mark.slow
def test_smoke_tier_end_to_end(tmp_path: Path) -> None:
    """The whole smoke tier on the real Tiny-ImageNet-100 subset (minutes on 2 cores)."""
    if not SHARED_TAR.is_file() and not (REPO / ".cache" / "tiny-imagenet-100a").is_dir():
        pytest.skip("the real Tiny-ImageNet-100 subset is not available")
    root = REPO / ".cache" / "tiny-imagenet-100a"
    data_root = str(root if (root / "wnids.txt").is_file() else SHARED_TAR)
    out = tmp_path / "study"
    assert main(["study", "--tier", "smoke", "--data-root", data_root, "--out", str(out)]) == 0
    text = (out / "smoke" / "study.md").read_text()
    for label in ("CE", "KD", "DKD", "DIST", "MLKD", "KD + LS", "FiGKD"):
        assert f"| {label} | 3 | " in text
    manifest = json.loads((out / "smoke" / "study.json").read_text())
    assert len(manifest["runs"]) == 22 and {r["status"] for r in manifest["runs"]} == {"trained"}
    assert main(["figures", str(out / "smoke"), "--per-class", "10"]) == 0
    figures = next((out / "smoke").rglob("figures"))
    assert (figures / "frequency.png").stat().st_size > 5000
    assert (figures / "tsne.png").stat().st_size > 5000
