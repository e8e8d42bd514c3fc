"""Typed config: YAML files with bases, key=value overrides, and every shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from figkd.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    default_lr,
    describe_config,
    experiment_name_for,
    load_config,
    resolved_lr,
    validate_config,
)
from figkd.registry import UnknownNameError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.rglob("*.yaml") if "_base" not in p.parts)


def test_defaults_are_the_paper_recipe() -> None:
    cfg = Config()
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (cfg.data.batch_size, cfg.train.epochs) == (64, 240)
    assert (cfg.schedule.milestones, cfg.schedule.gamma) == ([150, 180, 210], 0.1)
    assert resolved_lr(cfg) == 0.05
    assert (
        default_lr("ShuffleV1") == default_lr("ShuffleNet-V2") == default_lr("MobileNetV2") == 0.01
    )
    assert default_lr("resnet8x4") == 0.05


def test_every_shipped_config_loads_and_validates() -> None:
    assert len(EXPERIMENTS) >= 200
    for path in EXPERIMENTS:
        cfg = load_config(path)  # unknown keys, types and registry names all checked
        assert cfg.experiment == path.relative_to(CONFIGS).with_suffix("").as_posix()
        parts = path.relative_to(CONFIGS).parts
        assert len(parts) == 3, f"{path}: expected <dataset>/<method>/<name>.yaml"
        # the paper's number and table, or a note saying why there is none (a dash in the
        # paper's table, a method the paper does not run, TAKD's intermediate assistant run)
        if cfg.paper.top1 is None:
            assert cfg.paper.note, f"{path}: no paper.top1 and no paper.note saying why"
        else:
            assert cfg.paper.table is not None, path


def test_distill_configs_point_at_a_teacher_config_of_the_same_model() -> None:
    for path in EXPERIMENTS:
        cfg = load_config(path, validate=False)
        if cfg.teacher.name is None:
            continue
        assert cfg.teacher.checkpoint is not None, path
        dataset = path.relative_to(CONFIGS).parts[0]
        # runs/<d>/teacher/<name>/seed0/...; TAKD students: runs/<d>/takd_assistant/<name>/seed0/...
        source = Path(cfg.teacher.checkpoint).parts[2]
        allowed = ("teacher", "takd_assistant") if path.parts[-2] == "takd" else ("teacher",)
        assert cfg.teacher.checkpoint.startswith(f"runs/{dataset}/{source}/") and source in allowed, path
        teacher_file = Path(cfg.teacher.checkpoint).parts[3]
        teacher_cfg = load_config(CONFIGS / dataset / source / f"{teacher_file}.yaml", validate=False)
        assert teacher_cfg.model.name == cfg.teacher.name, path
        assert (
            teacher_cfg.data.dataset == cfg.data.dataset
            and teacher_cfg.data.preset == cfg.data.preset
        )


def test_paper_numbers_spot_checks() -> None:
    def paper(rel: str) -> tuple[float | None, int | None]:
        cfg = load_config(CONFIGS / rel)
        return cfg.paper.top1, cfg.paper.table

    assert paper("cifar100/figkd/resnet32x4_resnet8x4.yaml") == (78.05, 1)
    assert paper("cifar100/kd/resnet50_mobilenetv2.yaml") == (67.35, 2)
    assert paper("tiny_imagenet/figkd/resnet32x4_shufflev2.yaml") == (70.10, 4)
    assert paper("mit67/figkd/resnet34_resnet18.yaml") == (65.67, 5)
    assert paper("stanford_dogs_32/figkd/resnet32x4_shufflev1.yaml") == (61.32, 9)
    assert paper("cifar100/figkd_noise0.50/wrn_40_2_shufflev1.yaml") == (78.51, 12)
    assert paper("cifar100/figkd_bior1.3/vgg13_mobilenetv2.yaml") == (70.90, 16)
    assert paper("cifar100/teacher/resnet32x4.yaml") == (79.42, 1)
    cfg = load_config(CONFIGS / "cifar100/figkd_level2/vgg13_vgg8.yaml")
    assert cfg.loss.args == {"level": 2}
    assert resolved_lr(load_config(CONFIGS / "cifar100/figkd/resnet32x4_shufflev1.yaml")) == 0.01


def test_base_files_merge_and_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "_base").mkdir()
    (tmp_path / "_base" / "common.yaml").write_text(
        "optim: {weight_decay: 1e-4}\ndata: {dataset: digits, batch_size: 32}\n"
    )
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "run.yaml").write_text(
        "base: _base/common.yaml\n"
        "model: {name: tiny_cnn, args: {width: 4}}\ndata: {batch_size: 16}\n"
    )
    cfg = load_config(
        tmp_path / "exp" / "run.yaml",
        ["optim.lr=0.2", "model.args.width=8", "schedule.milestones=[2, 4]"],
    )
    assert cfg.optim.weight_decay == 1e-4  # "1e-4" is a YAML string: coerced to float
    assert (cfg.data.dataset, cfg.data.batch_size) == ("digits", 16)
    assert cfg.optim.lr == 0.2 and cfg.model.args == {"width": 8}
    assert cfg.schedule.milestones == [2, 4]
    assert cfg.experiment == "run"


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=0.1"], "unknown config key 'optim.lrr'. Did you mean 'optim.lr'"),
        (["trian.epochs=3"], "Did you mean 'train'"),
        (["train.epochs=three"], "train.epochs: expected an integer"),
        (["train.epochs=2.5"], "train.epochs: expected an integer"),
        (["train.amp=fp8"], "'fp8' is not one of 'none', 'bf16', 'fp16'"),
        (["train.deterministic=maybe"], "expected true or false"),
        (["optim.lr"], "write key=value"),
        (["=3"], "write key=value"),
        (["model.name=resnet8x5"], "Did you mean 'resnet8x4'"),
        (["loss.name=figdk"], "Did you mean 'figkd'"),
        (["data.dataset=cifar10"], "Did you mean 'cifar100'"),
        (["loss.name=figkd", "loss.args.beta=-1"], "beta"),
        (["loss.name=kd", "loss.args.temprature=4"], "temprature"),
        (["model.args.depth=3"], "does not accept option(s) depth"),
        (["data.val_fraction=1.5"], "val_fraction"),
        (["schedule.milestones=[5, 2]"], "ascending order"),
        (["optim.name=lion"], "unknown optimizer 'lion'"),
    ],
)
def test_bad_overrides_are_errors_that_name_the_problem(overrides: list[str], message: str) -> None:
    with pytest.raises((ConfigError, UnknownNameError)) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_unknown_key_in_a_file_is_an_error_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: resnet8x4}\noptim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'.*Valid keys"):
        load_config(path)
    path.write_text("modle: {name: resnet8x4}\n")
    with pytest.raises(ConfigError, match="Did you mean 'model'"):
        load_config(path)


def test_round_trip_through_yaml_is_lossless() -> None:
    cfg = load_config(CONFIGS / "cifar100/figkd_noise0.05/resnet32x4_resnet8x4.yaml")
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert again == cfg
    validate_config(again)


def test_overrides_below_args_are_free_form_but_above_are_checked() -> None:
    data = apply_overrides({}, ["loss.args.anything=1", "data.args.x=[1, 2]"])
    assert data == {"loss": {"args": {"anything": 1}}, "data": {"args": {"x": [1, 2]}}}
    with pytest.raises(ConfigError, match="loss.nme"):
        apply_overrides({}, ["loss.nme=kd"])


def test_experiment_name_and_help_text() -> None:
    assert experiment_name_for(CONFIGS / "cifar100/kd/vgg13_vgg8.yaml") == "cifar100/kd/vgg13_vgg8"
    assert experiment_name_for("/tmp/x/my_run.yaml") == "my_run"
    lines = "\n".join(describe_config())
    for key in ("optim.lr", "train.amp", "data.num_workers", "teacher.checkpoint", "paper.top1"):
        assert f"  {key} (" in lines


def test_on_off_yes_no_stay_strings_only_true_false_are_booleans(tmp_path: Path) -> None:
    """YAML 1.1 would read `teacher.cache=on` as True and refuse it as not an option."""
    from figkd.config import parse_override

    assert parse_override("teacher.cache=on") == (["teacher", "cache"], "on")
    for word in ("off", "yes", "no", "On", "Y", "n"):
        assert parse_override(f"x.y={word}")[1] == word
    assert parse_override("train.amp_flag=true")[1] is True
    assert parse_override("a.b=False")[1] is False
    assert parse_override("optim.lr=0.01")[1] == 0.01 and parse_override("a.b=3")[1] == 3
    cfg = load_config(None, ["teacher.cache=on", "train.deterministic=true"])
    assert cfg.teacher.cache == "on" and cfg.train.deterministic is True
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  cache: on\ntrain:\n  deterministic: TRUE\n")
    from_file = load_config(path)
    assert from_file.teacher.cache == "on" and from_file.train.deterministic is True


def test_schedule_gamma_must_be_positive() -> None:
    from figkd.config import ConfigError

    with pytest.raises(ConfigError, match=r"schedule.gamma must be > 0"):
        load_config(None, ["schedule.gamma=-1"])


def test_milestones_past_a_shortened_run_warn_with_the_scaled_ones(tmp_path: Path) -> None:
    """``train.epochs=60`` with the paper's 150/180/210 would never decay the LR."""
    from figkd.config import apply_overrides, config_from_dict
    from figkd.engine.trainer import _warn_unreached_milestones

    data = apply_overrides({}, ["train.epochs=60"])
    with pytest.warns(UserWarning, match=r"\[150, 180, 210\].*milestones=\[37,45,52\]"):
        _warn_unreached_milestones(config_from_dict(data))
    scaled = apply_overrides({}, ["train.epochs=60", "schedule.milestones=[37,45,52]"])
    cfg = config_from_dict(scaled)
    assert cfg.schedule.milestones == [37, 45, 52]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_unreached_milestones(cfg)
