"""Edge cases of ``figkd.config`` where a wrong value would silently change a run.

Covers the typed coercion of ``key=value`` overrides and YAML values, the schema's defaults,
base-file merging, the exact wording of validation errors (each must name the key, the bad
value and the fix), the ``figkd --help`` key listing and the ``config.yaml`` round trip.

Every expected value is written out by hand: the defaults come from the paper recipe in
``docs/reproduction.md`` (and ``docs/speed.md`` for the cache limit) and the field help texts;
the error messages from the wording each check promises; difflib similarity ratios are worked
out in comments as ``2·M / (len(a) + len(b))`` with M the matched characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from figkd.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    deep_merge,
    default_lr,
    describe_config,
    experiment_name_for,
    load_config,
    load_yaml,
    parse_override,
    read_yaml_with_bases,
    resolved_lr,
    save_config,
    validate_config,
)

TRAIN_KEYS = (
    "epochs, seed, device, amp, channels_last, compile, compile_mode, deterministic, "
    "deterministic_warn_only, sync_bn, "
    "eval_every, log_every, progress, max_steps_per_epoch, eval_teacher, num_threads"
)
TOP_KEYS = "experiment, output_dir, model, teacher, loss, data, optim, schedule, train, paper"


def _coerced(*overrides: str) -> Config:
    """The config the overrides give, types coerced but registry names not checked."""
    return config_from_dict(apply_overrides({}, list(overrides)))


def _coerce_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        _coerced(*overrides)
    return str(info.value)


def _validation_error(cfg: Config) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


# --------------------------------------------------------------------------- defaults

# The documented recipe: docs/reproduction.md §1 (SGD, momentum 0.9, weight decay 5e-4,
# batch 64, 240 epochs, x0.1 after 150/180/210, 10 % stratified hold-out with a fixed seed),
# docs/speed.md (teacher.cache_max_gb default 16), and the help text of each field.
DEFAULTS_YAML = """
experiment: null
output_dir: runs
model: {name: resnet8x4, args: {}}
teacher:
  name: null
  checkpoint: null
  sha256: null
  args: {}
  cache_logits: false
  cache: none
  cache_dir: .cache/teacher_logits
  cache_views: used
  cache_dtype: float16
  cache_max_gb: 16.0
  cache_batch_size: null
loss: {name: ce, args: {}}
data:
  dataset: cifar100
  root: null
  preset: null
  args: {}
  val_fraction: 0.1
  val_seed: 0
  batch_size: 64
  eval_batch_size: 256
  loader: auto
  num_workers: 4
optim: {name: sgd, lr: null, momentum: 0.9, weight_decay: 0.0005, nesterov: false}
schedule: {name: multistep, milestones: [150, 180, 210], gamma: 0.1, warmup_epochs: 0}
train:
  epochs: 240
  seed: 0
  device: auto
  amp: none
  channels_last: false
  compile: false
  compile_mode: default
  deterministic: false
  deterministic_warn_only: false
  sync_bn: false
  eval_every: 1
  log_every: 50
  progress: auto
  max_steps_per_epoch: null
  eval_teacher: true
  num_threads: null
paper: {top1: null, table: null, note: null}
"""


def test_every_default_is_the_documented_recipe() -> None:
    """A default nudged (eval every 2 epochs, 5 workers, val seed 1, ...) changes every run."""
    expected = yaml.safe_load(DEFAULTS_YAML)
    assert config_to_dict(Config()) == expected
    assert config_to_dict(load_config(None)) == expected  # no file, no overrides: the same
    assert load_config(None).experiment is None  # nothing to name the run after


def test_default_lr_follows_the_paper_per_student() -> None:
    """0.01 for ShuffleNet-V1/V2 and MobileNet-V2 students, 0.05 otherwise (paper, Sec. 4.2)."""
    assert default_lr("mobilenetv2_imagenet") == 0.01
    assert default_lr("vgg8") == 0.05
    assert default_lr("no_such_model") == 0.05  # unknown names are not looked up
    assert resolved_lr(_coerced("model.name=ShuffleV2")) == 0.01
    assert resolved_lr(_coerced("model.name=ShuffleV2", "optim.lr=0.2")) == 0.2


# --------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("train.epochs=4.0", "train", "epochs", 4),  # a whole float is an int
        ("optim.momentum=1", "optim", "momentum", 1.0),  # an int is a float
        ("optim.weight_decay=5e-4", "optim", "weight_decay", 0.0005),  # YAML 1.1: a string
        ("output_dir=7", "", "output_dir", "7"),  # a number is a string where one is expected
        ("paper.note=0.5", "paper", "note", "0.5"),
        ("teacher.name=null", "teacher", "name", None),
        ("teacher.name=", "teacher", "name", None),  # empty value: None
        ("train.max_steps_per_epoch=3", "train", "max_steps_per_epoch", 3),
        ("optim.lr=0.2", "optim", "lr", 0.2),
        ("model.args=", "model", "args", {}),  # an empty mapping, not None
        ("schedule.milestones=[2, 4.0]", "schedule", "milestones", [2, 4]),
        ("teacher.cache=auto", "teacher", "cache", "auto"),
        ("train.compile=true", "train", "compile", True),
    ],
)
def test_override_values_are_coerced_to_the_declared_type(
    override: str, section: str, key: str, expected: Any
) -> None:
    """The value and its Python type: ``4.0`` must become the int 4, ``1`` the float 1.0."""
    cfg = _coerced(override)
    value = getattr(getattr(cfg, section) if section else cfg, key)
    assert value == expected and type(value) is type(expected)
    if isinstance(expected, list):
        assert [type(v) for v in value] == [type(v) for v in expected]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=abc", "optim.lr: expected a number, got 'abc' (or null)"),
        (
            "train.max_steps_per_epoch=2.5",
            "train.max_steps_per_epoch: expected an integer, got 2.5 (or null)",
        ),
        (
            "train.progress=loud",
            "train.progress: 'loud' is not one of 'auto', 'bar', 'lines', 'none'",
        ),
        ("schedule.milestones=5", "schedule.milestones: expected a list, got 5"),
        ("schedule.milestones=[1, x]", "schedule.milestones[1]: expected an integer, got 'x'"),
        ("model.args=3", "model.args: expected a mapping (key: value), got 3"),
        ("train.compile=1", "train.compile: expected true or false, got 1"),
        ("train.compile=yes", "train.compile: expected true or false, got 'yes'"),
        ("train.epochs=true", "train.epochs: expected an integer, got True"),
        ("optim.momentum=true", "optim.momentum: expected a number, got True"),
        ("optim.momentum=fast", "optim.momentum: expected a number, got 'fast'"),
        ("output_dir=", "output_dir: expected a string, got None"),
        ("model=3", "model: expected a mapping of keys, got 3"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_the_type_and_the_value(
    override: str, message: str
) -> None:
    """Booleans are not numbers here (``True`` is an int in Python): each is refused."""
    assert _coerce_error(override) == message


def test_text_settings_refuse_booleans_from_files() -> None:
    """A YAML file's ``true`` under a text key is refused, not turned into "True"."""
    for data, message in (
        ({"output_dir": True}, "output_dir: expected a string, got True"),
        ({"paper": {"note": True}}, "paper.note: expected a string, got True (or null)"),
    ):
        with pytest.raises(ConfigError) as info:
            config_from_dict(data)
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        # YAML 1.1 would read these as numbers: 01 (octal) -> 1, 1:30 (base 60) -> 90,
        # 2024_01 (underscores ignored) -> 202401, 0123 (octal) -> 83, 1.10 -> 1.1
        ("experiment=01", "", "experiment", "01"),
        ("experiment=1:30", "", "experiment", "1:30"),
        ("experiment=1.10", "", "experiment", "1.10"),
        ("data.root=2024_01", "data", "root", "2024_01"),
        ("teacher.sha256=0123", "teacher", "sha256", "0123"),
        ("output_dir=true", "", "output_dir", "true"),
        ("paper.note= two words ", "paper", "note", "two words"),
        ("experiment='01'", "", "experiment", "01"),  # explicit YAML quotes still count
        ('experiment="a b"', "", "experiment", "a b"),
        ("paper.note=''", "paper", "note", ""),  # an empty quoted text is empty, not "''"
        ('paper.note="a" # b', "paper", "note", '"a" # b'),  # only a fully quoted text is YAML
        ("experiment=null", "", "experiment", None),  # YAML's nulls still unset the value
        ("experiment=~", "", "experiment", None),
        ("experiment=", "", "experiment", None),
    ],
)
def test_text_overrides_keep_what_was_typed(
    override: str, section: str, key: str, expected: Any
) -> None:
    """``--name 01`` must name the run "01", not "1" (a silent rename of the run folder)."""
    cfg = _coerced(override)
    assert getattr(getattr(cfg, section) if section else cfg, key) == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=nan", "optim.lr: expected a number, got NaN (or null)"),
        ("schedule.gamma=.nan", "schedule.gamma: expected a number, got NaN"),
        ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
        ("optim.momentum=-.inf", "optim.momentum must be a finite number, got -inf"),
        ("optim.weight_decay=.inf", "optim.weight_decay must be a finite number, got inf"),
        ("schedule.gamma=.inf", "schedule.gamma must be a finite number, got inf"),
    ],
)
def test_nan_and_infinite_optimizer_settings_are_refused(override: str, message: str) -> None:
    """Every comparison with NaN is False, so ``lr > 0`` alone let NaN through to training."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_an_unlimited_cache_size_is_allowed() -> None:
    """``teacher.cache_max_gb=.inf``: no size limit, a meaningful infinity."""
    assert load_config(None, ["teacher.cache_max_gb=.inf"]).teacher.cache_max_gb == float("inf")


def test_numbers_in_text_settings_of_a_file_are_refused_with_the_fix() -> None:
    """YAML has already turned ``experiment: 01`` into 1 when the file is read, so the text
    cannot be recovered: refused, naming the key and how to quote it (was silently "1")."""
    cases = (
        ({"experiment": 1}, "experiment: expected text, got the number 1; YAML reads "
         'unquoted 01, 1.10, 1:30 or 2024_01 as numbers, so quote it in the file '
         '(experiment: "...") (or null)'),
        ({"data": {"root": 202401}}, "data.root: expected text, got the number 202401; YAML "
         'reads unquoted 01, 1.10, 1:30 or 2024_01 as numbers, so quote it in the file '
         '(root: "...") (or null)'),
        ({"model": {"name": 1.5}}, "model.name: expected text, got the number 1.5; YAML reads "
         'unquoted 01, 1.10, 1:30 or 2024_01 as numbers, so quote it in the file '
         '(name: "...")'),
    )
    for data, message in cases:
        with pytest.raises(ConfigError) as info:
            config_from_dict(data)
        assert str(info.value) == message
    assert config_from_dict(load_yaml('experiment: "01"')).experiment == "01"


def test_plain_data_coercion_tuples_keys_and_copies() -> None:
    """The Python API: a tuple is a list, mapping keys become strings, args are copied."""
    nested = {"inner": [1, 2]}
    cfg = config_from_dict(
        {"schedule": {"milestones": (3, 5.0)}, "loss": {"args": {1: "a", "n": nested}},
         "model": None}
    )
    assert cfg.schedule.milestones == [3, 5] and type(cfg.schedule.milestones) is list
    assert cfg.loss.args == {"1": "a", "n": {"inner": [1, 2]}}
    nested["inner"].append(3)  # the caller's data changes later: the config does not
    assert cfg.loss.args["n"] == {"inner": [1, 2]}
    assert cfg.model.name == "resnet8x4"  # an empty section (YAML `model:`) keeps defaults
    with pytest.raises(ConfigError) as info:
        config_from_dict([1])  # type: ignore[arg-type]
    assert str(info.value) == "config: expected a mapping of keys, got [1]"


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_lists_at_most_three_close_names_with_their_section() -> None:
    """``train.ever``: ratios 2·M/(4+len): log_every 2·4/13 = 0.615, device 2·3/10 = 0.6,
    eval_every 2·4/14 = 0.571, then seed 2·2/8 = 0.5 and eval_teacher 2·4/16 = 0.5: five reach
    the 0.5 cutoff, the best three are shown, in order."""
    expected = (
        "unknown config key 'train.ever'. Did you mean 'train.log_every', 'train.device', "
        f"'train.eval_every'? Valid keys in 'train': {TRAIN_KEYS}."
    )
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["train.ever=3"])
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"ever": 3}})  # the same words for a key in a file
    assert str(info.value) == expected


def test_unknown_key_with_a_mid_similarity_match_still_gets_a_suggestion() -> None:
    """``optim.decay`` vs ``weight_decay``: 2·5/(5+12) = 0.588, above 0.5 (not above 0.75)."""
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["optim.decay=1e-4"])
    assert str(info.value) == (
        "unknown config key 'optim.decay'. Did you mean 'optim.weight_decay'? "
        "Valid keys in 'optim': name, lr, momentum, weight_decay, nesterov."
    )


def test_unknown_top_level_key_has_no_section_and_no_hint_without_a_match() -> None:
    """A top-level key: no "in '<section>'" and, with no name at ratio >= 0.5, no hint."""
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["zzz=1"])
    assert str(info.value) == f"unknown config key 'zzz'. Valid keys: {TOP_KEYS}."
    with pytest.raises(ConfigError) as info:
        config_from_dict({"modle": {}})  # modle vs model: 2·4/10 = 0.8
    assert str(info.value) == (
        f"unknown config key 'modle'. Did you mean 'model'? Valid keys: {TOP_KEYS}."
    )


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  optim.lr  = 0.5", (["optim", "lr"], 0.5)),  # spaces around the key are dropped
        ("paper.note=x=1", (["paper", "note"], "x=1")),  # split at the first '=' only
        ("paper.note=[unclosed", (["paper", "note"], "[unclosed")),  # bad YAML: the raw text
        ("train.max_steps_per_epoch=   ", (["train", "max_steps_per_epoch"], None)),
        ("loss.args.t=[1, 2]", (["loss", "args", "t"], [1, 2])),
        ("teacher.cache=off", (["teacher", "cache"], "off")),  # YAML 1.2: not a boolean
        ("a.b=TRUE", (["a", "b"], True)),
    ],
)
def test_parse_override_splits_key_and_reads_the_value_as_yaml(
    text: str, expected: tuple[list[str], Any]
) -> None:
    """The value is YAML (1.2 booleans); text YAML cannot parse is kept as written."""
    key, value = parse_override(text)
    assert (key, value) == expected and type(value) is type(expected[1])


@pytest.mark.parametrize("text", ["a..b=1", ".a=1", "a.=1", " =1", "optim.lr", ""])
def test_a_malformed_override_says_how_to_write_one(text: str) -> None:
    """No '=', an empty key or an empty dotted part: the message shows the right form."""
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert str(info.value) == (
        f"bad override {text!r}: write key=value with a dotted key, e.g. optim.lr=0.01"
    )


def test_overrides_keep_sibling_keys_replace_scalars_and_leave_the_input_alone() -> None:
    """Setting optim.lr keeps optim.momentum from the file; the last override of a key wins."""
    data = {"optim": {"momentum": 0.8}, "teacher": None, "loss": {"args": 5}}
    out = apply_overrides(
        data,
        [
            "optim.lr=0.1",
            "optim.lr=0.2",
            "teacher.name=resnet8",  # an empty section (None) becomes a mapping
            "loss.args.t=4",  # a scalar in the way is replaced by a mapping
            "data.args.deep.er=1",  # free-form below args: nested mappings are created
        ],
    )
    assert out == {
        "optim": {"momentum": 0.8, "lr": 0.2},
        "teacher": {"name": "resnet8"},
        "loss": {"args": {"t": 4}},
        "data": {"args": {"deep": {"er": 1}}},
    }
    assert data == {"optim": {"momentum": 0.8}, "teacher": None, "loss": {"args": 5}}


# --------------------------------------------------------------------------- files and bases


def test_deep_merge_merges_mappings_key_by_key_and_replaces_everything_else() -> None:
    """Only mapping-over-mapping merges; a scalar or list replaces; the base is not modified."""
    base = {"a": {"x": 1, "y": {"p": 1}}, "b": {"z": 0}, "c": [1, 2]}
    update = {"a": {"y": {"q": 2}}, "b": 7, "c": {"k": 1}, "d": None}
    assert deep_merge(base, update) == {
        "a": {"x": 1, "y": {"p": 1, "q": 2}},
        "b": 7,
        "c": {"k": 1},
        "d": None,
    }
    assert base == {"a": {"x": 1, "y": {"p": 1}}, "b": {"z": 0}, "c": [1, 2]}


def test_bases_merge_in_order_deepest_first_and_the_file_wins(tmp_path: Path) -> None:
    """base: [b1, b2]: b1 first, then b2 over it, then the file; b1's own base before b1."""
    (tmp_path / "root.yaml").write_text("train: {seed: 5, epochs: 9}\ndata: {batch_size: 8}\n")
    (tmp_path / "b1.yaml").write_text("base: root.yaml\ntrain: {epochs: 1}\n")
    (tmp_path / "b2.yaml").write_text("train: {epochs: 2, log_every: 3}\n")
    (tmp_path / "run.yaml").write_text("base: [b1.yaml, b2.yaml]\ntrain: {log_every: 7}\n")
    assert read_yaml_with_bases(tmp_path / "run.yaml") == {
        "train": {"seed": 5, "epochs": 2, "log_every": 7},
        "data": {"batch_size": 8},
    }


def test_a_base_is_found_next_to_the_file_first_then_in_parent_folders(tmp_path: Path) -> None:
    """A relative base is looked up from the including file's folder upwards; absolute as is."""
    (tmp_path / "_base").mkdir()
    (tmp_path / "_base" / "b.yaml").write_text("train: {epochs: 1}\n")
    deep = tmp_path / "x" / "y"
    deep.mkdir(parents=True)
    (deep / "run.yaml").write_text("base: _base/b.yaml\n")
    assert read_yaml_with_bases(deep / "run.yaml") == {"train": {"epochs": 1}}  # two up
    (tmp_path / "x" / "_base").mkdir()
    (tmp_path / "x" / "_base" / "b.yaml").write_text("train: {epochs: 2}\n")
    assert read_yaml_with_bases(deep / "run.yaml") == {"train": {"epochs": 2}}  # the nearer
    absolute = tmp_path / "_base" / "b.yaml"
    (deep / "abs.yaml").write_text(f"base: {absolute}\n")
    assert read_yaml_with_bases(deep / "abs.yaml") == {"train": {"epochs": 1}}


def test_a_missing_base_names_the_file_that_wants_it(tmp_path: Path) -> None:
    """Relative or absolute, a missing base names the including file and where it looked."""
    for name in ("nope.yaml", str(tmp_path / "gone.yaml")):
        path = tmp_path / "run.yaml"
        path.write_text(f"base: {name}\n")
        with pytest.raises(ConfigError) as info:
            read_yaml_with_bases(path)
        assert str(info.value) == (
            f"{path.resolve()}: base file {name!r} not found next to it or in any parent folder"
        )


def test_a_base_cycle_is_shown_link_by_link(tmp_path: Path) -> None:
    """a -> b -> a: every file of the cycle, in the order they include each other."""
    a, b = (tmp_path / "a.yaml").resolve(), (tmp_path / "b.yaml").resolve()
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        read_yaml_with_bases(a)
    assert str(info.value) == f"config base files form a cycle: {a} -> {b} -> {a}"


def test_broken_config_files_say_what_is_wrong(tmp_path: Path) -> None:
    """Empty file: defaults; a list, bad YAML or a missing file: an error naming the file."""
    path = tmp_path / "c.yaml"
    path.write_text("")  # an empty file is an empty mapping: all defaults
    assert read_yaml_with_bases(path) == {}
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        read_yaml_with_bases(path)
    assert str(info.value) == f"{path.resolve()}: a config file must be a mapping of keys, got list"
    path.write_text("train: [1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid YAML"):
        read_yaml_with_bases(path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_yaml_with_bases(tmp_path / "absent.yaml")


def test_experiment_name_is_the_path_below_the_last_configs_folder(tmp_path: Path) -> None:
    """Run names: the path below the innermost ``configs`` folder, else the file's stem."""
    nested = tmp_path / "configs" / "old" / "configs" / "cifar100" / "kd" / "a_b.yaml"
    assert experiment_name_for(nested) == "cifar100/kd/a_b"
    assert experiment_name_for(tmp_path / "configs" / "x.yaml") == "x"
    assert experiment_name_for(tmp_path / "configs.yaml") == "configs"  # nothing below it
    assert experiment_name_for(tmp_path / "elsewhere" / "run.yml") == "run"


def test_load_config_names_the_run_unless_the_file_does(tmp_path: Path) -> None:
    """``experiment`` from the file or an override wins over the name taken from the path."""
    path = tmp_path / "configs" / "set" / "run.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("train: {epochs: 3}\n")
    assert load_config(path).experiment == "set/run"
    path.write_text("experiment: mine\n")
    assert load_config(path).experiment == "mine"
    assert load_config(path, ["experiment=other"]).experiment == "other"


def test_validate_false_skips_only_the_registry_checks() -> None:
    """``validate=False`` (run configs of other versions) still checks keys and types."""
    cfg = load_config(None, ["model.name=not_a_model"], validate=False)
    assert cfg.model.name == "not_a_model"
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model 'not_a_model'"):
        load_config(None, ["model.name=not_a_model"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["train.epochs=x"], validate=False)  # types are always checked


# --------------------------------------------------------------------------- resolved config


def test_saved_config_is_schema_ordered_yaml_that_loads_back_equal(tmp_path: Path) -> None:
    """config.yaml: sections in schema order (experiment first), values a later
    ``figkd`` reads back unchanged, including the strings ``on``/``yes`` and nested args."""
    cfg = load_config(
        None,
        [
            "experiment=rt",
            "teacher.cache=on",
            "paper.note=yes",
            "optim.lr=0.003",
            "optim.weight_decay=1e-4",
            "schedule.milestones=[3, 5]",
            "train.max_steps_per_epoch=7",
            "loss.name=kd",
            "loss.args={temperature: 4, ce_weight: 0.1}",
        ],
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    text = path.read_text()
    top = [line.split(":")[0] for line in text.splitlines() if line and not line[0].isspace()]
    assert top == TOP_KEYS.split(", ")
    sections = [line.strip().split(":")[0] for line in text.splitlines() if line.startswith("  ")]
    assert sections[:2] == ["name", "args"]  # model: name before args, as declared
    data = load_yaml(text)
    assert data["teacher"]["cache"] == "on" and data["paper"]["note"] == "yes"
    assert data["optim"] == {
        "name": "sgd", "lr": 0.003, "momentum": 0.9, "weight_decay": 0.0001, "nesterov": False
    }
    assert data["loss"] == {"name": "kd", "args": {"temperature": 4, "ce_weight": 0.1}}
    again = load_config(path)
    assert again == cfg


# --------------------------------------------------------------------------- validation


def _with(**changes: Any) -> Config:
    """Config() with ``section__key=value`` changes, e.g. ``train__epochs=0``."""
    cfg = Config()
    for name, value in changes.items():
        section, key = name.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


@pytest.mark.parametrize(
    "changes",
    [
        {"train__epochs": 1},
        {"data__batch_size": 1},
        {"data__eval_batch_size": 1},
        {"train__eval_every": 1},
        {"train__log_every": 1},
        {"train__max_steps_per_epoch": 1},
        {"data__val_fraction": 0.0},
        {"data__val_fraction": 0.95},
        {"train__num_threads": 1},
        {"data__num_workers": 0},
        {"optim__lr": 0.5},
        {"optim__lr": 1e-6},
        {"schedule__gamma": 0.5},
        {"schedule__gamma": 2.0},
        {"schedule__warmup_epochs": 0},
        # optim.scale_milestones(2): floor(150·2/240) = floor(180·2/240) = floor(210·2/240)
        # = 1, so equal milestones are a real schedule (x0.001 after epoch 1), not a typo
        {"schedule__milestones": [1, 1, 1]},
        {"schedule__milestones": []},
        {"train__device": "cpu"},
        {"train__device": "cuda:1"},
        {"train__device": "mps"},
        {"train__device": "xpu:0"},
    ],
)
def test_values_on_the_edge_of_their_range_are_accepted(changes: dict[str, Any]) -> None:
    """Each bound is inclusive or exclusive as its message says (>= 1, >= 0, > 0, [0, 1))."""
    validate_config(_with(**changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train__epochs": 0}, "train.epochs must be >= 1, got 0"),
        ({"data__batch_size": 0}, "data.batch_size must be >= 1, got 0"),
        ({"data__eval_batch_size": -3}, "data.eval_batch_size must be >= 1, got -3"),
        ({"train__eval_every": 0}, "train.eval_every must be >= 1, got 0"),
        ({"train__log_every": 0}, "train.log_every must be >= 1, got 0"),
        ({"train__max_steps_per_epoch": 0}, "train.max_steps_per_epoch must be >= 1, got 0"),
        ({"data__val_fraction": 1.0}, "data.val_fraction must be in [0, 1), got 1.0"),
        ({"data__val_fraction": -0.1}, "data.val_fraction must be in [0, 1), got -0.1"),
        ({"train__num_threads": 0}, "train.num_threads must be >= 1, got 0"),
        ({"data__num_workers": -1}, "data.num_workers must be >= 0, got -1"),
        ({"optim__lr": 0.0}, "optim.lr must be > 0, got 0.0"),
        (
            {"schedule__milestones": [3, 2]},
            "schedule.milestones must be in ascending order (repeats allowed), got [3, 2]",
        ),
        ({"schedule__gamma": 0.0},
         "schedule.gamma must be > 0 (the LR factor per milestone), got 0.0"),
        ({"schedule__warmup_epochs": -1}, "schedule.warmup_epochs must be >= 0, got -1"),
        ({"train__device": "tpu"}, "train.device 'tpu': use auto, cpu, cuda, cuda:N or mps"),
        ({"train__device": "gpu:0"}, "train.device 'gpu:0': use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_values_out_of_range_are_refused_with_key_value_and_bound(
    changes: dict[str, Any], message: str
) -> None:
    """The message names the key, the bound and the value given (wording of each check)."""
    assert _validation_error(_with(**changes)) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.name=tiny_cnn", "model.args.depth=2"],
            "model 'tiny_cnn' does not accept option(s) depth; accepted: width",
        ),
        (
            ["model.args.width=2"],
            "model 'resnet8x4' does not accept option(s) width; accepted: none",
        ),
        (
            ["teacher.name=tiny_cnn", "teacher.args.depth=2"],
            "teacher 'tiny_cnn' does not accept option(s) depth; accepted: width",
        ),
        (
            ["model.name=tiny_cnn", "model.args.num_classes=10"],
            "model option(s) num_classes are set by figkd itself; remove them",
        ),
        (
            ["teacher.name=resnet8", "teacher.args.in_channels=1"],
            "teacher option(s) in_channels are set by figkd itself; remove them",
        ),
        (
            ["teacher.checkpoint=t.pt"],
            "teacher.checkpoint is set but teacher.name is not: name the architecture",
        ),
        (
            ["data.args.foo=1"],
            "dataset 'cifar100' does not accept option(s) foo in data.args; accepted: label_type",
        ),
        (
            ["data.dataset=digits", "data.args.foo=1"],
            "dataset 'digits' does not accept option(s) foo in data.args; accepted: none",
        ),
        (
            ["data.dataset=uint8-shards"],
            "dataset 'uint8-shards' has no default preset: set data.preset",
        ),
        (["loss.name=figkd", "loss.args.beta=abc"], "loss.args.beta: expected a number, got 'abc'"),
    ],
)
def test_registry_option_errors_name_the_option_and_the_fix(
    overrides: list[str], message: str
) -> None:
    """Reserved constructor options (num_classes, in_channels) are figkd's: the message must
    say so, not that the model lacks the option."""
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("overrides", "prefix"),
    [
        (["teacher.name=resnet8x5"], "teacher.name: unknown model 'resnet8x5'"),
        (["data.preset=cifr"], "data.preset: unknown transform preset 'cifr'"),
        (["schedule.name=linear"], "schedule.name: unknown schedule 'linear'"),
        (["optim.name=lion"], "optim.name: unknown optimizer 'lion'"),
        (["loss.name=kd", "loss.args.temprature=4"], "loss.args: loss 'kd' got unknown option"),
    ],
)
def test_registry_name_errors_start_with_the_config_key(overrides: list[str], prefix: str) -> None:
    """An unknown registry name is reported under the config key that holds it."""
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(prefix)


def test_valid_teacher_dataset_preset_and_model_options_pass() -> None:
    """Options a model, teacher and reader accept pass, with a preset set where none is default."""
    cfg = load_config(
        None,
        [
            "model.name=tiny_cnn",
            "model.args.width=4",
            "teacher.name=tiny_cnn",
            "teacher.args.width=8",
            "teacher.checkpoint=t.pt",
            "data.dataset=uint8-shards",
            "data.preset=cifar",
            "data.args.train_per_class=2",
        ],
    )
    assert (cfg.teacher.args, cfg.data.args) == ({"width": 8}, {"train_per_class": 2})


# --------------------------------------------------------------------------- help text


def test_help_lists_every_key_with_type_default_and_help() -> None:
    """``figkd --help``'s key list: one line per leaf key (2 top-level + model 2 + teacher 11
    + loss 2 + data 10 + optim 5 + schedule 4 + train 16 + paper 3 = 55), defaults in YAML
    flow style."""
    lines = describe_config()
    assert len(lines) == 55
    assert lines[0] == (
        "  experiment (str | null) = null  run name; default: config path under configs/"
    )
    expected = [
        ("  optim.lr (float | null) = null  initial LR; default 0.05, or 0.01 for "
         "ShuffleNet/MobileNetV2 models"),
        ("  schedule.milestones (list[int]) = [150, 180, 210]  multistep: LR x gamma after "
         "each of these epochs"),
        "  train.amp ('none' | 'bf16' | 'fp16') = none  autocast precision",
        "  model.args (dict[str, Any]) = {}  extra constructor options, e.g. {width: 8}",
        ("  train.eval_teacher (bool) = true  evaluate the teacher once and record it in "
         "summary.json"),
        ("  teacher.cache_max_gb (float) = 16.0  largest teacher-logit cache teacher.cache "
         "may build (GB)"),
        ("  teacher.cache_batch_size (int | null) = null  teacher forwards per batch while "
         "building the cache (default: data.eval_batch_size on a GPU, data.batch_size on a "
         "CPU); only the build's speed depends on it"),
        "  data.num_workers (int) = 4  DataLoader worker processes",
    ]
    for line in expected:
        assert line in lines


def test_describe_config_shows_factory_defaults_and_refuses_a_field_without_one() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Part:
        names: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
        depth: int = 3

    assert describe_config(Part) == ["  names (list[str]) = [a, b]", "  depth (int) = 3"]

    @dataclasses.dataclass
    class Broken:
        size: int

    with pytest.raises(TypeError, match="config field size has no default"):
        describe_config(Broken)
