"""Typed experiment configuration: dataclasses are the schema, YAML sets values.

A config file is YAML whose keys mirror :class:`Config`.  It may name one or
more ``base:`` files (merged first, deepest first, dicts merged key by key),
and the command line adds ``key=value`` overrides (``optim.lr=0.01``,
``loss.args.beta=4``); their values are read as YAML, except that text settings
(``experiment``, ``data.root``, ...) keep the text as typed.  Every key is checked
against the dataclasses: a key that does not exist is an error with the nearest valid
names, never ignored; values are coerced to the declared type or rejected (NaN and
infinite optimizer settings too, and a number where a file should give text: YAML has
already read ``experiment: 01`` as 1, so the file must quote it).  Names of models, losses,
datasets, presets, optimizers and schedules are checked against their
registries by :func:`validate_config`.

>>> cfg = load_config("configs/cifar100/figkd/resnet32x4_resnet8x4.yaml", ["train.epochs=10"])
>>> cfg.train.epochs
10
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message says which and how to fix it."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelConfig:
    """The network being trained (the student when distilling)."""

    name: str = field(default="resnet8x4", metadata=_help("architecture (see `figkd models`)"))
    args: dict[str, Any] = field(
        default_factory=dict, metadata=_help("extra constructor options, e.g. {width: 8}")
    )


@dataclass
class TeacherConfig:
    """The frozen teacher: architecture and the checkpoint file it loads."""

    name: str | None = field(default=None, metadata=_help("teacher architecture"))
    checkpoint: str | None = field(
        default=None, metadata=_help("teacher weights (a `figkd train` checkpoint or a state dict)")
    )
    sha256: str | None = field(
        default=None, metadata=_help("expected SHA-256 of the checkpoint file (optional)")
    )
    args: dict[str, Any] = field(default_factory=dict, metadata=_help("constructor options"))
    cache_logits: bool = field(
        default=False,
        metadata=_help("compute teacher logits once per image (only without augmentation)"),
    )
    cache: Literal["none", "auto", "on"] = field(
        default="none",
        metadata=_help(
            "teacher-logit cache over every crop/flip view, on disk, reused across runs: "
            "auto falls back to the live teacher when it cannot apply, on makes that an error"
        ),
    )
    cache_dir: str = field(
        default=".cache/teacher_logits",
        metadata=_help("folder of teacher-logit cache files (relative to the working dir)"),
    )
    cache_views: Literal["used", "all"] = field(
        default="used",
        metadata=_help(
            "used: compute the crop/flip views this run draws (added to the file, so other "
            "seeds compute only what is missing); all: every view of every image up front"
        ),
    )
    cache_dtype: Literal["float16", "float32"] = field(
        default="float16", metadata=_help("storage precision of cached teacher logits")
    )
    cache_max_gb: float = field(
        default=16.0, metadata=_help("largest teacher-logit cache teacher.cache may build (GB)")
    )
    cache_batch_size: int | None = field(
        default=None,
        metadata=_help(
            "teacher forwards per batch while building the cache (default: data.eval_batch_size "
            "on a GPU, data.batch_size on a CPU); only the build's speed depends on it"
        ),
    )


@dataclass
class LossConfig:
    """The method: a registered loss and its options."""

    name: str = field(default="ce", metadata=_help("method (ce, kd, figkd, ...)"))
    args: dict[str, Any] = field(
        default_factory=dict, metadata=_help("loss options, e.g. {beta: 2.0}")
    )


@dataclass
class DataConfig:
    """Dataset, split and input pipeline."""

    dataset: str = field(default="cifar100", metadata=_help("registered dataset name"))
    root: str | None = field(
        default=None, metadata=_help("dataset folder (default: $FIGKD_DATA/<name> or ./data)")
    )
    preset: str | None = field(
        default=None, metadata=_help("transform preset (default: the dataset's own)")
    )
    args: dict[str, Any] = field(default_factory=dict, metadata=_help("reader options"))
    val_fraction: float = field(
        default=0.1,
        metadata=_help("share of train held out to select best.pt (0: no validation split)"),
    )
    val_seed: int = field(default=0, metadata=_help("seed of the validation carve"))
    batch_size: int = field(default=64, metadata=_help("global training batch size"))
    eval_batch_size: int = field(default=256, metadata=_help("evaluation batch size"))
    loader: Literal["auto", "fast", "torch"] = field(
        default="auto",
        metadata=_help("auto: in-memory batch path when the preset allows it, else DataLoader"),
    )
    num_workers: int = field(default=4, metadata=_help("DataLoader worker processes"))


@dataclass
class OptimConfig:
    """Optimizer (paper recipe: SGD, momentum 0.9; weight decay 5e-4, the CRD/mdistiller value,
    since the paper's is lost in our copy)."""

    name: str = field(default="sgd", metadata=_help("optimizer (sgd, adamw)"))
    lr: float | None = field(
        default=None,
        metadata=_help("initial LR; default 0.05, or 0.01 for ShuffleNet/MobileNetV2 models"),
    )
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    weight_decay: float = field(default=5e-4, metadata=_help("L2 weight decay"))
    nesterov: bool = field(default=False, metadata=_help("Nesterov momentum"))


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, evaluated once per epoch (epochs counted from 1)."""

    name: str = field(default="multistep", metadata=_help("multistep, cosine or constant"))
    milestones: list[int] = field(
        default_factory=lambda: [150, 180, 210],
        metadata=_help("multistep: LR x gamma after each of these epochs"),
    )
    gamma: float = field(default=0.1, metadata=_help("multistep decay factor"))
    warmup_epochs: int = field(default=0, metadata=_help("linear LR warm-up epochs"))


@dataclass
class TrainConfig:
    """Length of training and run-time switches."""

    epochs: int = field(default=240, metadata=_help("training epochs"))
    seed: int = field(default=0, metadata=_help("seed (the CLI's --seeds runs several)"))
    device: str = field(default="auto", metadata=_help("auto (CUDA if available), cpu, cuda:N"))
    amp: Literal["none", "bf16", "fp16"] = field(
        default="none", metadata=_help("autocast precision")
    )
    channels_last: bool = field(default=False, metadata=_help("NHWC memory format"))
    compile: bool = field(default=False, metadata=_help("torch.compile the models"))
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = field(
        default="default",
        metadata=_help("torch.compile mode; reduce-overhead captures CUDA graphs of the step"),
    )
    deterministic: bool = field(
        default=False, metadata=_help("deterministic algorithms (bit-exact resume)")
    )
    deterministic_warn_only: bool = field(
        default=False,
        metadata=_help(
            "with deterministic: an op without a deterministic kernel warns instead of "
            "stopping the run (compare the weights' SHA-256 to know)"
        ),
    )
    sync_bn: bool = field(default=False, metadata=_help("SyncBatchNorm under DDP (CUDA only)"))
    eval_every: int = field(default=1, metadata=_help("evaluate every N epochs (and the last)"))
    log_every: int = field(default=50, metadata=_help("progress line every N steps (no tty)"))
    progress: Literal["auto", "bar", "lines", "none"] = field(
        default="auto", metadata=_help("auto: a bar on a terminal, plain lines otherwise")
    )
    max_steps_per_epoch: int | None = field(
        default=None, metadata=_help("cap on steps per epoch (smoke tests)")
    )
    eval_teacher: bool = field(
        default=True, metadata=_help("evaluate the teacher once and record it in summary.json")
    )
    num_threads: int | None = field(
        default=None,
        metadata=_help(
            "CPU threads for torch ops (default: torch's; 1 is fastest for tiny models)"
        ),
    )


@dataclass
class PaperConfig:
    """The paper's reported number for this experiment, shown beside ours by `figkd report`."""

    top1: float | None = field(default=None, metadata=_help("reported top-1 accuracy (%)"))
    table: int | None = field(default=None, metadata=_help("table number in the paper"))
    note: str | None = field(default=None, metadata=_help("free text (setting, column)"))


@dataclass
class Config:
    """One experiment: everything needed to reproduce a run except the seed list."""

    experiment: str | None = field(
        default=None, metadata=_help("run name; default: config path under configs/")
    )
    output_dir: str = field(default="runs", metadata=_help("runs go to <output_dir>/<experiment>"))
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)


# --------------------------------------------------------------------------- dict <-> dataclass

_NONE = type(None)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is _NONE else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to the annotation ``tp`` or a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in (a for a in args if a is not _NONE):
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(error)
        if len(errors) == 1:  # ``X | None``: X's own message says more than the union's
            raise ConfigError(f"{errors[0]} (or null)")
        raise ConfigError(  # pragma: no cover - no field mixes two types today
            f"{where}: expected {_type_name(tp)}, got {value!r}"
        )
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(repr(c) for c in choices)}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping (key: value), got {value!r}")
        return {str(k): copy.deepcopy(v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if math.isnan(number):  # every comparison with NaN is False: bounds checks pass it
            raise ConfigError(f"{where}: expected a number, got NaN")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # str(value) could not give back what was typed: YAML reads 01 as 1, 1:30 as 90
            raise ConfigError(
                f"{where}: expected text, got the number {value!r}; YAML reads unquoted 01, "
                f"1.10, 1:30 or 2024_01 as numbers, so quote it in the file "
                f"({where.rsplit('.', 1)[-1]}: \"...\")"
            )
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")  # pragma: no cover


def _unknown_key(cls: type, key: str, where: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    # the full dotted key: what the user types (train.epochs=3, not epochs=3)
    close = [f"{where}.{c}" if where else c for c in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    place = f"{where}.{key}" if where else key
    section = f" in {where!r}" if where else ""
    return ConfigError(
        f"unknown config key {place!r}.{hint} Valid keys{section}: {', '.join(valid)}."
    )


def _build(cls: type, data: Any, where: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(cls, str(key), where)
    values = {
        key: _coerce(value, hints[key], f"{where}.{key}" if where else key)
        for key, value in data.items()
    }
    return cls(**values)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from plain data, rejecting unknown keys and bad types."""
    return _build(Config, data)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dicts (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------- YAML files

BASE_KEY = "base"


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``; nested dicts merge key by key."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _find_base(name: str, including: Path) -> Path:
    """``name`` relative to the including file, else to any of its parent folders."""
    candidate = Path(name)
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
    else:
        for folder in (including.parent, *including.parent.parents):
            if (folder / candidate).is_file():
                return (folder / candidate).resolve()
    raise ConfigError(
        f"{including}: base file {name!r} not found next to it or in any parent folder"
    )


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false (any case) are bools.

    YAML 1.1 also reads on/off/yes/no as bools, so ``teacher.cache=on`` would become True
    and be refused as "not one of 'none', 'auto', 'on'".
    """


_BOOL = "tag:yaml.org,2002:bool"
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """``text`` parsed with :class:`YamlLoader` (config files, overrides, run configs)."""
    return yaml.load(text, Loader=YamlLoader)


def read_yaml_with_bases(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged mapping of ``path`` and its ``base:`` files (bases first)."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"config base files form a cycle: {cycle}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file must be a mapping of keys, got {type(data).__name__}"
        )
    bases = data.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for name in bases:
        merged = deep_merge(
            merged, read_yaml_with_bases(_find_base(str(name), path), (*_chain, path))
        )
    return deep_merge(merged, data)


# --------------------------------------------------------------------------- overrides


def _split_override(text: str) -> tuple[list[str], str]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], "0.01"), or a ConfigError showing the form."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"bad override {text!r}: write key=value with a dotted key, e.g. optim.lr=0.01"
        )
    return key.split("."), raw


def _yaml_value(raw: str) -> Any:
    """The override text read as YAML; blank is None, unparsable text stays text."""
    try:
        return load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01); the value is read as YAML."""
    path, raw = _split_override(text)
    return path, _yaml_value(raw)


#: what YAML reads as null; a text setting given one of these is unset (None)
_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def _is_text(tp: Any) -> bool:
    """``str`` or ``str | None``: settings whose value is text whatever it looks like."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return all(a is str or a is _NONE for a in args) and str in args


def _text_value(raw: str) -> Any:
    """An override of a text setting: its text as typed (YAML would read ``experiment=01`` as
    the integer 1, ``1:30`` as 90 and ``2024_01`` as 202401); quotes and nulls still count."""
    text = raw.strip()
    if text in _YAML_NULLS:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return _yaml_value(text)
    return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``key=value`` in ``data``; keys are checked against the schema.

    Values are read as YAML, except for text settings (``experiment``, ``data.root``,
    ``teacher.sha256``, ...), which keep the text as typed.
    """
    data = copy.deepcopy(data)
    for text in overrides:
        path, raw = _split_override(text)
        field_type = _check_path(path)
        value = _text_value(raw) if _is_text(field_type) else _yaml_value(raw)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return data


def _check_path(path: list[str]) -> Any:
    """The annotation of the field ``path`` names (``Any`` below a free-form ``args`` dict,
    checked by the registry later); raise if it names no field."""
    cls: Any = Config
    where = ""
    for part in path:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return Any
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise _unknown_key(cls, part, where)
        cls = typing.get_type_hints(cls)[part]
        where = f"{where}.{part}" if where else part
    return cls


# --------------------------------------------------------------------------- loading


def experiment_name_for(path: str | Path) -> str:
    """``configs/cifar100/kd/a_b.yaml`` -> ``cifar100/kd/a_b``; elsewhere the file stem."""
    path = Path(path).resolve()
    parts = path.with_suffix("").parts
    if "configs" in parts:
        index = len(parts) - 1 - parts[::-1].index("configs")
        rest = parts[index + 1 :]
        if rest:
            return "/".join(rest)
    return path.stem


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    validate: bool = True,
) -> Config:
    """Read ``path`` (with its bases), apply ``overrides``, check keys, types and names."""
    data: dict[str, Any] = read_yaml_with_bases(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    cfg = config_from_dict(data)
    if cfg.experiment is None and path is not None:
        cfg.experiment = experiment_name_for(path)
    if validate:
        validate_config(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------- validation

#: the paper uses LR 0.01 for these students (ShuffleNet-V1/V2, MobileNet-V2), 0.05 otherwise
LOW_LR_MODELS = ("ShuffleV1", "ShuffleV2", "MobileNetV2", "mobilenetv2_imagenet")
DEFAULT_LR = 0.05
LOW_LR = 0.01


def default_lr(model_name: str) -> float:
    """The paper's initial LR for ``model_name``."""
    from figkd.models import MODELS

    canonical = MODELS.canonical(model_name) if model_name in MODELS else model_name
    return LOW_LR if canonical in LOW_LR_MODELS else DEFAULT_LR


def _check_kwargs(
    kind: str, name: str, target: Any, args: Mapping[str, Any], reserved: Sequence[str]
) -> None:
    # reserved names first: they are not in ``allowed``, so the unknown-option check would
    # otherwise claim the model does not accept e.g. num_classes
    clash = sorted(set(args) & set(reserved))
    if clash:
        raise ConfigError(
            f"{kind} option(s) {', '.join(clash)} are set by figkd itself; remove them"
        )
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in reserved]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{kind} {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(allowed) or 'none'}"
        )


def validate_config(cfg: Config) -> None:
    """Check every registered name and option; raise ConfigError with suggestions."""
    from figkd.data import DATASETS, PRESETS
    from figkd.engine.optim import OPTIMIZERS, SCHEDULES
    from figkd.losses import LOSSES, build_loss
    from figkd.losses.base import LossOptionError
    from figkd.models import MODELS
    from figkd.registry import UnknownNameError

    def lookup(registry: Any, name: str, where: str) -> Any:
        try:
            return registry.get(name)
        except UnknownNameError as error:
            raise ConfigError(f"{where}: {error}") from None

    reserved_model = ("num_classes", "in_channels")
    lookup(MODELS, cfg.model.name, "model.name")
    _check_kwargs(
        "model", cfg.model.name, MODELS.get(cfg.model.name), cfg.model.args, reserved_model
    )
    if cfg.teacher.name is not None:
        lookup(MODELS, cfg.teacher.name, "teacher.name")
        _check_kwargs(
            "teacher",
            cfg.teacher.name,
            MODELS.get(cfg.teacher.name),
            cfg.teacher.args,
            reserved_model,
        )
    elif cfg.teacher.checkpoint is not None:
        raise ConfigError(
            "teacher.checkpoint is set but teacher.name is not: name the architecture"
        )

    lookup(LOSSES, cfg.loss.name, "loss.name")
    try:
        build_loss(cfg.loss.name, **cfg.loss.args)
    except LossOptionError as error:
        raise ConfigError(f"loss.args.{error.option}: {error.problem}") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"loss.args: {error}") from None

    entry = lookup(DATASETS, cfg.data.dataset, "data.dataset")
    reader_options = entry.options()
    unknown = sorted(set(cfg.data.args) - set(reader_options))
    if unknown:
        raise ConfigError(
            f"dataset {entry.name!r} does not accept option(s) {', '.join(unknown)} in data.args; "
            f"accepted: {', '.join(reader_options) or 'none'}"
        )
    if cfg.data.preset is not None:
        lookup(PRESETS, cfg.data.preset, "data.preset")
    elif entry.default_preset is None:
        raise ConfigError(f"dataset {entry.name!r} has no default preset: set data.preset")

    lookup(OPTIMIZERS, cfg.optim.name, "optim.name")
    lookup(SCHEDULES, cfg.schedule.name, "schedule.name")

    positive = {
        "train.epochs": cfg.train.epochs,
        "data.batch_size": cfg.data.batch_size,
        "data.eval_batch_size": cfg.data.eval_batch_size,
        "train.eval_every": cfg.train.eval_every,
        "train.log_every": cfg.train.log_every,
    }
    if cfg.train.max_steps_per_epoch is not None:
        positive["train.max_steps_per_epoch"] = cfg.train.max_steps_per_epoch
    if cfg.teacher.cache_batch_size is not None:
        positive["teacher.cache_batch_size"] = cfg.teacher.cache_batch_size
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.train.deterministic_warn_only and not cfg.train.deterministic:
        raise ConfigError(
            "train.deterministic_warn_only=true only changes deterministic mode: also set "
            "train.deterministic=true, or drop the warn-only switch"
        )
    if cfg.train.num_threads is not None and cfg.train.num_threads < 1:
        raise ConfigError(f"train.num_threads must be >= 1, got {cfg.train.num_threads}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    finite = {
        "optim.lr": cfg.optim.lr,
        "optim.momentum": cfg.optim.momentum,
        "optim.weight_decay": cfg.optim.weight_decay,
        "schedule.gamma": cfg.schedule.gamma,
    }
    for key, number in finite.items():
        if number is not None and math.isinf(number):
            raise ConfigError(f"{key} must be a finite number, got {number}")
    if cfg.optim.lr is not None and cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if sorted(cfg.schedule.milestones) != cfg.schedule.milestones:
        raise ConfigError(
            "schedule.milestones must be in ascending order (repeats allowed), "
            f"got {cfg.schedule.milestones}"
        )
    if cfg.schedule.gamma <= 0:
        raise ConfigError(f"schedule.gamma must be > 0 (the LR factor per milestone), got "
                          f"{cfg.schedule.gamma}")
    if cfg.schedule.warmup_epochs < 0:
        raise ConfigError(f"schedule.warmup_epochs must be >= 0, got {cfg.schedule.warmup_epochs}")
    device = cfg.train.device
    if device != "auto" and device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"train.device {device!r}: use auto, cpu, cuda, cuda:N or mps")


def resolved_lr(cfg: Config) -> float:
    """``optim.lr`` or the paper's default for the model being trained."""
    return cfg.optim.lr if cfg.optim.lr is not None else default_lr(cfg.model.name)


# --------------------------------------------------------------------------- help text


def describe_config(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per key: ``name (type) = default  help`` (for ``--help`` epilogs)."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            lines.extend(describe_config(tp, f"{key}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"config field {key} has no default; give it one so it can be shown")
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        text = f.metadata.get("help", "")
        lines.append(f"  {key} ({_type_name(tp)}) = {shown}  {text}".rstrip())
    return lines
