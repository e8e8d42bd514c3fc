"""tools/mutation.py: which changes it makes, and that it leaves wording alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SOURCE = '''"""A docstring with 1 + 2 in it."""
def f(x: int = 3) -> float:
    if x < 2 and not x:
        raise ValueError(f"bad {x + 1}")
    return -x * 2.0 + 1
'''


@pytest.fixture(scope="module")
def mutation():
    path = Path(__file__).resolve().parents[1] / "tools" / "mutation.py"
    spec = importlib.util.spec_from_file_location("figkd_mutation_tool", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


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


def test_line_range_limits_the_mutants(mutation) -> None:
    assert {m.line for m in mutation.list_mutants(SOURCE, (5, 5))} == {5}
