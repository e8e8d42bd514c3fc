"""Mutation check: do the tests notice when a module's arithmetic is changed?

A test suite that passes whatever the code computes proves nothing (our standards call such a
test a defect). This tool makes one small change at a time to a module -- an operator swapped,
a constant nudged, a comparison flipped, a condition negated -- and runs the tests you name.
A change the tests still pass ("survivor") is either an equivalent rewrite or a gap in the
tests; the report lists each survivor with its line so a person can tell which.

It works on a scratch copy of the repository, never on the tree you run it from:

    python tools/mutation.py src/figkd/losses/dkd.py tests/test_losses.py -k dkd
    python tools/mutation.py src/figkd/wavelets.py tests/test_wavelets.py --lines 40-200

Everything after the module's path goes to pytest unchanged. ``--lines`` limits the mutants to
a line range; ``--max`` caps their number (spread evenly over the module).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# operator -> the operator it becomes; one mutant per swap
BINARY_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.MatMult: ast.Mult,
}
COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BOOL_SWAPS: dict[type[ast.boolop], type[ast.boolop]] = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass(frozen=True)
class Mutant:
    index: int  # position in the walk, so the same mutant can be rebuilt
    line: int
    description: str


def _in_docstring_or_annotation(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        parent = parents[node]
        if isinstance(parent, (ast.arg, ast.AnnAssign)) and getattr(parent, "annotation", None) is node:
            return True
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and parent.returns is node:
            return True
        if isinstance(parent, (ast.JoinedStr, ast.Raise)):
            return True  # messages and raised errors: wording, not arithmetic
        node = parent
    return False


def _numeric_variants(value: object) -> list[object]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if value == 0:
        return [1]
    if value == 1:
        return [0, 2]
    return [value + 1] if isinstance(value, int) else [value * 1.5]


def _candidates(tree: ast.Module) -> Iterator[tuple[ast.AST, str, object]]:
    """Yield (node, description, replacement-spec) for every mutation site, in a fixed order."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if _in_docstring_or_annotation(node, parents):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY_SWAPS:
            new = BINARY_SWAPS[type(node.op)]
            yield node, f"{type(node.op).__name__} -> {new.__name__}", ("op", new)
        elif isinstance(node, ast.AugAssign) and type(node.op) in BINARY_SWAPS:
            new = BINARY_SWAPS[type(node.op)]
            yield node, f"{type(node.op).__name__}= -> {new.__name__}=", ("op", new)
        elif isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                if type(op) in COMPARE_SWAPS:
                    new = COMPARE_SWAPS[type(op)]
                    yield node, f"{type(op).__name__} -> {new.__name__}", ("cmp", position, new)
        elif isinstance(node, ast.BoolOp):
            new = BOOL_SWAPS[type(node.op)]
            yield node, f"{type(node.op).__name__} -> {new.__name__}", ("op", new)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            yield node, f"drop {type(node.op).__name__}", ("unwrap",)
        elif isinstance(node, ast.Constant) and not isinstance(parents.get(node), ast.Expr):
            if isinstance(node.value, bool):
                yield node, f"{node.value} -> {not node.value}", ("const", not node.value)
            for variant in _numeric_variants(node.value):
                yield node, f"{node.value!r} -> {variant!r}", ("const", variant)
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            yield node, "negate condition", ("negate",)


def _apply(tree: ast.Module, target: ast.AST, spec: tuple) -> None:
    kind = spec[0]
    if kind == "op":
        target.op = spec[1]()  # type: ignore[attr-defined]
    elif kind == "cmp":
        target.ops[spec[1]] = spec[2]()  # type: ignore[attr-defined]
    elif kind == "const":
        target.value = spec[1]  # type: ignore[attr-defined]
    elif kind == "negate":
        target.test = ast.UnaryOp(op=ast.Not(), operand=target.test)  # type: ignore[attr-defined]
    elif kind == "unwrap":
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is target:
                    setattr(parent, field, target.operand)  # type: ignore[attr-defined]
                    return
                if isinstance(value, list) and any(item is target for item in value):
                    value[[id(item) for item in value].index(id(target))] = target.operand  # type: ignore[attr-defined]
                    return


def list_mutants(source: str, lines: tuple[int, int] | None) -> list[Mutant]:
    tree = ast.parse(source)
    found = []
    for index, (node, description, _) in enumerate(_candidates(tree)):
        line = getattr(node, "lineno", 0)
        if lines is None or lines[0] <= line <= lines[1]:
            found.append(Mutant(index, line, description))
    return found


def mutated_source(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    for index, (node, _, spec) in enumerate(_candidates(tree)):
        if index == mutant.index:
            _apply(tree, node, spec)
            return ast.unparse(ast.fix_missing_locations(tree))
    raise IndexError(f"mutant {mutant.index} not found")


def _scratch_copy() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="figkd-mutation-"))
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info", ".device", ".whl")
    shutil.copytree(REPO, scratch / "repo", ignore=ignore)
    shared = REPO.parent / "shared"
    if shared.exists():  # tests read ../shared beside the repository
        (scratch / "shared").symlink_to(shared)
    return scratch / "repo"


def _run_tests(repo: Path, pytest_args: list[str], timeout: float) -> str:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args]
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    try:
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if result.returncode == 0 else ("killed" if result.returncode == 1 else "error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="the file to mutate, relative to the repository root")
    parser.add_argument("--lines", help="only mutate lines A-B")
    parser.add_argument("--max", type=int, default=0, help="at most this many mutants (0: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    args, pytest_args = parser.parse_known_args(argv)
    lines = tuple(int(part) for part in args.lines.split("-")) if args.lines else None
    source = (REPO / args.module).read_text()
    mutants = list_mutants(source, lines)  # type: ignore[arg-type]
    if args.max and len(mutants) > args.max:
        step = len(mutants) / args.max
        mutants = [mutants[int(i * step)] for i in range(args.max)]
    repo = _scratch_copy()
    target = repo / args.module
    if _run_tests(repo, pytest_args, args.timeout) != "survived":
        print("the tests fail on the unchanged module; fix that first", file=sys.stderr)
        return 2
    survivors = []
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    try:
        for number, mutant in enumerate(mutants, 1):
            target.write_text(mutated_source(source, mutant))
            outcome = _run_tests(repo, pytest_args, args.timeout)
            print(f"[{number}/{len(mutants)}] line {mutant.line}: {mutant.description}: {outcome}", flush=True)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "survived":
                survivors.append(mutant)
    finally:
        target.write_text(source)
        shutil.rmtree(repo.parent, ignore_errors=True)
    killed = len(mutants) - len(survivors)
    # a mutant that breaks collection ("error") or hangs ("timeout") was noticed too
    detail = ", ".join(f"{count} {name}" for name, count in sorted(outcomes.items()))
    elapsed = time.perf_counter() - started
    print(f"\n{args.module}: {killed}/{len(mutants)} mutants killed ({detail}) in {elapsed:.0f} s")
    source_lines = source.splitlines()
    for mutant in survivors:
        print(f"  survived: line {mutant.line}: {mutant.description}: {source_lines[mutant.line - 1].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
