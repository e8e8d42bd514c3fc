"""The study's recipe constants and data helpers at their edges (``figkd.analysis.study``).

Written for the survivors of a mutation check of the recipe part of ``study.py``. Expected
values come from the paper (Sec. 4.2, Tables 11, 12 and 16), from docs/reproduction.md and
docs/results/smoke_tiny_imagenet.md, from hand arithmetic, or from the files a test writes.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import pytest

from figkd.analysis import study as S
from figkd.data import synthetic

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- tiers


def test_smoke_tier_is_the_documented_size() -> None:
    # docs/results/smoke_tiny_imagenet.md: "24 train + 10 test images per class ...
    # resnet8 -> tiny_cnn (width 16), 6 epochs (teacher 10)", "1 run(s) at a time" for the
    # plain `figkd study --tier smoke`, i.e. the tier's own default
    smoke = S.TIERS["smoke"]
    assert (smoke.epochs, smoke.teacher_epochs) == (6, 10)
    assert (smoke.train_per_class, smoke.test_per_class) == (24, 10)
    assert [(p.teacher, p.student, p.teacher_args, p.student_args) for p in smoke.pairs] == [
        ("resnet8", "tiny_cnn", {}, {"width": 16})
    ]
    assert smoke.parallel == 1
    # 150/180/210 of 240 at 6 epochs: 3.75, 4.5, 5.25 -> 3, 4, 5; at 10: 6.25, 7.5, 8.75
    # -> 6, 7, 8 (the same document: "after epochs 3, 4, 5", "after 6, 7, 8")
    assert smoke.milestones == [3, 4, 5] and smoke.teacher_milestones == [6, 7, 8]


def test_cpu_tier_is_the_documented_size(tmp_path: Path) -> None:
    # docs/results/cpu_tiny_imagenet.md: "100 train (90 + 10 validation) + 50 test images per
    # class ... resnet20 -> resnet8, 15 epochs (teacher 24)", 2 runs at a time, 1 thread each
    cpu = S.TIERS["cpu"]
    assert (cpu.epochs, cpu.teacher_epochs) == (15, 24)
    assert (cpu.train_per_class, cpu.test_per_class, cpu.val_fraction) == (100, None, 0.1)
    assert [(p.teacher, p.student) for p in cpu.pairs] == [("resnet20", "resnet8")]
    assert (cpu.parallel, cpu.threads, cpu.num_workers, cpu.gpu) == (2, 1, 0, False)
    # 150/180/210 of 240 at 15 epochs: 9.4, 11.25, 13.1; at 24: 15, 18, 21
    assert cpu.milestones == [9, 11, 13] and cpu.teacher_milestones == [15, 18, 21]
    study = S.plan_study(cpu, tmp_path, tmp_path, device="cpu", write=False)
    jobs = S.student_jobs(study, {p.name: "0" * 64 for p in cpu.pairs}, write=False)
    assert {(j.config.train.epochs, j.config.data.batch_size) for j in jobs} == {(15, 64)}
    assert (study.parallel, study.threads) == (2, 1)


def test_cpu_tier_takes_the_thin_resnet_configs_loss_options(tmp_path: Path) -> None:
    # resnet20 -> resnet8 has no tuned values: DKD's beta and KD + LS's (tau, weight) come from
    # the nearest thin-ResNet pair with a config, resnet110 -> resnet32
    from figkd.config import load_config

    study = S.plan_study(S.TIERS["cpu"], tmp_path, tmp_path, device="cpu", write=False)
    jobs = {
        j.method.name: j.config
        for j in S.student_jobs(study, {"resnet20_resnet8": "0" * 64}, write=False)
        if j.seed == 0 and j.method is not None
    }
    configs = REPO / "configs" / "cifar100"
    for method, options in (("dkd", ("beta",)), ("kd_ls", ("temperature", "kd_weight"))):
        want = load_config(configs / method / "resnet110_resnet32.yaml").loss.args
        assert {k: jobs[method].loss.args[k] for k in options} == {k: want[k] for k in options}
    assert jobs["dkd"].loss.args["beta"] == 2.0 and jobs["kd_ls"].loss.args["temperature"] == 2.0


def test_tier_overrides_come_before_the_command_lines_and_leave_keys_alone(
    tmp_path: Path,
) -> None:
    cpu = S.TIERS["cpu"]
    assert cpu.overrides == ("teacher.cache=auto",)
    study = S.plan_study(cpu, tmp_path, tmp_path, device="cpu", write=False)
    teacher = next(iter(study.teachers.values()))
    jobs = S.student_jobs(study, {"resnet20_resnet8": "0" * 64}, write=False)
    assert {j.config.teacher.cache for j in jobs} == {"auto"}
    # the command line's override wins over the tier's
    mine = S.plan_study(cpu, tmp_path, tmp_path, device="cpu", write=False,
                        overrides=["teacher.cache=none"])
    assert mine.overrides == ["teacher.cache=auto", "teacher.cache=none"]
    mine_jobs = S.student_jobs(mine, {"resnet20_resnet8": "0" * 64}, write=False)
    assert {j.config.teacher.cache for j in mine_jobs} == {"none"}
    # an execution key: the teacher's folder (its config key) is the same without it
    bare = dataclasses.replace(cpu, overrides=())
    plain = S.plan_study(bare, tmp_path, tmp_path, device="cpu", write=False)
    assert next(iter(plain.teachers.values())).config.experiment == teacher.config.experiment
    for tier in S.TIERS.values():  # every tier's overrides are execution keys only
        for item in tier.overrides:
            assert item.split("=")[0].startswith(S._EXECUTION_KEYS), (tier.name, item)


def test_paper_tier_teachers_follow_the_paper_schedule() -> None:
    # Sec. 4.2: "trained ... for 240 epochs ... decayed by a factor of 0.1 at epochs 150, 180
    # and 210"; the paper tier trains its teachers with the same recipe
    paper = S.TIERS["paper"]
    assert paper.teacher_epochs == 240 and paper.teacher_milestones == [150, 180, 210]
    # 60-epoch teachers of the short tier: 37.5, 45, 52.5 -> 37, 45, 52
    assert S.TIERS["short"].teacher_milestones == [37, 45, 52]


def test_gpu_tier_teachers_take_batch_256_at_a_linearly_scaled_lr(tmp_path: Path) -> None:
    # docs/reproduction.md: the GPU tiers' teachers train at batch 256 with the LR scaled
    # linearly from the paper's 0.05 at 64 (0.2; vgg13 too: it is not a low-LR model), while
    # every student keeps the paper's batch 64 and its default LR
    for tier in ("short", "paper"):
        study = S.plan_study(S.TIERS[tier], tmp_path / tier, tmp_path, device="cpu", write=False)
        for job in study.teachers.values():
            assert job.config.data.batch_size == 256, tier
            assert job.config.optim.lr == pytest.approx(0.2), tier
        jobs = S.student_jobs(study, {p.name: "0" * 64 for p in study.tier.pairs}, write=False)
        assert {(j.config.data.batch_size, j.config.optim.lr) for j in jobs} == {(64, None)}
    # the smoke tier (and any tier without the field) trains its teacher like its students
    smoke = S.plan_study(S.TIERS["smoke"], tmp_path / "smoke", tmp_path, device="cpu", write=False)
    teacher = next(iter(smoke.teachers.values())).config
    assert (teacher.data.batch_size, teacher.optim.lr) == (64, None)
    # a low-LR teacher (MobileNetV2's 0.01) scales from its own default: 0.01 x 128 / 64
    assert dataclasses.replace(smoke.tier, teacher_batch_size=128).teacher_recipe(
        "MobileNetV2"
    ) == (128, pytest.approx(0.02))


def test_recipe_objects_cannot_be_changed_in_place() -> None:
    # TIERS is module state shared by every study of a process: an in-place edit by one
    # caller would silently change the recipe of all later ones
    with pytest.raises(dataclasses.FrozenInstanceError):
        S.TIERS["paper"].epochs = 60  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        S.TIERS["paper"].pairs[0].student = "resnet8"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        S.main_methods(240)[2].loss = "kd"  # type: ignore[misc]


# --------------------------------------------------------------------------- ablations


def _ablation(group: str) -> list[tuple[str, dict[str, object]]]:
    return [(m.name, m.args) for m in S.ablation_methods([group])]


def test_level_ablation_covers_both_readings_of_table_11() -> None:
    # Table 11 compares J = 1 (default) with J = 2 and J = 3; each deeper level is run with
    # the details of every level and with the deepest level's details only
    assert _ablation("level") == [
        ("figkd_level-2", {"level": 2}),
        ("figkd_level-3", {"level": 3}),
        ("figkd_level-2-deepest", {"level": 2, "detail_levels": "deepest"}),
        ("figkd_level-3-deepest", {"level": 3, "detail_levels": "deepest"}),
    ]


def test_noise_ablation_uses_the_stds_of_table_12() -> None:
    # Table 12, "Noise Std": 0.0 (the default row), 0.05, 0.10, 0.20, 0.50
    assert _ablation("noise") == [
        ("figkd_noise-0.05", {"noise_std": 0.05}),
        ("figkd_noise-0.1", {"noise_std": 0.1}),
        ("figkd_noise-0.2", {"noise_std": 0.2}),
        ("figkd_noise-0.5", {"noise_std": 0.5}),
    ]
    assert S.ABLATION_DEFAULTS["noise"] == "0"


def test_beta_and_wavelet_ablations_are_the_documented_sweeps() -> None:
    # docs/reproduction.md, section 6: "β 0.125-8" around the default β = 2 (docs/methods.md,
    # read from Fig. 4); Table 16: db2 and bior1.3 against the default Haar
    assert _ablation("beta") == [
        ("figkd_beta-0.125", {"beta": 0.125}),
        ("figkd_beta-0.25", {"beta": 0.25}),
        ("figkd_beta-0.5", {"beta": 0.5}),
        ("figkd_beta-1", {"beta": 1.0}),
        ("figkd_beta-4", {"beta": 4.0}),
        ("figkd_beta-8", {"beta": 8.0}),
    ]
    assert _ablation("wavelet") == [
        ("figkd_wavelet-db2", {"wavelet": "db2"}),
        ("figkd_wavelet-bior1.3", {"wavelet": "bior1.3"}),
    ]
    # Sec. 3: one level, Haar; the "high bands only" default of Table 10; β = 2 of Fig. 4
    assert {k: S.ABLATION_DEFAULTS[k] for k in ("level", "wavelet", "bands", "beta")} == {
        "level": "1", "wavelet": "haar", "bands": "high", "beta": "2"
    }


def test_matched_ablation_weighs_1d_and_bior_to_haar_2d_detail_size() -> None:
    assert _ablation("matched") == [
        ("figkd_matched-1d-beta6", {"transform": "1d", "beta": 6.0}),
        ("figkd_matched-bior1.3-beta3.5", {"wavelet": "bior1.3", "beta": 3.5}),
        ("figkd_matched-1d-beta3", {"transform": "1d", "beta": 3.0}),  # Haar 2d at beta 1
        ("figkd_matched-bior1.3-beta1.75", {"wavelet": "bior1.3", "beta": 1.75}),
        ("figkd_matched-1d-beta1.5", {"transform": "1d", "beta": 1.5}),  # Haar 2d at beta 0.5
        ("figkd_matched-bior1.3-beta0.875", {"wavelet": "bior1.3", "beta": 0.875}),
        ("figkd_matched-1d-beta0.75", {"transform": "1d", "beta": 0.75}),  # Haar 2d at 0.25
        ("figkd_matched-bior1.3-beta0.4375", {"wavelet": "bior1.3", "beta": 0.4375}),
    ]
    assert S.ABLATION_DEFAULTS["matched"] == "haar-2d-beta2"


def test_matched_1d_beta_equalises_the_detail_loss_of_a_white_difference() -> None:
    # Haar is orthonormal, so a difference with i.i.d. unit-variance entries has unit-variance
    # coefficients: the per-band mean is 1 per band, 3 for the 2-D high bands (LH, HL, HH)
    # and 1 for the single 1-D detail band.  beta 6 for 1-D then equals beta 2 for 2-D
    import torch

    from figkd.losses.figkd_loss import FiGKDLoss

    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8192, 100, generator=generator)
    teacher = torch.zeros_like(student)
    two_d = FiGKDLoss().detail_loss(student, teacher).item()
    one_d = FiGKDLoss(transform="1d").detail_loss(student, teacher).item()
    assert two_d == pytest.approx(3.0, rel=0.02)
    assert one_d == pytest.approx(1.0, rel=0.02)
    assert 6.0 * one_d == pytest.approx(2.0 * two_d, rel=0.03)


# --------------------------------------------------------------------------- subset options


def test_transform_beta_cells_put_every_beta_row_on_haar_2d_s_scale() -> None:
    methods = [*S.main_methods(15), *S.ablation_methods(["beta", "transform", "wavelet",
                                                          "matched", "noise"])]
    cells = {key: m.name for key, m in S.transform_beta_cells(methods).items()}
    assert cells == {
        # the main FiGKD run is Haar 2d at the loss's default beta 2
        ("haar-2d", 2.0): "figkd",
        **{("haar-2d", b): f"figkd_beta-{b:g}" for b in (0.125, 0.25, 0.5, 1.0, 4.0, 8.0)},
        # 1d and bior1.3 at beta 2: 2 / 3 and 2 / 1.75 on Haar's scale
        ("1d", 0.666667): "figkd_transform-1d",
        ("bior1.3", 1.142857): "figkd_wavelet-bior1.3",
        # the matched group: back on Haar's 2, 1, 0.5, 0.25 (6 / 3, 3.5 / 1.75, ...)
        **{("1d", b): f"figkd_matched-1d-beta{3 * b:g}" for b in (2.0, 1.0, 0.5, 0.25)},
        **{("bior1.3", b): f"figkd_matched-bior1.3-beta{1.75 * b:g}"
           for b in (2.0, 1.0, 0.5, 0.25)},
    }  # db2 (no ratio) and the noise rows (another option) are not on the axis


def _finished(folder: Path, top1: list[float]) -> None:
    for seed, value in enumerate(top1):
        run = folder / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(
            f'{{"experiment": "{folder.name}", "seed": {seed}, "status": "finished", '
            f'"epochs": 15, "final": {{"test": {{"top1": {value}}}}}}}'
        )


def test_transform_sweep_table_by_hand(tmp_path: Path) -> None:
    methods = [*S.main_methods(15), *S.ablation_methods(["beta", "matched"])]
    _finished(tmp_path / "figkd", [24.0, 24.2])  # Haar 2d, beta 2
    _finished(tmp_path / "figkd_beta-0.5", [25.0, 24.6])
    _finished(tmp_path / "figkd_matched-1d-beta6", [23.0, 24.0])  # Haar's 2: -1.0, -0.2
    _finished(tmp_path / "figkd_matched-1d-beta1.5", [24.5, 24.5])  # Haar's 0.5: -0.5, -0.1
    _finished(tmp_path / "figkd_matched-1d-beta0.75", [24.0])  # no Haar 0.25: no delta
    assert S.transform_sweep_table(tmp_path, methods, None) == [
        "| β on Haar 2d's scale | Haar 2d (β) | 1d (β × 3) |",
        "|---|---|---|",
        "| 0.25 |  | 24.00 (β 0.75) |",
        "| 0.5 | 24.80 ± 0.28 (β 0.5) | 24.50 ± 0.00 (β 1.5), Δ -0.30 ± 0.28 |",
        "| 2 | 24.10 ± 0.14 (β 2) | 23.50 ± 0.71 (β 6), Δ -0.60 ± 0.57 |",
    ]
    # a variant whose every seed failed has no numbers: it adds neither a column nor a row
    failed = tmp_path / "figkd_matched-bior1.3-beta0.875" / "seed0"
    failed.mkdir(parents=True)
    (failed / "failure.json").write_text('{"seed": 0, "epoch": 1, "reason": "non-finite"}')
    assert S.transform_sweep_table(tmp_path, methods, None)[0] == (
        "| β on Haar 2d's scale | Haar 2d (β) | 1d (β × 3) |"
    )
    # one variant alone is no comparison
    assert S.transform_sweep_table(tmp_path, S.main_methods(15), None) == []


def _packed_tier(train: int | None, test: int | None) -> S.Tier:
    # dataclasses.replace, not tier_with: tier_with ignores None values
    return dataclasses.replace(
        S.TIERS["smoke"], dataset="uint8-shards", train_per_class=train, test_per_class=test
    )


def test_subset_args_pass_only_the_limits_that_are_set() -> None:
    # None means "every image": it must not reach the reader as an option
    assert S.subset_args(_packed_tier(5, None)) == {"train_per_class": 5}
    assert S.subset_args(_packed_tier(None, 3)) == {"test_per_class": 3}
    assert S.subset_args(_packed_tier(None, None)) == {}


# --------------------------------------------------------------------------- make_subset


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    return synthetic.write_fake_tiny_imagenet(
        tmp_path / "data", num_classes=3, train_per_class=4, val_per_class=2, size=8
    )


def _counts(folder: Path) -> tuple[list[int], int]:
    wnids = sorted((folder / "wnids.txt").read_text().split())
    train = [len(os.listdir(folder / "train" / w / "images")) for w in wnids]
    lines = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    return train, len(lines)


def test_one_limit_alone_still_makes_a_subset(source: Path, tmp_path: Path) -> None:
    # only both limits None keep the source as it is; one None keeps every image of that
    # split only (3 classes x 4 train images, 3 classes x 2 val images in the source)
    assert S.make_subset(source, tmp_path / "s", None, None) == source
    train_only = S.make_subset(source, tmp_path / "s", 1, None)
    assert train_only.name == f"{source.name}-train1-testall"
    assert _counts(train_only) == ([1, 1, 1], 6)
    test_only = S.make_subset(source, tmp_path / "s", None, 1)
    assert test_only.name == f"{source.name}-trainall-test1"
    assert _counts(test_only) == ([4, 4, 4], 3)


def test_plan_only_names_the_folder(source: Path, tmp_path: Path) -> None:
    # `study --plan` writes nothing
    folder = S.make_subset(source, tmp_path / "s", 2, 1, build=False)
    assert folder == tmp_path / "s" / f"{source.name}-train2-test1"
    assert not (tmp_path / "s").exists()


def test_a_finished_subset_is_kept_and_a_half_built_one_redone(
    source: Path, tmp_path: Path
) -> None:
    folder = S.make_subset(source, tmp_path / "s", 2, 1)
    (folder / "kept.txt").write_text("a finished subset is not rebuilt\n")
    assert S.make_subset(source, tmp_path / "s", 2, 1) == folder
    assert (folder / "kept.txt").is_file()
    # a build killed before its marker: the stale folder is removed and built again
    (folder / ".figkd-complete").unlink()
    assert S.make_subset(source, tmp_path / "s", 2, 1) == folder
    assert not (folder / "kept.txt").exists()
    assert _counts(folder) == ([2, 2, 2], 3)


def test_annotation_lines_the_reader_accepts_are_kept(source: Path, tmp_path: Path) -> None:
    # the reader skips blank lines and needs only "<file>\t<wnid>": such a file must give
    # the same per-class counts (1 of the 2 val images of each of the 3 classes)
    annotations = source / "val" / "val_annotations.txt"
    short = ["\t".join(line.split("\t")[:2]) for line in annotations.read_text().splitlines()]
    annotations.write_text("\n\n".join(short) + "\n")
    folder = S.make_subset(source, tmp_path / "s", 2, 1)
    kept = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in kept) == sorted(
        (source / "wnids.txt").read_text().split()
    )


# --------------------------------------------------------------------------- locating the data


def _unpackable_tar(path: Path) -> None:
    """A tar holding ``tiny-imagenet-100a/wnids.txt``: all the unpacker checks."""
    inner = path.parent / "content" / "tiny-imagenet-100a"
    inner.mkdir(parents=True)
    (inner / "wnids.txt").write_text("n01\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        archive.add(inner, arcname="tiny-imagenet-100a")


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # no $FIGKD_DATA and no ./data: the fallbacks are what is left
    monkeypatch.delenv("FIGKD_DATA", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_without_a_root_the_cached_subset_folder_is_found(workdir: Path) -> None:
    folder = workdir / ".cache" / "tiny-imagenet-100a"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("n01\n")
    assert S.locate_tiny_imagenet(None, workdir / "unpacked") == folder.resolve()


def test_without_a_root_the_shared_tar_is_unpacked(workdir: Path) -> None:
    # ../shared/data/tiny-imagenet-100a.tar beside the checkout, unpacked into the cache
    _unpackable_tar(workdir.parent / "shared" / "data" / "tiny-imagenet-100a.tar")
    found = S.locate_tiny_imagenet(None, workdir / "unpacked")
    assert found == workdir / "unpacked" / "tiny-imagenet-100a"
    assert (found / "wnids.txt").read_text() == "n01\n"


def test_without_any_data_the_search_error_is_raised(workdir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no dataset folder found"):
        S.locate_tiny_imagenet(None, workdir / "unpacked")


def test_a_tar_root_is_unpacked_and_another_file_is_not(workdir: Path) -> None:
    tar = workdir / "in" / "tiny-imagenet-100a.tar"
    _unpackable_tar(tar)
    assert S.locate_tiny_imagenet(tar, workdir / "unpacked") == (
        workdir / "unpacked" / "tiny-imagenet-100a"
    )
    # a file that is not a .tar is no dataset folder: reported as such, never opened as a tar
    other = workdir / "in" / "tiny-imagenet.zip"
    other.write_bytes(b"not a tar")
    with pytest.raises(FileNotFoundError, match="no dataset folder found"):
        S.locate_tiny_imagenet(other, workdir / "unpacked2")
    assert not (workdir / "unpacked2").exists()
