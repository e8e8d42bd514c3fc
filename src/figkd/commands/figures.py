"""``figkd figures``: the paper's analysis figures from trained runs (PNG + the numbers).

    figkd figures runs/study/smoke                     # every pair of a study folder
    figkd figures runs/study/short --kind frequency --sample 17
    figkd figures --teacher T/seed0 --kd K/seed0 --figkd F/seed0 --out figs/

``frequency`` (paper Fig. 5): the logit maps of the teacher, a KD student and a FiGKD student
for one test image, and their LL/LH/HL/HH bands (``frequency.png``; the arrays in
``frequency.npz`` / ``frequency.json``), with each student's detail distance to the teacher
over the test split; and the paper's class-space view (``frequency_components.png``): each
model's logits split into a low and a high component by the inverse DWT, with the top-1 of
each component alone over the test split (Fig. 2: a strong model's high component alone
still finds the true class).  ``tsne`` (Fig. 6): t-SNE of the students' embeddings
(``forward_features()["embedding"]``) on test images of the first classes (``tsne.png``,
``tsne.npz``, ``tsne.json``).

Given a folder, every ``figkd/seed<k>`` run below it is a pair: its siblings ``kd/`` and
``ce/`` give the other students, and the teacher is the run whose checkpoint the FiGKD student
distilled from.  Figures go to ``<pair>/figures/`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from figkd.cli import Command
from figkd.commands.train import HelpFormatter

if TYPE_CHECKING:
    from figkd.analysis.runs import LoadedRun


def find_pairs(folder: Path, seed: int) -> list[dict[str, Path]]:
    """``{"teacher": ..., "kd": ..., "figkd": ..., "ce": ...}`` run folders for each pair."""
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a folder"
        raise FileNotFoundError(
            f"{folder} {problem}: give a study folder (figkd study's --out) or a folder of runs, "
            "or name the runs with --teacher/--kd/--figkd <run folder>"
        )
    pairs = []
    for run in sorted(folder.rglob(f"figkd/seed{seed}/config.yaml")):
        figkd = run.parent
        base = figkd.parent.parent
        found = {}
        teacher_ckpt = find_teacher_checkpoint(figkd, folder)
        if teacher_ckpt is not None:
            found["teacher"] = teacher_ckpt.parent.parent
        for name in ("ce", "kd"):
            candidate = base / name / f"seed{seed}"
            if (candidate / "checkpoints" / "last.pt").is_file():
                found[name] = candidate
        found["figkd"] = figkd
        pairs.append(found)
    if not pairs:
        others = sorted({p.parent.name for p in folder.rglob("figkd/seed*/config.yaml")})
        hint = (
            f"pass --seed {others[0].removeprefix('seed')} for the runs there, or " if others else ""
        )
        raise FileNotFoundError(
            f"no figkd/seed{seed} run below {folder} (a pair is found by its FiGKD student "
            f"folder figkd/seed<k>): {hint}name the runs with --teacher/--kd/--figkd "
            "<run folder>"
        )
    return pairs


def find_teacher_checkpoint(student: Path, folder: Path) -> Path | None:
    """The file ``student`` distilled from: its config's path, or, for runs moved from
    another machine, the checkpoint below ``folder`` with the SHA-256 its summary records."""
    import json

    from figkd.analysis.runs import read_run_config
    from figkd.models.checkpoint import file_sha256

    recorded = read_run_config(student).teacher.checkpoint
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    summary = student / "summary.json"
    if not summary.is_file():
        return None
    sha = (json.loads(summary.read_text()).get("teacher") or {}).get("sha256")
    for name in ("teacher.pt", "last.pt"):
        for candidate in sorted(folder.rglob(f"checkpoints/{name}")):
            if sha and file_sha256(candidate) == sha:
                return candidate
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from figkd.analysis.frequency import frequency_figure
    from figkd.analysis.runs import load_run
    from figkd.analysis.tsne import tsne_figure

    torch.set_num_threads(args.threads)
    explicit = {k: getattr(args, k) for k in ("teacher", "ce", "kd", "figkd") if getattr(args, k)}
    if args.folder is not None:
        groups = find_pairs(Path(args.folder), args.seed)
        for group in groups:
            group.update({k: Path(v) for k, v in explicit.items()})
    elif explicit:
        groups = [{k: Path(v) for k, v in explicit.items()}]
    else:
        raise ValueError("give a study/run folder, or --teacher/--kd/--figkd run folders")
    for group in groups:
        out = Path(args.out) if args.out else group["figkd"].parent.parent / "figures"
        if len(groups) > 1 and args.out:
            out = out / group["figkd"].parent.parent.name
        loaded: dict[str, LoadedRun] = {
            name: load_run(group[name], checkpoint=args.checkpoint, data_root=args.data_root)
            for name in ("teacher", "ce", "kd", "figkd")
            if name in group
        }
        written: list[Path] = []
        if "frequency" in args.kind:
            rows: dict[str, LoadedRun] = {
                k: loaded[k] for k in ("teacher", "kd", "figkd") if k in loaded
            }
            written += frequency_figure(
                rows, out, sample=args.sample, wavelet=args.wavelet
            ).values()
        if "tsne" in args.kind:
            students: dict[str, LoadedRun] = {
                k: loaded[k] for k in ("ce", "kd", "figkd") if k in loaded
            }
            written += tsne_figure(
                students,
                out,
                classes=args.classes,
                per_class=args.per_class,
                perplexity=args.perplexity,
                seed=args.tsne_seed,
                threads=args.threads,
            ).values()
        print(f"{group['figkd'].parent.parent}: wrote " + ", ".join(str(p) for p in written))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument("folder", nargs="?", help="a study folder (or any folder of runs)")
    parser.add_argument(
        "--kind", nargs="+", choices=("frequency", "tsne"), default=["frequency", "tsne"],
        help="which figures",
    )
    parser.add_argument("--seed", type=int, default=0, help="which seed's runs to show")
    parser.add_argument("--teacher", help="teacher run folder (default: the FiGKD run's teacher)")
    parser.add_argument("--ce", help="CE student run folder")
    parser.add_argument("--kd", help="KD student run folder")
    parser.add_argument("--figkd", help="FiGKD student run folder")
    parser.add_argument("--out", help="output folder (default <pair>/figures)")
    parser.add_argument("--checkpoint", default="last.pt", help="last.pt or best.pt")
    parser.add_argument("--data-root", help="dataset folder, if the runs' data.root moved")
    parser.add_argument("--sample", type=int, default=0, help="test image of the frequency view")
    parser.add_argument("--wavelet", default="haar", help="wavelet of the frequency view")
    parser.add_argument("--classes", type=int, default=10, help="t-SNE: first N classes")
    parser.add_argument("--per-class", type=int, default=50, help="t-SNE: images per class")
    parser.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    parser.add_argument(
        "--tsne-seed", type=int, default=0,
        help="t-SNE random_state (PCA initialisation makes the map nearly independent of it)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (torch, t-SNE); 1 suits shared cores"
    )


COMMAND = Command(
    name="figures",
    help="frequency view of logits (Fig. 5) and t-SNE of embeddings (Fig. 6) from runs",
    configure=configure,
    run=run,
    description=__doc__,
)
