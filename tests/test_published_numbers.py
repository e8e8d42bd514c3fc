"""The accuracies README.md quotes come from the run records committed beside them.

Each number is recomputed here from the seeds' ``summary.json`` in
``docs/results/cpu_tier_runs/`` (mean and sample standard deviation with the standard
library, not figkd's report code), so a typo, a number pasted from another run, or a report bug
shows up as a mismatch.  A paired difference is taken per seed first, as the study does.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs/results/cpu_tier_runs/cpu"
PAIR = RECORDS / "resnet20_resnet8"
#: the second machine's teacher and its students (a table of their own)
EPYC_PAIR = ROOT / "docs/results/cpu_tier_epyc_runs/resnet20_resnet8"
RESULTS = ROOT / "docs/results/cpu_tiny_imagenet.md"
FIRST, SIX = (0, 1, 2), (0, 1, 2, 3, 4, 5)

#: the README table's columns and the study's folder of each
COLUMNS = {"CE": "ce", "KD": "kd", "MLKD": "mlkd", "KD + LS": "kd_ls", "DIST": "dist",
           "FiGKD (β 2)": "figkd", "DKD": "dkd"}


def _readme() -> str:
    """README.md with its line breaks and indents folded into single spaces."""
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _top1(folder: str, seed: int, pair: Path = PAIR, at: str = "final") -> float:
    """Test top-1 of a run at its last epoch (``final``) or its best-validation one (``best``)."""
    summary = json.loads((pair / folder / f"seed{seed}" / "summary.json").read_text())
    assert summary["status"] == "finished", f"{folder} seed {seed} did not finish"
    return float(summary[at]["test"]["top1"])


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def _pm(values: list[float]) -> str:
    mean, std = _stats(values)
    return f"{mean:.2f} ± {std:.2f}"


def _paired(a: str, b: str, seeds: tuple[int, ...]) -> list[float]:
    return [_top1(a, s) - _top1(b, s) for s in seeds]


def test_the_main_table_is_the_records_mean_and_std() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| teacher | CE |"))
    header = [c.strip() for c in lines[at].strip("|").split("|")]
    cells = [c.strip() for c in lines[at + 2].strip("|").split("|")]
    assert header[1:] == list(COLUMNS)
    (teacher,) = (RECORDS / "teachers").glob("*/seed0/summary.json")
    assert cells[0] == f"{json.loads(teacher.read_text())['final']['test']['top1']:.2f}"
    for name, cell in zip(header[1:], cells[1:], strict=True):
        assert cell == _pm([_top1(COLUMNS[name], s) for s in FIRST]), name


#: (what README says, with {} for "mean ± std" of the absolute difference; run a minus run b;
#: seeds; the difference's sign)
PAIRED_CLAIMS = [
    ("+{} over KD", "figkd", "kd", FIRST, +1),
    ("a tie with DIST, {} below DKD", "figkd", "dkd", FIRST, -1),
    ("matching the low band only loses {} points", "figkd_bands-low", "figkd", FIRST, -1),
    ("+{} over six seeds", "figkd_beta-0.5", "figkd", SIX, +1),
    ("which puts FiGKD {} above DKD", "figkd_beta-0.5", "dkd", SIX, +1),
    ("(at β 2 it is {} below)", "figkd", "dkd", SIX, -1),
    ("at β 2, 1D beats 2D by {}", "figkd_transform-1d", "figkd", FIRST, +1),
    ("bior1.3 beats Haar by {}", "figkd_wavelet-bior1.3", "figkd", FIRST, +1),
    ("the gains vanish (−{},", "figkd_matched-1d-beta6", "figkd", FIRST, -1),
    ("the gains vanish (−0.11 ± 0.34, −{})", "figkd_matched-bior1.3-beta3.5", "figkd", FIRST,
     -1),
    ("1D ties Haar 2D over six seeds (+{})", "figkd_transform-1d", "figkd_beta-0.5", SIX, +1),
    ("bior1.3 trails within its noise (−{})", "figkd_matched-bior1.3-beta1.75",
     "figkd_beta-0.5", SIX, -1),
]


@pytest.mark.parametrize(("text", "a", "b", "seeds", "sign"), PAIRED_CLAIMS,
                         ids=[c[0] for c in PAIRED_CLAIMS])
def test_each_paired_difference_is_the_records(
    text: str, a: str, b: str, seeds: tuple[int, ...], sign: int
) -> None:
    diffs = _paired(a, b, seeds)
    mean, std = _stats(diffs)
    assert mean * sign > 0, f"{a} - {b} is {mean:+.2f}, but README gives it the other sign"
    assert text.format(f"{abs(mean):.2f} ± {std:.2f}") in _readme()


def test_the_beta_sweeps_peak_is_the_records() -> None:
    means = [statistics.mean(_top1(f"figkd_beta-{b}", s) for s in FIRST) for b in ("0.5", "1")]
    assert f"Haar 2D peaks at β 0.5-1 ({means[0]:.2f}, {means[1]:.2f})" in _readme()


#: a row of the results file's ablation tables: "| FiGKD group=value[ (default)] | 3 | last |
#: best val | Δ last vs default | time |", or the default's row as "FiGKD (default: ...)"
_ABLATION_ROW = re.compile(
    r"^\| FiGKD (?:(?P<group>\w+)=(?P<value>[\w.-]+)(?P<default> \(default\))?"
    r"|(?P<named>\(default: [^)]*\))) \| 3 \| "
    r"(?P<last>[\d.]+ ± [\d.]+) \| (?P<best>[\d.]+ ± [\d.]+) \| (?P<delta>[^|]*) \|"
)


def _ablation_rows() -> list[tuple[Path, str, re.Match[str]]]:
    """Every ablation row of the results file, with the records of the teacher it ran under
    (the AMD EPYC section's rows have their own)."""
    text = RESULTS.read_text()
    epyc = text.index("## Transform and wavelet ablations, on a second machine and teacher")
    rows = []
    offset = 0
    for line in text.splitlines(keepends=True):
        found = _ABLATION_ROW.match(line)
        if found:
            rows.append((EPYC_PAIR if offset > epyc else PAIR, line.strip(), found))
        offset += len(line)
    return rows


def test_the_results_file_has_the_ablation_rows_this_test_reads() -> None:
    rows = _ablation_rows()
    assert len(rows) == 18  # bands 3, beta 5, level 5, the transform table's default 1;
    # the EPYC's teacher: 4
    assert sum(pair == EPYC_PAIR for pair, _, _ in rows) == 4


@pytest.mark.parametrize(("pair", "row"), [(p, line) for p, line, _ in _ablation_rows()],
                         ids=[line.split(" | ")[0][2:] for _, line, _ in _ablation_rows()])
def test_each_ablation_row_is_its_records(pair: Path, row: str) -> None:
    found = _ABLATION_ROW.match(row)
    assert found is not None
    default = bool(found["default"] or found["named"])
    folder = "figkd" if default else f"figkd_{found['group']}-{found['value']}"
    assert found["last"] == _pm([_top1(folder, s, pair) for s in FIRST])
    assert found["best"] == _pm([_top1(folder, s, pair, at="best") for s in FIRST])
    if default:
        assert found["delta"].strip() == ""
    else:
        diffs = [_top1(folder, s, pair) - _top1("figkd", s, pair) for s in FIRST]
        mean, std = _stats(diffs)
        assert found["delta"].strip() == f"{mean:+.2f} ± {std:.2f}"
