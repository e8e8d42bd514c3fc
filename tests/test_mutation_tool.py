"""tools/mutation.py: which changes it makes, and that it leaves wording alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import load_script

SOURCE = '''"""A docstring with 1 + 2 in it."""
def f(x: int = 3) -> float:
    if x < 2 and not x:
        raise ValueError(f"bad {x + 1}")
    return -x * 2.0 + 1
'''


@pytest.fixture(scope="module")
def mutation():
    yield load_script("tools/mutation.py", "figkd_mutation_tool")
    del sys.modules["figkd_mutation_tool"]


def test_every_operator_constant_and_condition_is_mutated_once(mutation) -> None:
    found = sorted((m.line, m.description) for m in mutation.list_mutants(SOURCE, None))
    assert found == [
        (2, "3 -> 4"),
        (3, "2 -> 3"),
        (3, "And -> Or"),
        (3, "Lt -> LtE"),
        (3, "drop Not"),
        (3, "negate condition"),
        (5, "1 -> 0"),
        (5, "1 -> 2"),
        (5, "2.0 -> 3.0"),
        (5, "Add -> Sub"),
        (5, "Mult -> Div"),
        (5, "drop USub"),
    ]  # nothing from the docstring, the annotations or the error message


def test_a_mutant_changes_only_its_own_site(mutation) -> None:
    by_name = {m.description: m for m in mutation.list_mutants(SOURCE, None)}
    original = mutation.mutated_source(SOURCE, by_name["1 -> 0"]).replace("+ 0", "+ 1")
    assert mutation.mutated_source(SOURCE, by_name["Mult -> Div"]).endswith("return -x / 2.0 + 1")
    assert mutation.mutated_source(SOURCE, by_name["drop USub"]).endswith("return x * 2.0 + 1")
    negated = mutation.mutated_source(SOURCE, by_name["negate condition"])
    assert "if not (x < 2 and (not x)):" in negated
    assert "x <= 2 and (not x)" in mutation.mutated_source(SOURCE, by_name["Lt -> LtE"])
    assert original.endswith("return -x * 2.0 + 1") and "f'bad {x + 1}'" in original


def test_survivors_of_a_saved_report_are_picked_again(mutation) -> None:
    report = "\n".join([  # noqa: FLY002 (one report line per list item)
        "[1/12] line 2: 3 -> 4: killed",
        "[2/12] line 3: Lt -> LtE: survived",
        "[3/12] line 5: drop USub: error",
        "",
        "m.py: 10/12 mutants killed (1 error, 9 killed, 2 survived) in 3 s",
        "  survived: line 3: Lt -> LtE: if x < 2 and not x:",
        "  survived: line 5: 2.0 -> 3.0: return -x * 2.0 + 1",
    ])
    wanted = mutation.survivors_in_report(report)
    assert wanted == {(3, "Lt -> LtE"), (5, "2.0 -> 3.0")}
    chosen = mutation.select_survivors(mutation.list_mutants(SOURCE, None), wanted)
    assert [(m.line, m.description) for m in chosen] == [(3, "Lt -> LtE"), (5, "2.0 -> 3.0")]
    with pytest.raises(ValueError, match=r"line 4: Add -> Sub\).*run all mutants again"):
        mutation.select_survivors(mutation.list_mutants(SOURCE, None), {(4, "Add -> Sub")})


def test_line_range_limits_the_mutants(mutation) -> None:
    assert {m.line for m in mutation.list_mutants(SOURCE, (5, 5))} == {5}


def test_forked_runs_see_each_mutant_like_fresh_interpreters(tmp_path: Path) -> None:
    """``--fork`` must give the same outcome per mutant as a new interpreter per run: a child
    that imported the unmutated module (from the tree or an installed copy) would report
    every mutant as survived."""
    import os
    import re
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    command = [
        sys.executable, str(repo / "tools" / "mutation.py"), "src/figkd/losses/standardize.py",
        "--max", "1", "tests/test_figkd_loss_edges.py", "-k", "standardize",
    ]
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    reports = []
    for extra in ([], ["--fork"]):
        result = subprocess.run(
            [*command, *extra], check=False, cwd=repo, env=env, capture_output=True, text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        reports.append(re.findall(r"^\[\d+/1\] line \d+: .+: (\w+)$", result.stdout, re.MULTILINE))
    assert reports[0] == reports[1] == ["killed"]
    assert list(tmp_path.iterdir()) == [] or all(
        not p.name.startswith("figkd-mutation-") for p in tmp_path.iterdir()
    )  # the scratch copies are removed
