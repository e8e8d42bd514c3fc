"""FiGKD against the baselines on real images, over seeds, by one command (``figkd study``).

A *tier* fixes the data, the teacher -> student pairs, the schedule and the seeds:

- ``smoke``: 2 CPU cores, minutes. The real Tiny-ImageNet-100 subset at 32x32, cut to a few
  images per class (a folder of symlinks), a ResNet8 teacher and a ``tiny_cnn`` student,
  6 epochs. It proves the study works end to end; its accuracies are not evidence.
- ``cpu``: 2 CPU cores, about an hour. 100 training images per class, ResNet20 ->
  ResNet8, 15 epochs (teacher 24): real but small-scale evidence, far from the paper's regime.
- ``short``: a GPU. The paper's recipe with the schedule scaled to 60 epochs (milestones
  150/180/210 of 240 -> 37/45/52, see :func:`scale_milestones`), all 500 images per class at
  32x32, ResNet32x4 -> ResNet8x4.
- ``paper``: a GPU. The full 240-epoch recipe, ResNet32x4 -> ResNet8x4 and VGG13 -> VGG8.

For every pair the study trains the teacher once (or reuses it: the teacher's run folder is
named by a checksum of its result-relevant config, and its checkpoint's SHA-256 is pinned in
every student config, so a changed teacher can never be mixed into a resumed student), then
the students (the teacher-free CE beside the teachers; the others join the queue the moment
their own teacher is ready, not after every first-round run): CE, KD, DKD, DIST, MLKD (two
views: the data layer gives weak + strong views because the loss declares
``num_views = 2``), KD with logit standardization and FiGKD, plus
any FiGKD ablations asked for, over the tier's seeds.  Every run is an ordinary engine run
(``runs/<...>/<pair>/<method>/seed<k>``, resumable with the engine's ``--resume``); the study
only writes configs, launches them (in this process, or ``parallel`` subprocesses of
``figkd train|distill <config> --seeds k --resume``) and aggregates their ``summary.json``.
A second invocation skips finished runs and resumes killed ones.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import inspect
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figkd.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    default_lr,
    save_config,
    validate_config,
)
from figkd.engine.optim import PAPER_EPOCHS, scale_milestones
from figkd.engine.report import aggregate, find_summaries, mean_std, write_report
from figkd.engine.run_dir import FAILURE, read_failure

#: DKD's warm-up (mdistiller: 20 of 240 epochs), scaled with the schedule
DKD_WARMUP_EPOCHS = 20


def scale_warmup(epochs: int, warmup: int = DKD_WARMUP_EPOCHS) -> int:
    """DKD's warm-up scaled like the schedule (rounded up, at least 1): 60 -> 5, 240 -> 20."""
    return max(1, math.ceil(warmup * epochs / PAPER_EPOCHS))


# --------------------------------------------------------------------------- what runs


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair; ``name`` is the folder of its runs."""

    teacher: str
    student: str
    teacher_args: dict[str, Any] = field(default_factory=dict)
    student_args: dict[str, Any] = field(default_factory=dict)
    #: per-pair loss options by method folder (``"dkd"``, ``"kd_ls"``), over the method's own:
    #: the values tuned for this pair, as in ``configs/cifar100/<method>/<teacher>_<student>.yaml``
    loss_args: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{_model_label(self.teacher, self.teacher_args, '-')}_" + _model_label(
            self.student, self.student_args, "-"
        )

    @property
    def label(self) -> str:
        return (
            f"{_model_label(self.teacher, self.teacher_args)} → "
            f"{_model_label(self.student, self.student_args)}"
        )


def _model_label(name: str, args: dict[str, Any], sep: str = " ") -> str:
    extra = "".join(f"{sep}{k[0]}{v}" for k, v in sorted(args.items()))
    return f"{name}{extra}"


@dataclass(frozen=True)
class Method:
    """One student row: a registered loss with options."""

    name: str  # experiment folder
    label: str  # shown in the table
    loss: str
    args: dict[str, Any] = field(default_factory=dict)
    group: str = "main"  # "main" or the ablation it belongs to


def main_methods(epochs: int) -> list[Method]:
    """CE, KD, DKD, DIST, MLKD, KD + logit standardization, FiGKD (defaults of each loss)."""
    return [
        Method("ce", "CE", "ce"),
        Method("kd", "KD", "kd"),
        Method("dkd", "DKD", "dkd", {"warmup_epochs": scale_warmup(epochs)}),
        Method("dist", "DIST", "dist"),
        Method("mlkd", "MLKD", "mlkd"),
        Method("kd_ls", "KD + LS", "kd", {"standardize": True}),
        Method("figkd", "FiGKD", "figkd"),
    ]


#: Haar 2d's detail loss over a variant's at one beta: over the cpu tier's training it settles
#: at 2.99 (1d: one band mean against three; exactly 3 for a white difference) and 1.75
#: (bior1.3) (docs/results/cpu_tiny_imagenet.md)
_DETAIL_RATIOS: dict[str, tuple[dict[str, Any], float]] = {
    "1d": ({"transform": "1d"}, 3.0),
    "bior1.3": ({"wavelet": "bior1.3"}, 1.75),
}

#: FiGKD ablations (options of the ``figkd`` loss); the default row is the main FiGKD run
ABLATIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "bands": [("low", {"bands": "low"}), ("both", {"bands": "both"})],
    # both readings of Table 11: the details of levels 1..J, or of level J only
    "level": [("2", {"level": 2}), ("3", {"level": 3}),
              ("2-deepest", {"level": 2, "detail_levels": "deepest"}),
              ("3-deepest", {"level": 3, "detail_levels": "deepest"})],
    "transform": [("1d", {"transform": "1d"})],
    "noise": [(f"{s:g}", {"noise_std": s}) for s in (0.05, 0.1, 0.2, 0.5)],
    "wavelet": [("db2", {"wavelet": "db2"}), ("bior1.3", {"wavelet": "bior1.3"})],
    # 0.125 and 0.25 were added once 0.5 came out best on the cpu tier, to find the peak
    "beta": [(f"{b:g}", {"beta": b}) for b in (0.125, 0.25, 0.5, 1.0, 4.0, 8.0)],
    # Eq. 6 is lost in our copy of the paper: the literal per-sample norm ("sum") is 25x our
    # per-band mean at 100 classes, and it weighs db2/bior1.3/1d/levels differently
    "reduction": [("sum", {"reduction": "sum"})],
    # 1d and bior1.3 at the beta that gives their detail loss Haar 2d's size at Haar betas 2
    # (the default) to 0.25, so a gain can be told from a smaller weight and each variant gets
    # a beta sweep on Haar's scale
    "matched": [(f"{name}-beta{beta * ratio:g}", {**option, "beta": beta * ratio})
                for beta in (2.0, 1.0, 0.5, 0.25)
                for name, (option, ratio) in _DETAIL_RATIOS.items()],
}
#: what the main FiGKD run uses for each ablated option (the reference row)
ABLATION_DEFAULTS = {
    "bands": "high",
    "level": "1",
    "transform": "2d",
    "noise": "0",
    "wavelet": "haar",
    "beta": "2",
    "reduction": "mean",
    "matched": "haar-2d-beta2",
}


def ablation_methods(groups: Iterable[str]) -> list[Method]:
    """FiGKD students of whole groups (``beta``), of single rows (``beta=0.5``: e.g. to
    confirm a pick on new seeds), or of ``all`` groups; each row once, in the order given."""
    entries = list(groups)
    if "all" in entries:
        entries = list(ABLATIONS)
    methods: dict[str, Method] = {}
    for entry in entries:
        group, _, wanted = entry.partition("=")
        if group not in ABLATIONS:
            hint = "; KEY=VALUE overrides go before --ablations" if "=" in entry else ""
            raise ValueError(
                f"unknown ablation {entry!r}; choose from {', '.join(ABLATIONS)} or all "
                f"(or one row, GROUP=VALUE){hint}"
            )
        rows = ABLATIONS[group]
        if wanted:
            rows = [(value, args) for value, args in rows if value == wanted]
            if not rows:
                raise ValueError(
                    f"ablation {group} has no row {wanted!r}; choose from "
                    f"{', '.join(value for value, _ in ABLATIONS[group])}"
                )
        for value, args in rows:
            name = f"figkd_{group}-{value}"
            methods.setdefault(
                name, Method(name, f"FiGKD {group}={value}", "figkd", args, group)
            )
    return list(methods.values())


@dataclass(frozen=True)
class Tier:
    """Data, pairs, schedule and seeds of one study size."""

    name: str
    description: str
    pairs: tuple[Pair, ...]
    epochs: int
    teacher_epochs: int
    seeds: tuple[int, ...] = (0, 1, 2)
    dataset: str = "tiny-imagenet"
    preset: str = "tiny-imagenet-32"
    train_per_class: int | None = None  # None: every training image
    test_per_class: int | None = None
    val_fraction: float = 0.1
    batch_size: int = 64
    #: the teacher's batch (None: ``batch_size``), its LR scaled linearly from the model's
    #: default (Goyal et al. 2017).  The paper distils from teachers trained elsewhere, so
    #: their recipe is ours to pick; a bigger batch means fewer, fuller steps for the
    #: launch-bound resnet32x4, which is the GPU tiers' critical path (docs/reproduction.md)
    teacher_batch_size: int | None = None
    num_workers: int = 4  # DataLoader workers (MLKD's two views; the fast path needs none)
    parallel: int = 1
    threads: int | None = None  # CPU threads per run (None: cores / parallel)
    gpu: bool = False  # written for a GPU (a warning is printed without one)
    #: ``key=value`` overrides of how the runs execute, applied before the command line's
    #: (which win); only execution keys, so a tier's runs keep their config keys
    overrides: tuple[str, ...] = ()

    @property
    def milestones(self) -> list[int]:
        return scale_milestones(self.epochs)

    @property
    def teacher_milestones(self) -> list[int]:
        return scale_milestones(self.teacher_epochs)

    def teacher_recipe(self, model: str) -> tuple[int, float | None]:
        """The teacher's batch size and LR (None: the model's default LR, unscaled)."""
        if self.teacher_batch_size is None or self.teacher_batch_size == self.batch_size:
            return self.batch_size, None
        scale = self.teacher_batch_size / self.batch_size
        return self.teacher_batch_size, default_lr(model) * scale


#: mdistiller's DKD beta and the logit-standardization log's (tau, weight) for vgg13 -> vgg8
#: (configs/cifar100/{dkd,kd_ls}/vgg13_vgg8.yaml; a test keeps the two in step)
VGG13_VGG8: dict[str, dict[str, Any]] = {
    "dkd": {"beta": 6.0},
    "kd_ls": {"temperature": 3.0, "kd_weight": 9.0},
}

#: mdistiller's DKD beta for the thin CIFAR ResNets (resnet56 -> resnet20, resnet110 ->
#: resnet32) and the logit-standardization log's (tau, weight) for resnet110 -> resnet32
#: (configs/cifar100/{dkd,kd_ls}/resnet110_resnet32.yaml), for the ``cpu`` tier's
#: resnet20 -> resnet8, which has no tuned values of its own
THIN_RESNETS: dict[str, dict[str, Any]] = {
    "dkd": {"beta": 2.0},
    "kd_ls": {"temperature": 2.0, "kd_weight": 9.0},
}

TIERS: dict[str, Tier] = {
    "smoke": Tier(
        name="smoke",
        description=(
            "2 CPU cores, minutes: 24 train + 10 test images per class of the 100 classes, "
            "32x32, resnet8 -> tiny_cnn (width 16), 6 epochs (teacher 10); proves the pipeline"
        ),
        pairs=(Pair("resnet8", "tiny_cnn", {}, {"width": 16}),),
        epochs=6,
        teacher_epochs=10,
        train_per_class=24,
        test_per_class=10,
        num_workers=0,
        threads=1,  # shared 2-core CPUs: one thread per run is fastest and steadiest
    ),
    "cpu": Tier(
        name="cpu",
        description=(
            "2 CPU cores, about an hour: 100 train (90 + 10 validation) + 50 test images per "
            "class, 32x32, resnet20 -> resnet8, 15 epochs (teacher 24); small-scale evidence "
            "while the GPU tiers wait for a device"
        ),
        pairs=(Pair("resnet20", "resnet8", loss_args=THIN_RESNETS),),
        epochs=15,
        teacher_epochs=24,
        train_per_class=100,
        num_workers=0,
        parallel=2,
        threads=1,
        # the 6 distilled methods of a seed share one teacher pass per epoch instead of one
        # each (docs/results/cpu_tiny_imagenet.md, "Cost": 278 MB on disk; KD as fast as CE)
        overrides=("teacher.cache=auto",),
    ),
    "short": Tier(
        name="short",
        description=(
            "GPU: paper recipe scaled to 60 epochs (milestones 37/45/52), 500 train (450 + 50 "
            "validation) + 50 test images per class, 32x32, resnet32x4 -> resnet8x4 (teacher: "
            "batch 256, LR 0.2)"
        ),
        pairs=(Pair("resnet32x4", "resnet8x4"),),
        epochs=60,
        teacher_epochs=60,
        teacher_batch_size=256,
        parallel=4,
        gpu=True,
    ),
    "paper": Tier(
        name="paper",
        description=(
            "GPU: the paper's 240-epoch recipe (milestones 150/180/210), 500 train (450 + 50 "
            "validation) + 50 test images per class, 32x32, resnet32x4 -> resnet8x4 and "
            "vgg13 -> vgg8 (teachers: batch 256, LR scaled x4)"
        ),
        # resnet32x4 -> resnet8x4's tuned values are the losses' defaults
        pairs=(Pair("resnet32x4", "resnet8x4"), Pair("vgg13", "vgg8", loss_args=VGG13_VGG8)),
        epochs=240,
        teacher_epochs=240,
        teacher_batch_size=256,
        parallel=4,
        gpu=True,
    ),
}


# --------------------------------------------------------------------------- data


def locate_tiny_imagenet(root: str | os.PathLike[str] | None, cache_dir: Path) -> Path:
    """The Tiny-ImageNet folder: ``root`` (a folder, its parent, or a ``.tar`` unpacked once
    into ``cache_dir``), else ``$FIGKD_DATA``/``./data``, else the 100-class subset in
    ``./.cache`` or ``../shared/data`` (folder or tar)."""
    from figkd.data import extract_tiny_imagenet_tar, resolve_root

    if root is not None:
        path = Path(root).expanduser()
        if path.is_file() and path.name.endswith(".tar"):
            return extract_tiny_imagenet_tar(path, cache_dir)
        return _files_root(resolve_root("tiny-imagenet", path))
    try:
        return _files_root(resolve_root("tiny-imagenet"))
    except FileNotFoundError as error:
        fallback = error
    for base in (Path(".cache"), Path("..") / "shared" / "data"):
        folder = base / "tiny-imagenet-100a"
        if (folder / "wnids.txt").is_file():
            return folder.resolve()
        tar = base / "tiny-imagenet-100a.tar"
        if tar.is_file():
            return extract_tiny_imagenet_tar(tar, cache_dir)
    raise fallback


def _files_root(path: Path | None) -> Path:
    """``resolve_root``'s answer for a dataset read from files (``None`` only for the
    file-less synthetic ones, which a study cannot subset)."""
    if path is None:
        raise ValueError("a study needs a dataset read from files; this one has none")
    return path


def study_dataset(name: str | None) -> str | None:
    """The canonical registry name of ``--dataset`` (``None``: the tier's tiny-imagenet)."""
    if name is None:
        return None
    from figkd.data import DATASETS

    return DATASETS.canonical(name)


def subset_args(tier: Tier) -> dict[str, Any]:
    """Reader options that make a per-class subset, for datasets other than tiny-imagenet
    (whose subsets are folders of symlinks, :func:`make_subset`)."""
    if tier.dataset == "tiny-imagenet":
        return {}
    from figkd.data import get_dataset_info

    given = {"train_per_class": tier.train_per_class, "test_per_class": tier.test_per_class}
    wanted = {k: v for k, v in given.items() if v is not None}
    accepted = get_dataset_info(tier.dataset).options()
    refused = [k for k in wanted if k not in accepted]
    if refused:
        raise ValueError(
            f"dataset {tier.dataset!r} cannot take per-class subsets ({', '.join(refused)}); "
            "use --dataset uint8-shards or tiny-imagenet"
        )
    return wanted


def locate_dataset(tier: Tier, root: str | os.PathLike[str] | None) -> Path:
    """The root folder of ``tier.dataset`` (not tiny-imagenet), checked by reading it once."""
    from figkd.data import load_dataset, resolve_root

    path = _files_root(resolve_root(tier.dataset, root))
    options = subset_args(tier)
    for split in ("train", "test"):
        load_dataset(tier.dataset, path, split, **options)  # fails early, naming missing parts
    return path.resolve()


def make_subset(
    source: Path,
    dest_parent: Path,
    train_per_class: int | None,
    test_per_class: int | None,
    *,
    build: bool = True,
) -> Path:
    """A Tiny-ImageNet folder of symlinks holding the first ``train_per_class`` training
    images of each class (sorted file names) and the first ``test_per_class`` labelled val
    images of each class (annotation order).  Built once; ``None`` keeps every image.
    ``build=False`` only names the folder (``study --plan`` writes nothing)."""
    if train_per_class is None and test_per_class is None:
        return source
    tag = f"{source.name}-train{train_per_class or 'all'}-test{test_per_class or 'all'}"
    folder = dest_parent / tag
    marker = folder / ".figkd-complete"
    recipe = {"source": str(source.resolve()), "train": train_per_class, "test": test_per_class}
    if not build or (marker.is_file() and json.loads(marker.read_text()) == recipe):
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in ("wnids.txt", "words.txt"):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    wnids = sorted(set((source / "wnids.txt").read_text().split()))
    for wnid in wnids:
        images = source / "train" / wnid / "images"
        names = sorted(n for n in os.listdir(images) if not n.startswith("."))
        if train_per_class is not None:
            names = names[:train_per_class]
        out = folder / "train" / wnid / "images"
        out.mkdir(parents=True)
        for name in names:
            os.symlink((images / name).resolve(), out / name)
    lines = (source / "val" / "val_annotations.txt").read_text().splitlines()
    kept, count = [], dict.fromkeys(wnids, 0)
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in count:
            continue
        if test_per_class is None or count[parts[1]] < test_per_class:
            count[parts[1]] += 1
            kept.append(line)
    (folder / "val" / "images").mkdir(parents=True)
    for line in kept:
        name = line.split("\t")[0]
        os.symlink((source / "val" / "images" / name).resolve(), folder / "val" / "images" / name)
    (folder / "val" / "val_annotations.txt").write_text("".join(f"{x}\n" for x in kept))
    marker.write_text(json.dumps(recipe))
    return folder


# --------------------------------------------------------------------------- the plan


@dataclass
class Job:
    """One engine run: a config file and a seed."""

    kind: str  # "train" (teacher, CE) or "distill"
    config: Config
    config_path: Path
    seed: int
    pair: Pair
    method: Method | None  # None for the teacher

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir) / str(self.config.experiment) / f"seed{self.seed}"

    @property
    def label(self) -> str:
        who = self.method.name if self.method is not None else "teacher"
        return f"{self.pair.name}/{who} seed{self.seed}"


@dataclass
class Study:
    """Everything one invocation does; built by :func:`plan_study`."""

    tier: Tier
    out: Path  # <out>/<tier>
    data_root: Path
    methods: list[Method]
    seeds: list[int]
    device: str
    amp: str
    parallel: int
    threads: int | None
    overrides: list[str]
    teachers: dict[str, Job] = field(default_factory=dict)  # pair name -> teacher job
    #: methods whose distilled runs go first; the others join once these have all ended
    first: list[str] = field(default_factory=list)
    #: a finished student distilled from another teacher file is set aside under
    #: ``<out>/.stale/`` and trained again, instead of failing (records carried from a
    #: checkout whose teacher this one retrained)
    replace_stale: bool = False

    def teacher_checkpoint(self, pair: Pair) -> Path:
        """The weights-only file students distil from (see :func:`teacher_weights`)."""
        return self.teachers[pair.name].run_dir / "checkpoints" / TEACHER_WEIGHTS


#: config keys that say how a run executes, not what it computes (left out of the teacher key)
_EXECUTION_KEYS = (
    "experiment",
    "output_dir",
    "data.root",
    "data.num_workers",
    "train.device",
    "train.progress",
    "train.log_every",
    "train.num_threads",
    "train.eval_teacher",
    "train.compile",
    "teacher.cache",  # cache, cache_dir, cache_dtype, ...: where a student's teacher logits live
)


def config_key(cfg: Config, data_key: str) -> str:
    """12 hex digits of SHA-256 over what determines the trained weights, plus the data.

    Only values that differ from :class:`Config`'s defaults count, so a config key added to
    figkd later (at its default) does not orphan the teachers trained before it.
    """
    flat = _flatten(config_to_dict(cfg))
    default = _flatten(config_to_dict(Config()))
    kept = {
        k: v
        for k, v in flat.items()
        if not k.startswith(_EXECUTION_KEYS) and (k not in default or default[k] != v)
    }
    text = json.dumps({"config": kept, "data": data_key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _base_config(
    study: Study,
    *,
    model: str,
    args: dict[str, Any],
    epochs: int,
    batch_size: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    tier = study.tier
    return {
        "output_dir": str(study.out),
        "model": {"name": model, "args": dict(args)},
        "data": {
            "dataset": tier.dataset,
            "root": str(study.data_root),
            "preset": tier.preset,
            "val_fraction": tier.val_fraction,
            "batch_size": batch_size or tier.batch_size,
            "num_workers": tier.num_workers,
            **({"args": subset_args(tier)} if subset_args(tier) else {}),
        },
        **({"optim": {"lr": lr}} if lr is not None else {}),
        "schedule": {"milestones": scale_milestones(epochs)},
        "train": {
            "epochs": epochs,
            "device": study.device,
            "amp": study.amp,
            "progress": "lines" if study.parallel > 1 else "none",  # subprocess logs get lines
            "num_threads": study.threads,
        },
    }


def _finish_config(study: Study, data: dict[str, Any], path: Path, write: bool = True) -> Config:
    cfg = config_from_dict(apply_overrides(data, study.overrides))
    validate_config(cfg)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_config(cfg, path)
    return cfg


def data_key(tier: Tier, data_root: Path) -> str:
    """What the teacher's data is: dataset, preset and subset sizes (not where it lies)."""
    name = data_root.name.split("-train")[0]
    return f"{tier.dataset}:{name}:{tier.preset}:{tier.train_per_class}:{tier.test_per_class}"


def plan_study(
    tier: Tier,
    out: str | os.PathLike[str],
    data_root: Path,
    *,
    methods: Sequence[Method] | None = None,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    amp: str = "none",
    parallel: int | None = None,
    threads: int | None = None,
    overrides: Sequence[str] = (),
    first: Sequence[str] = (),
    replace_stale: bool = False,
    deterministic_teacher: bool = False,
    write: bool = True,
) -> Study:
    """The study: teacher configs written to ``<out>/<tier>/configs`` (students follow in
    :func:`student_jobs`, once the teachers' checksums are known).  ``write=False`` plans
    without writing the configs (``study --plan``).  ``first``: see :func:`run_study`;
    ``replace_stale``: see :class:`Study`; ``deterministic_teacher``: the teachers train under
    deterministic algorithms (warn-only), so another checkout can retrain them bit for bit
    (``tools/device/check_determinism.py`` says whether a GPU does)."""
    parallel = max(1, parallel if parallel is not None else tier.parallel)
    if threads is None:
        threads = tier.threads or max(1, (os.cpu_count() or 1) // parallel)
    study = Study(
        tier=tier,
        out=Path(out) / tier.name,
        data_root=data_root,
        methods=list(methods if methods is not None else main_methods(tier.epochs)),
        seeds=list(seeds if seeds is not None else tier.seeds),
        device=device,
        amp=amp,
        parallel=parallel,
        threads=threads,
        overrides=[*tier.overrides, *overrides],
        first=list(first),
        replace_stale=replace_stale,
    )
    configs = study.out / "configs"
    key_data = data_key(tier, data_root)
    for pair in tier.pairs:
        batch_size, lr = tier.teacher_recipe(pair.teacher)
        data = _base_config(
            study, model=pair.teacher, args=pair.teacher_args, epochs=tier.teacher_epochs,
            batch_size=batch_size, lr=lr,
        )
        if deterministic_teacher:  # warn-only: the SHA-256 judges, a missing kernel must not kill
            data["train"].update(deterministic=True, deterministic_warn_only=True)
        data["experiment"] = "pending"
        draft = config_from_dict(apply_overrides(data, study.overrides))
        data["experiment"] = f"teachers/{pair.teacher}-{config_key(draft, key_data)}"
        path = configs / f"{data['experiment'].replace('/', '_')}.yaml"
        cfg = _finish_config(study, data, path, write=write)
        study.teachers[pair.name] = Job("train", cfg, path, 0, pair, None)
    return study


def student_jobs(
    study: Study, teacher_sha256: dict[str, str], write: bool = True, teacher_free: bool = True
) -> list[Job]:
    """Student configs.  A distilled student is planned once its teacher exists (it pins the
    teacher's SHA-256); a teacher-free one (CE) for every pair, teacher or not, unless
    ``teacher_free`` is False."""
    from figkd.losses import LOSSES

    jobs: list[Job] = []
    tier = study.tier
    for pair in tier.pairs:
        for method in study.methods:
            needs_teacher = LOSSES.get(method.loss).needs_teacher
            if needs_teacher and pair.name not in teacher_sha256:
                continue
            if not needs_teacher and not teacher_free:
                continue
            data = _base_config(
                study, model=pair.student, args=pair.student_args, epochs=tier.epochs
            )
            data["experiment"] = f"{pair.name}/{method.name}"
            args = {**method.args, **pair.loss_args.get(method.name, {})}
            data["loss"] = {"name": method.loss, "args": args}
            kind = "train"
            if LOSSES.get(method.loss).needs_teacher:
                kind = "distill"
                data["teacher"] = {
                    "name": pair.teacher,
                    "args": dict(pair.teacher_args),
                    "checkpoint": str(study.teacher_checkpoint(pair).resolve()),
                    "sha256": teacher_sha256[pair.name],
                }
            path = study.out / "configs" / pair.name / f"{method.name}.yaml"
            cfg = _finish_config(study, data, path, write)
            jobs.extend(Job(kind, cfg, path, seed, pair, method) for seed in study.seeds)
    return jobs


# --------------------------------------------------------------------------- running

#: a finished teacher's final weights without optimizer/RNG state: half the size of
#: ``last.pt``, which matters when a study's state must travel between machines
TEACHER_WEIGHTS = "teacher.pt"
#: what ``teacher.pt`` keeps of ``last.pt``
_WEIGHT_KEYS = ("format", "model", "arch", "num_classes", "epoch", "config")


def teacher_weights(run_dir: Path) -> Path:
    """``checkpoints/teacher.pt`` of a finished teacher run, written once from ``last.pt``.

    Students pin this file's SHA-256, so it is never rewritten once it exists.
    """
    from figkd.engine.checkpoint import load_weights_only, save_atomic
    from figkd.engine.run_dir import RunDir

    paths = RunDir(run_dir)
    target = paths.checkpoints / TEACHER_WEIGHTS
    if target.is_file():
        return target
    last = paths.last
    if not last.is_file():
        raise FileNotFoundError(
            f"{run_dir} finished but has neither {TEACHER_WEIGHTS} nor last.pt; train the "
            f"teacher again (delete {run_dir}) or import a state that holds {TEACHER_WEIGHTS}"
        )
    payload = load_weights_only(last, map_location="cpu")
    kept = {k: payload[k] for k in _WEIGHT_KEYS if k in payload}
    if isinstance(kept.get("config"), dict):
        kept["config"] = portable_config(kept["config"])
    save_atomic(kept, target)
    return target


def portable_config(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every execution key (:data:`_EXECUTION_KEYS`: paths, device, threads,
    cache place) at its default, so that ``teacher.pt`` is a function of what was computed.

    Students pin the file's SHA-256.  With the study's folder or the data's path inside, the
    same weights retrained in another checkout (the device's path to the repository is not
    promised) would get another SHA-256, and every finished student's record would go stale.
    """
    default = _flatten(config_to_dict(Config()))
    out = copy.deepcopy(data)
    for key in _flatten(data):
        if key.startswith(_EXECUTION_KEYS):
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                node = node[part]
            if key in default:
                node[leaf] = copy.deepcopy(default[key])
            else:  # not a Config field (cannot happen for a validated config): drop it
                del node[leaf]
    return out



def run_state(run_dir: Path, epochs: int, teacher_sha256: str | None = None) -> str:
    """"finished", "partial" (a checkpoint to resume), "new", "failed" (stopped with an error,
    its ``failure.json`` says why; tried again, from ``last.pt`` if it has one), or "stale"
    (finished, but distilled from a teacher file other than ``teacher_sha256``)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        used = (data.get("teacher") or {}).get("sha256")
        if teacher_sha256 is not None and used is not None and used != teacher_sha256:
            return "stale"
        if data.get("status") == "finished" and int(data.get("epochs", -1)) == epochs:
            return "finished"
    if (run_dir / FAILURE).is_file():
        return "failed"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "new"


def _recorded_teacher_sha256(run_dir: Path) -> str | None:
    """The teacher file's SHA-256 that a finished run's ``summary.json`` names, if any."""
    data: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return (data.get("teacher") or {}).get("sha256")


def _failure_line(run_dir: Path, failure: dict[str, Any] | None = None) -> str:
    """Where and why a failed run stopped: its ``failure.json``, or that record already read."""
    failure = failure if failure is not None else read_failure(run_dir) or {}
    where = f"epoch {failure.get('epoch', '?')}"
    if failure.get("stage") == "setup":  # data, models, teacher or its cache: before the epoch
        where = f"setup before {where}"
    return f"{where}: {failure.get('reason') or 'unknown error'}"


@dataclass
class Outcome:
    job: Job
    status: str  # "skipped" (already finished), "trained", "resumed", "failed"
    seconds: float = 0.0
    error: str | None = None


Printer = Callable[[str], None]


def _run_in_process(job: Job, say: Printer) -> None:
    from figkd.engine.launch import run_seeds

    epochs = job.config.train.epochs
    every = max(1, epochs // 6)

    def progress(seed: int, record: Any) -> None:  # long runs: a line every ~1/6 of the run
        if epochs >= 20 and (record.epoch % every == 0 or record.epoch == epochs):
            test = record.data.get("test", {}).get("top1")
            shown = f", test top-1 {test:.2f}" if test is not None else ""
            say(f"    {job.label}: epoch {record.epoch}/{epochs}{shown}")

    run_seeds(copy.deepcopy(job.config), [job.seed], resume=True, on_epoch_end=progress)


#: ``python -m figkd.cli`` would load figkd.cli twice (as __main__ and as figkd.cli), and the
#: command modules' ``Command`` would not be ``__main__.Command``: call ``main`` instead
_ENTRY = "import sys; from figkd.cli import main; sys.exit(main())"


def _command(job: Job) -> list[str]:
    return [
        sys.executable,
        "-c",
        _ENTRY,
        job.kind,
        str(job.config_path),
        "--seeds",
        str(job.seed),
        "--resume",
    ]


def _run_subprocess(job: Job, log_dir: Path, env: dict[str, str]) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{job.label.replace('/', '_').replace(' ', '_')}.log"
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(_command(job))}\n")
        handle.flush()
        result = subprocess.run(
            _command(job), stdout=handle, stderr=subprocess.STDOUT, env=env, check=False
        )
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:]).strip()
        raise RuntimeError(f"exit status {result.returncode} (log {log}): {tail}")


def execute(
    jobs: Sequence[Job],
    parallel: int,
    log_dir: Path,
    say: Printer = print,
    gpus: Sequence[str] | None = None,
    followers: Callable[[Outcome], Sequence[Job]] | None = None,
    replace_stale: bool = False,
) -> list[Outcome]:
    """Run ``jobs`` (skipping finished ones), ``parallel`` at a time in subprocesses when > 1.

    A stale run (finished, distilled from another teacher file than its config pins) fails,
    or with ``replace_stale`` is set aside (:func:`set_aside`) and trained again.

    ``followers(outcome)`` names the jobs that an ended job makes possible (a teacher's
    distilled students); they join the queue at once, so they take the slots as soon as their
    teacher is ready instead of waiting for every job given first.  Outcomes come back in
    the order the jobs were given or joined.
    """
    outcomes: list[Outcome] = []
    position: dict[int, int] = {}  # id(job) -> place in the queue, for the outcomes' order
    total = 0  # runs to train known so far (followers add to it)
    starts = itertools.count()  # next() is atomic: the pool's threads share it

    def settle(outcome: Outcome) -> list[tuple[Job, str]]:
        """Record an outcome; returns the runnable jobs it releases."""
        outcomes.append(outcome)
        released = list(followers(outcome)) if followers is not None else []
        return triage(released) if released else []

    def triage(batch: Sequence[Job]) -> list[tuple[Job, str]]:
        """Jobs to run, with "trained" or "resumed"; finished and stale ones settled here."""
        nonlocal total
        todo: list[tuple[Job, str]] = []
        done: list[Outcome] = []
        for job in batch:
            position.setdefault(id(job), len(position))
            state = run_state(job.run_dir, job.config.train.epochs, job.config.teacher.sha256)
            if state == "finished":
                done.append(Outcome(job, "skipped"))
                continue
            if state == "stale" and replace_stale:
                moved = set_aside(job.run_dir, Path(job.config.output_dir))
                say(f"  {job.label}: distilled from another teacher; set aside in {moved}, "
                    "trained again")
                state = "new"
            if state == "stale":
                error = (
                    f"{job.run_dir} was distilled from another teacher than "
                    f"{job.config.teacher.checkpoint} (SHA-256 {job.config.teacher.sha256}); "
                    "train it again with --replace-stale (it is set aside, not deleted), "
                    "or use another --out (a teacher retrained on a CPU whose kernels use "
                    "other vector instructions, such as cpu_capability AVX2 against AVX512 in "
                    "the runs' summary.json versions, on another GPU model, or without "
                    "--deterministic-teacher, gets other bytes)"
                )
                say(f"  {job.label}: FAILED: {error}")
                done.append(Outcome(job, "failed", error=error))
                continue
            if state == "failed":  # the error may not come back (memory, a full disk)
                say(f"  {job.label}: failed before ({_failure_line(job.run_dir)}); "
                    "trying again")
                has_checkpoint = (job.run_dir / "checkpoints" / "last.pt").is_file()
                state = "partial" if has_checkpoint else "new"
            if state == "new" and job.run_dir.exists():
                shutil.rmtree(job.run_dir)  # killed before its first checkpoint: start clean
            todo.append((job, "resumed" if state == "partial" else "trained"))
        skipped = sum(o.status == "skipped" for o in done)
        if skipped:
            say(f"  {skipped} finished run(s) skipped")
        total += len(todo)
        for outcome in done:
            todo += settle(outcome)
        return todo

    def one(job: Job, status: str) -> Outcome:
        index = next(starts)
        start = time.perf_counter()
        try:
            if parallel == 1:
                _run_in_process(job, say)
            else:
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
                _run_subprocess(job, log_dir, env)
        except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
            outcome = Outcome(job, "failed", time.perf_counter() - start, str(error))
            say(f"  [{index + 1}/{total}] {job.label}: FAILED: {error}")
            return outcome
        seconds = time.perf_counter() - start
        summary = _read_summary(job.run_dir)
        test = (summary or {}).get("final", {}).get("test", {}).get("top1")
        shown = f"test top-1 {test:.2f}" if test is not None else "no summary"
        say(f"  [{index + 1}/{total}] {job.label}: {status}, {shown}, {seconds:.0f} s")
        return Outcome(job, status, seconds)

    queue = triage(jobs)
    if parallel == 1:
        while queue:
            job, status = queue.pop(0)
            queue += settle(one(job, status))
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            # pool threads take jobs in submission order, which is the queue's
            running = {pool.submit(one, job, status) for job, status in queue}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    running |= {pool.submit(one, j, st) for j, st in settle(future.result())}
    return sorted(outcomes, key=lambda o: position[id(o.job)])


STALE = ".stale"


def set_aside(run_dir: Path, out: Path) -> Path:
    """Move ``run_dir`` to ``<out>/.stale/<its path below out>.<n>`` and return where.

    Kept, not deleted (it is evidence of a session), and hidden, so that neither the table
    nor ``figkd state`` sees it as a run.
    """
    relative = run_dir.resolve().relative_to(out.resolve())
    for n in itertools.count(1):
        target = out / STALE / relative.parent / f"{relative.name}.{n}"
        if not target.exists():
            break
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir, target)
    return target


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def prepare_caches(study: Study) -> None:
    """Decode the uint8 caches once, before parallel runs would each decode them."""
    from figkd.data import build_uint8_cache, get_preset

    spec = get_preset(study.tier.preset)
    if not getattr(spec, "fast_path", False):
        return
    size = spec.size if getattr(spec, "resize", False) else None
    for split in ("train", "test"):
        build_uint8_cache(
            study.tier.dataset, study.data_root, split, size, num_workers=study.tier.num_workers
        )


def epochs_left(job: Job) -> int:
    """Epochs ``job`` still has to train (its run folder's ``last.pt`` / ``summary.json``)."""
    from figkd.analysis.study_state import run_progress  # study_state imports this module

    status, epoch = run_progress(job.run_dir)
    total = job.config.train.epochs
    return 0 if status == "finished" else max(total - epoch, 0)


def most_epochs_left_first(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` with the most epochs left first, the given order among equals.

    When a study continues over several sessions, the students of one teacher are at
    different epochs; starting the longest first shortens the whole (the longest-processing-
    time rule) and starts the runs that have not begun (e.g. FiGKD after a cut) at once
    instead of after the nearly done ones."""
    left = {job.run_dir: epochs_left(job) for job in jobs}
    return sorted(jobs, key=lambda job: left[job.run_dir], reverse=True)  # stable


def run_study(
    study: Study, say: Printer = print, gpus: Sequence[str] | None = None
) -> dict[str, Any]:
    """Teachers and the teacher-free students first; each teacher's distilled students join
    the queue as soon as it is ready.  Returns the manifest written to study.json.

    With ``study.first`` (method names) only those methods' distilled runs join then; the
    others are held until every one of them has ended, so a session cut short has whole
    rows (all seeds of a method) rather than every run half-trained."""
    from figkd.models.checkpoint import file_sha256

    start = time.perf_counter()
    logs = study.out / "logs"
    if study.parallel > 1:
        prepare_caches(study)
    unique = list({job.run_dir: job for job in study.teachers.values()}.values())  # shared once
    pairs_of: dict[Path, list[str]] = {}
    for pair in study.tier.pairs:
        pairs_of.setdefault(study.teachers[pair.name].run_dir, []).append(pair.name)
    shas: dict[str, str] = {}
    first = set(study.first)
    waiting: set[int] = set()  # id() of released first-method runs that have not ended
    held: list[Job] = []  # the other distilled runs, until ``waiting`` is empty

    def followers(outcome: Outcome) -> list[Job]:
        """What an ended run releases: a teacher its students, the last first-method run
        the held ones."""
        waiting.discard(id(outcome.job))
        released = students_of(outcome)
        if first and released:
            now = [job for job in released if job.method is not None and job.method.name in first]
            waiting.update(id(job) for job in now)
            held.extend(job for job in released if id(job) not in waiting)
            if now and len(now) < len(released):
                say(f"  first {', '.join(sorted({j.method.name for j in now if j.method}))}: "
                    f"{len(released) - len(now)} other run(s) wait until these {len(now)} end")
            released = now
        if not waiting and held:
            say(f"first methods ended: {len(held)} held run(s) join the queue")
            released += held
            held.clear()
        return released

    def students_of(outcome: Outcome) -> list[Job]:
        """A teacher's distilled students, pinned to its weights' SHA-256, once it finished."""
        job = outcome.job
        if job.run_dir not in pairs_of:  # not a teacher
            return []
        names = pairs_of[job.run_dir]
        finished = run_state(job.run_dir, job.config.train.epochs) == "finished"
        if outcome.status == "failed" or not finished:
            for name in names:
                say(f"  no teacher for {name}: its distilled students are left out")
            return []
        sha = file_sha256(teacher_weights(job.run_dir))
        shas.update(dict.fromkeys(names, sha))
        jobs = most_epochs_left_first(student_jobs(study, dict.fromkeys(names, sha),
                                                   teacher_free=False))
        say(f"distilled students of {' and '.join(names)} ({len(jobs)} runs) join the queue:")
        return jobs

    # Students without a teacher (CE) need no teacher: they train beside the teachers, in the
    # slots a lone teacher leaves idle (on a briefly lent GPU, that is device time saved).
    free = student_jobs(study, {})
    say(f"teachers ({len(unique)}) and students without a teacher ({len(free)}):")
    outcomes = execute([*unique, *free], study.parallel, logs, say, gpus, followers=followers,
                       replace_stale=study.replace_stale)
    manifest = {
        "tier": study.tier.name,
        "teachers": {
            name: {"run_dir": str(job.run_dir), "sha256": shas.get(name)}
            for name, job in study.teachers.items()
        },
        "runs": [
            {
                "run": o.job.label,
                "run_dir": str(o.job.run_dir),
                "config": str(o.job.config_path),
                "status": o.status,
                "seconds": round(o.seconds, 1),
                "error": o.error,
            }
            for o in outcomes
        ],
        "wall_time_s": time.perf_counter() - start,
    }
    return manifest


# --------------------------------------------------------------------------- the table


@dataclass
class Result:
    """One row: a method's runs aggregated over seeds."""

    label: str
    experiment: str
    seeds: list[int | None]
    last: list[float]
    best: list[float]
    wall: list[float]
    #: seeds that stopped with an error and have not finished since: (seed, where and why)
    failed: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.last)

    def last_stats(self) -> tuple[float, float | None]:
        return mean_std(self.last)

    def best_stats(self) -> tuple[float, float | None]:
        return mean_std(self.best)

    def wall_mean(self) -> float:
        return sum(self.wall) / len(self.wall) if self.wall else math.nan


def distilled_from(summary: dict[str, Any], teacher_sha256: str | None) -> bool:
    """False for a run distilled from another teacher file than ``teacher_sha256`` (a stale
    run: its numbers belong to another teacher's table); True when either is unknown."""
    used = (summary.get("teacher") or {}).get("sha256")
    return teacher_sha256 is None or used is None or used == teacher_sha256


def collect(
    folder: Path,
    label: str,
    teacher_sha256: str | None = None,
    seeds: Collection[int] | None = None,
) -> Result | None:
    """Finished seeds under ``folder`` (one experiment) as a :class:`Result`, leaving out
    runs distilled from another teacher file than ``teacher_sha256`` and, when ``seeds`` is
    given, runs of other seeds (a study's table covers its own seeds: runs of extra seeds,
    e.g. held out to confirm a pick, do not change it); seeds that failed (``failure.json``,
    no finish since) are listed in :attr:`Result.failed`."""
    if not folder.is_dir():
        return None
    failed = [f for f in _failed_seeds(folder, teacher_sha256) if seeds is None or f[0] in seeds]
    summaries = [
        s for s in find_summaries([folder])
        if s.get("status") == "finished" and distilled_from(s, teacher_sha256)
        and (seeds is None or s.get("seed") in seeds)
    ]
    summaries.sort(key=lambda s: s.get("seed", 0))
    last: list[float] = []
    best: list[float] = []
    wall: list[float] = []
    ran: list[int | None] = []
    for s in summaries:
        top1 = (s.get("final") or {}).get("test", {}).get("top1")
        if top1 is None:
            continue
        ran.append(s.get("seed"))
        last.append(float(top1))
        chosen = (s.get("best") or {}).get("test", {}).get("top1")
        if chosen is not None:
            best.append(float(chosen))
        if s.get("wall_time_s") is not None:
            wall.append(float(s["wall_time_s"]))
    if not last and not failed:
        return None
    return Result(label, str(folder), ran, last, best, wall, failed)


def _failed_seeds(folder: Path, teacher_sha256: str | None) -> list[tuple[int | None, str]]:
    """(seed, "epoch k: reason") of each failed run below ``folder``, by seed; hidden
    folders (runs set aside) and runs of another teacher file are left out."""
    found = []
    for path in sorted(folder.rglob(FAILURE)):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if (path.parent / "summary.json").is_file():
            continue  # finished since (a finish removes failure.json; this is a leftover)
        failure = read_failure(path.parent) or {}
        if not distilled_from(failure, teacher_sha256):
            continue
        found.append((failure.get("seed"), _failure_line(path.parent, failure)))
    return sorted(found, key=lambda item: (item[0] is None, item[0] or 0))


def pm(mean: float, std: float | None) -> str:
    """``mean ± std`` with two decimals (the mean alone for a single seed)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def paired_delta(row: Result, ref: Result) -> str:
    """``row`` minus ``ref`` at the last epoch.  Over two or more shared seeds: mean ± sample
    std of the per-seed differences (a seed gives every method the same initial student and
    the same batches, so pairing removes that shared part of the spread); otherwise the
    difference of the means."""
    ref_by_seed = dict(zip(ref.seeds, ref.last, strict=True))
    diffs = [
        value - ref_by_seed[seed]
        for seed, value in zip(row.seeds, row.last, strict=True)
        if seed is not None and seed in ref_by_seed
    ]
    if len(diffs) >= 2:
        mean, std = mean_std(diffs)
        return f"{mean:+.2f} ± {std:.2f}"
    if not row.last or not ref.last:
        return "–"
    return f"{row.last_stats()[0] - ref.last_stats()[0]:+.2f}"


def results_table(rows: Sequence[Result], reference: str | None, ref_name: str) -> str:
    """Markdown table: top-1 last and best-val (mean ± sample std), Δ vs a reference row
    (paired by seed, :func:`paired_delta`)."""
    ref = next((r for r in rows if r.label == reference), None)
    lines = [
        (f"| method | seeds | test top-1, last epoch | test top-1, best val | Δ last vs {ref_name} "
         "| time / run |"),
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mean, std = r.last_stats()
        best = pm(*r.best_stats()) if r.best else "–"
        skip = r is ref or r.label.startswith("teacher")
        delta = "" if skip or ref is None else paired_delta(r, ref)
        seeds = f"{r.n} of {r.n + len(r.failed)}" if r.failed else str(r.n)
        lines.append(
            f"| {r.label} | {seeds} | {pm(mean, std)} | {best} | {delta} "
            f"| {duration(r.wall_mean())} |"
        )
    return "\n".join(lines)


def failure_notes(rows: Sequence[Result]) -> list[str]:
    """One line per failed seed of ``rows``, for under their table: the table averages only
    finished seeds, so a reader must see which seeds are missing and why."""
    lines = [
        f"- {r.label}, seed {seed}: failed at {where}" for r in rows for seed, where in r.failed
    ]
    if lines:
        lines.insert(0, "Failed runs (their `failure.json`; the means above leave them out):")
        lines.insert(1, "")
    return lines


def machine() -> str:
    """CPU model (as lscpu's "Model name"), cores, and the GPU when CUDA is available."""
    from figkd.engine.run_dir import cpu_capability, cpu_model

    text = f"{cpu_model()} ({cpu_capability()}), {os.cpu_count()} CPU cores"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            text += f"; GPU: {', '.join(names)}"
        else:
            text += "; no GPU"
    except Exception:  # noqa: BLE001, S110 - a description only: no GPU detail is no error
        pass
    return text


def epochs_per_commit(summaries: list[dict[str, Any]]) -> str:
    """Which commits trained the finished runs' epochs: a study chained over sessions may
    have changed code between them, and a run's own ``git`` names only its last session.

    Runs from before ``segments`` were recorded count under their ``git`` when they were
    never resumed, else as "not recorded".
    """
    epochs: dict[str, int] = {}
    runs: dict[str, set[str]] = {}
    for summary in summaries:
        segments = summary.get("segments")
        if segments is None:
            git = None if summary.get("resumed") else summary.get("git")
            segments = [{"from_epoch": 1, "to_epoch": summary.get("epochs", 0), "git": git}]
        for segment in segments:
            git = segment.get("git")
            key = (f"{git['commit'][:12]}{' (+ local changes)' if git.get('dirty') else ''}"
                   if git else "not recorded")
            epochs[key] = epochs.get(key, 0) + segment["to_epoch"] - segment["from_epoch"] + 1
            runs.setdefault(key, set()).add(str(summary.get("run_dir")))
    if not epochs:
        return "no finished runs"
    return "epochs trained per git commit: " + "; ".join(
        f"{key} {epochs[key]} epoch(s) of {len(runs[key])} run(s)" for key in sorted(epochs))


def current_teacher_sha256(study: Study, pair: Pair) -> str | None:
    """SHA-256 of the pair's finished teacher's ``teacher.pt`` in this folder (None if none)."""
    from figkd.models.checkpoint import file_sha256

    path = study.teacher_checkpoint(pair)
    return file_sha256(path) if path.is_file() else None


def write_study_report(
    study: Study, manifest: dict[str, Any] | None, command: str, wall_s: float | None
) -> Path:
    """``study.md`` (tables + provenance) and the engine's ``report.md``/``report.csv``."""
    from figkd.engine.run_dir import git_commit, versions

    tier = study.tier
    out = study.out
    v = versions()
    git = git_commit()
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"# FiGKD study, `{tier.name}` tier: {tier.dataset} ({study.data_root.name})",
        "",
        f"- command: `{command}`",
        f"- date: {when}; machine: {machine()}",
        f"- versions: figkd {v['figkd']}, torch {v['torch']}, torchvision {v['torchvision']}, "
        f"numpy {v['numpy']}, PyWavelets {v['pywavelets']}, Python {v['python']}, "
        f"CUDA {v['cuda']}; {v['platform']}"
        + (f"; git {git['commit'][:12]}{' (+ local changes)' if git.get('dirty') else ''}"
           if git else ""),
        f"- tier: {tier.description}",
        (f"- data: preset `{tier.preset}`, {tier.train_per_class or 'all'} train / "
         f"{tier.test_per_class or 'all'} test images per class, {tier.val_fraction:.0%} of "
         f"train held out as validation; batch {tier.batch_size}"),
        (f"- schedule: students {tier.epochs} epochs (LR x0.1 after epochs "
         f"{', '.join(map(str, tier.milestones))}), teachers {tier.teacher_epochs} epochs "
         f"(after {', '.join(map(str, tier.teacher_milestones))}); seeds "
         f"{' '.join(map(str, study.seeds))}; device `{study.device}`, amp `{study.amp}`, "
         f"{study.parallel} run(s) at a time"),
    ]
    if wall_s is not None:
        parts.append(f"- wall time of this invocation: {duration(wall_s)}")
    if manifest is not None:
        counts: dict[str, int] = {}
        for run in manifest["runs"]:
            counts[run["status"]] = counts.get(run["status"], 0) + 1
        parts.append(
            "- runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        )
    shas = {pair.name: current_teacher_sha256(study, pair) for pair in tier.pairs}
    summaries, stale = [], 0
    for summary in find_summaries([out]):
        pair_name = str(summary.get("experiment") or "").split("/")[0]
        if summary.get("status") == "finished" and not distilled_from(
            summary, shas.get(pair_name)
        ):
            stale += 1  # its numbers belong to another teacher's table
        else:
            summaries.append(summary)
    if stale:
        parts.append(
            f"- left out of the tables: {stale} finished run(s) distilled from another "
            "teacher file than the one in this folder (`figkd study --replace-stale` trains "
            "them again)"
        )
    finished = [s for s in summaries if s.get("status") == "finished"]
    if finished:
        resumed = sum(1 for s in finished if s.get("resumed"))
        devices = sorted({str(s["device"]) for s in finished if s.get("device")})
        parts.append(
            f"- finished runs: {len(finished)}, {resumed} of them resumed after a stop "
            f"(another invocation or machine); trained on: {'; '.join(devices) or 'unknown'}"
        )
        parts.append(f"- code: {epochs_per_commit(finished)}")
    parts += [
        "",
        ("Test accuracy (%), mean ± sample standard deviation over seeds. \"last epoch\": the "
         "final epoch's test accuracy (our main number; the paper does not say last or best); "
         "\"best val\": the test accuracy "
         "at the epoch with the best validation accuracy. \"Δ last\": the per-seed "
         "difference to the reference row, mean ± sample std over the seeds both have (the "
         "same seed gives every method the same initial student and batches). Time / run: "
         "mean wall time of one seed (training + per-epoch evaluation)."),
    ]
    groups = sorted({m.group for m in study.methods if m.group != "main"})
    for pair in tier.pairs:
        base = out / pair.name
        sha = shas[pair.name]
        teacher = collect(study.teachers[pair.name].run_dir.parent, f"teacher ({pair.teacher})")
        rows = [r for r in [teacher] if r is not None]
        rows += [
            r
            for m in study.methods
            if m.group == "main"
            and (r := collect(base / m.name, m.label, sha, study.seeds)) is not None
        ]
        parts += ["", f"## {pair.label}", "", results_table(rows, "CE", "CE")]
        parts += _spaced(failure_notes(rows))
        for group in groups:
            default = collect(
                base / "figkd", f"FiGKD {group}={ABLATION_DEFAULTS[group]} (default)", sha,
                study.seeds,
            )
            ablated = [
                r
                for m in study.methods
                if m.group == group
                and (r := collect(base / m.name, m.label, sha, study.seeds)) is not None
            ]
            rows = [r for r in [default] if r is not None] + ablated
            parts += [
                "",
                f"### FiGKD ablation: {group}",
                "",
                results_table(rows, default.label if default else None, "default"),
            ]
            parts += _spaced(failure_notes(rows))
        sweep = transform_sweep_table(base, study.methods, sha, study.seeds)
        if sweep:
            parts += [
                "",
                "### FiGKD: β sweep per transform, on Haar 2d's scale",
                "",
                ("Each variant's β divided by its detail-loss ratio to Haar 2d "
                 f"({', '.join(f'{n} {r:g}' for n, (_, r) in _DETAIL_RATIOS.items())}), so a "
                 "row compares the transforms at the same detail-loss size. Test top-1 at the "
                 "last epoch; Δ: paired by seed against Haar 2d in the same row."),
                "",
                *sweep,
            ]
    text = "\n".join(parts) + "\n"
    path = out / "study.md"
    path.write_text(text)
    write_report(aggregate(summaries), out)  # the engine's own `figkd report` table
    if manifest is not None:
        (out / "study.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path


#: the reference of the per-transform beta sweep: Haar 2d, whose beta is the scale
HAAR_2D = "haar-2d"
#: the sweep's columns: FiGKD options besides beta, and the detail-loss ratio to Haar 2d
_SWEEP_VARIANTS: dict[str, tuple[dict[str, Any], float]] = {HAAR_2D: ({}, 1.0), **_DETAIL_RATIOS}


def transform_beta_cells(methods: Iterable[Method]) -> dict[tuple[str, float], Method]:
    """``(variant, beta on Haar 2d's scale) -> method`` for every FiGKD method that differs
    from the default only in beta and in one transform of ``_DETAIL_RATIOS``: the main run,
    the beta sweep, the ``transform``/``wavelet`` rows and the ``matched`` group line up on
    one axis (a variant's beta divided by its detail-loss ratio to Haar 2d)."""
    from figkd.losses.figkd_loss import FiGKDLoss

    default_beta = float(inspect.signature(FiGKDLoss).parameters["beta"].default)
    cells: dict[tuple[str, float], Method] = {}
    for method in methods:
        if method.loss != "figkd":
            continue
        options = {k: v for k, v in method.args.items() if k != "beta"}
        for name, (option, ratio) in _SWEEP_VARIANTS.items():
            if options == option:
                beta = float(method.args.get("beta", default_beta))
                cells.setdefault((name, round(beta / ratio, 6)), method)
    return cells


def transform_sweep_table(
    base: Path,
    methods: Iterable[Method],
    teacher_sha256: str | None,
    seeds: Collection[int] | None = None,
) -> list[str]:
    """Markdown rows of the beta sweep per transform (:func:`transform_beta_cells`): one row
    per beta on Haar 2d's scale, each variant's mean ± std with its own beta, and its
    difference to Haar 2d at that scale paired by seed; empty unless two variants ran."""
    cells = transform_beta_cells(methods)
    results = {
        key: row for key, method in cells.items()
        if (row := collect(base / method.name, method.label, teacher_sha256, seeds)) is not None
        and row.n > 0
    }
    names = [n for n in _SWEEP_VARIANTS if any(k[0] == n for k in results)]
    if len(names) < 2 or HAAR_2D not in names:
        return []
    ratio = {name: r for name, (_, r) in _SWEEP_VARIANTS.items()}
    titles = [f"{n} (β × {ratio[n]:g})" if n != HAAR_2D else "Haar 2d (β)" for n in names]
    lines = [
        "| β on Haar 2d's scale | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(names),
    ]
    for scale in sorted({k[1] for k in results}):
        haar = results.get((HAAR_2D, scale))
        shown = []
        for name in names:
            row = results.get((name, scale))
            if row is None:
                shown.append("")
                continue
            text = f"{pm(*row.last_stats())} (β {scale * ratio[name]:g})"
            if name != HAAR_2D and haar is not None:
                text += f", Δ {paired_delta(row, haar)}"
            shown.append(text)
        lines.append(f"| {scale:.3g} | " + " | ".join(shown) + " |")
    return lines


def _spaced(lines: list[str]) -> list[str]:
    """``lines`` after a blank line (Markdown ends the table there), or nothing."""
    return ["", *lines] if lines else []


def tier_with(tier: Tier, **changes: Any) -> Tier:
    """``tier`` with some fields replaced (``None`` values are ignored)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(tier, **changes) if changes else tier


#: the teacher checksum a plan gives students whose teacher is still to be trained
PENDING_TEACHER = "pending"


def describe_plan(study: Study, jobs: Sequence[Job]) -> str:
    """One line per run: its state, kind, config and seed; what a stale run will become.

    A finished record whose teacher is still to be trained (records imported beside a
    teacher that was not carried) is neither kept nor stale yet: the retrained teacher's
    SHA-256 decides, so the line names the checksum the record needs."""
    lines = [f"{study.tier.name}: {study.tier.description}"]
    fate = ("  (set aside and trained again)" if study.replace_stale
            else "  (fails: --replace-stale trains it again)")
    for job in jobs:
        pinned = job.config.teacher.sha256
        waiting = pinned == PENDING_TEACHER
        state = run_state(job.run_dir, job.config.train.epochs, None if waiting else pinned)
        note = fate if state == "stale" else ""
        if waiting and state == "finished":
            used = _recorded_teacher_sha256(job.run_dir)
            if used:
                note = (f"  (kept if the teacher trains again to SHA-256 {used[:12]}…; "
                        f"otherwise stale{', set aside and trained again' if study.replace_stale else ''})")
        if state == "failed":
            note = f"  (failed at {_failure_line(job.run_dir)}; tried again)"
        lines.append(f"  {state:<8} {job.kind:<7} {job.config_path}  --seeds {job.seed}{note}")
    return "\n".join(lines)
