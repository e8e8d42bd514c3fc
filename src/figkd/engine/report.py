"""Aggregate runs into mean ± std tables over seeds (Markdown and CSV).

Every ``summary.json`` under the given folders is one seed of one experiment
(grouped by its ``experiment`` name).  The spread is the *sample* standard
deviation (ddof = 1; blank for a single seed).  Two test accuracies are shown:
the last epoch's (our main number; the paper does not say which epoch) and the one at the epoch chosen on
the validation split.  The paper's number sits beside ours when the config
recorded one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figkd.engine.run_dir import SUMMARY


def find_summaries(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Load every ``summary.json`` at or below ``paths`` (sorted by path).

    Below a folder, hidden folders are skipped: they hold runs set aside (a study's
    ``.stale/``) or half-written copies (``.state-incoming-*``), whose seeds would otherwise
    be averaged with the live ones of the same experiment.
    """
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file() and path.name == SUMMARY:
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(
                p for p in path.rglob(SUMMARY)
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            ))
        else:
            raise FileNotFoundError(f"no run folder or summary.json at {path}")
    summaries = []
    for path in sorted(set(found)):
        data = json.loads(path.read_text())
        data.setdefault("run_dir", str(path.parent))
        summaries.append(data)
    return summaries


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


@dataclass
class Row:
    """One experiment aggregated over its seeds."""

    experiment: str
    dataset: str
    method: str
    teacher: str
    student: str
    #: None for a summary that records no seed (it still counts; it is listed as "None")
    seeds: list[int | None] = field(default_factory=list)
    last: list[float] = field(default_factory=list)  # last-epoch test top-1 per seed
    best: list[float] = field(default_factory=list)  # test top-1 at the best validation epoch
    top5: list[float] = field(default_factory=list)
    teacher_top1: list[float] = field(default_factory=list)
    paper: float | None = None
    table: int | None = None

    def stats(self) -> dict[str, Any]:
        last_mean, last_std = mean_std(self.last)
        best_mean, best_std = mean_std(self.best)
        top5_mean, top5_std = mean_std(self.top5)
        teacher_mean, _ = mean_std(self.teacher_top1)
        delta = last_mean - self.paper if self.paper is not None and self.last else None
        return {
            "experiment": self.experiment,
            "dataset": self.dataset,
            "method": self.method,
            "teacher": self.teacher,
            "student": self.student,
            "n": len(self.last),
            "seeds": " ".join(str(s) for s in self.seeds),
            "top1_last_mean": last_mean,
            "top1_last_std": last_std,
            "top1_best_mean": best_mean if self.best else None,
            "top1_best_std": best_std,
            "top5_last_mean": top5_mean,
            "top5_last_std": top5_std,
            "teacher_top1": teacher_mean if self.teacher_top1 else None,
            "paper_top1": self.paper,
            "paper_table": self.table,
            "delta_vs_paper": delta,
        }


def aggregate(summaries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of per-experiment statistics, in experiment-name order."""
    rows: dict[str, Row] = {}
    for s in summaries:
        name = s.get("experiment") or Path(s["run_dir"]).parent.name
        row = rows.get(name)
        if row is None:
            teacher = _get(s, "teacher", "arch") or "-"
            row = rows[name] = Row(
                name,
                s.get("dataset", "-"),
                s.get("method", "-"),
                teacher,
                s.get("model", "-"),
                paper=_get(s, "paper", "top1"),
                table=_get(s, "paper", "table"),
            )
        last = _get(s, "final", "test", "top1")
        if last is None:
            continue  # an unfinished or failed run has no final metrics
        if s.get("seed") is not None and s.get("seed") in row.seeds:
            warnings.warn(
                f"{name}: seed {s.get('seed')} found twice (again in {s.get('run_dir', '?')}); "
                "counted once: pass folders that do not overlap",
                stacklevel=2,
            )
            continue
        row.seeds.append(s.get("seed"))
        row.last.append(float(last))
        top5 = _get(s, "final", "test", "top5")
        if top5 is not None:
            row.top5.append(float(top5))
        best = _get(s, "best", "test", "top1")
        if best is not None:
            row.best.append(float(best))
        teacher_top1 = _get(s, "teacher", "test", "top1")
        if teacher_top1 is not None:
            row.teacher_top1.append(float(teacher_top1))
    return [rows[k].stats() for k in sorted(rows)]


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: test top-1 (last epoch and best-on-val), top-5, teacher, paper."""
    header = (
        "| experiment | method | teacher → student | seeds | top-1 last | top-1 best-val "
        "| top-5 last | teacher top-1 | paper top-1 | Δ vs paper |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        pair = f"{r['teacher']} → {r['student']}" if r["teacher"] != "-" else r["student"]
        paper = _num(r["paper_top1"])
        if r["paper_top1"] is not None and r["paper_table"] is not None:
            paper += f" (T{r['paper_table']})"
        lines.append(
            f"| {r['experiment']} | {r['method']} | {pair} | {r['n']} "
            f"| {_pm(r['top1_last_mean'], r['top1_last_std'])} "
            f"| {_pm(r['top1_best_mean'], r['top1_best_std'])} "
            f"| {_pm(r['top5_last_mean'], r['top5_last_std'])} "
            f"| {_num(r['teacher_top1'])} | {paper} | {_num(r['delta_vs_paper'], signed=True)} |"
        )
    note = (
        '\nTest accuracy (%), mean ± sample std over seeds. "last": final epoch (our main '
        'number; the paper does not say last or best); "best-val": the epoch with the best '
        "accuracy on the validation split carved from train."
    )
    return "\n".join(lines) + "\n" + note + "\n"


CSV_COLUMNS = (
    "experiment",
    "dataset",
    "method",
    "teacher",
    "student",
    "n",
    "seeds",
    "top1_last_mean",
    "top1_last_std",
    "top1_best_mean",
    "top1_best_std",
    "top5_last_mean",
    "top5_last_std",
    "teacher_top1",
    "paper_top1",
    "paper_table",
    "delta_vs_paper",
)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_report(
    rows: Sequence[dict[str, Any]], folder: str | os.PathLike[str], stem: str = "report"
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / f"{stem}.md", folder / f"{stem}.csv"
    md.write_text(to_markdown(rows))
    csv_path.write_text(to_csv(rows))
    return md, csv_path
