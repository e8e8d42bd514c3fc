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
a line range; ``--max`` caps their number (spread evenly over the module); ``--survivors LOG``
re-runs only the mutants an earlier report (saved output of this tool) lists as survived, to
check new tests against them without running every mutant again. ``--fork`` imports
torch, NumPy and pytest once and runs each mutant's tests in a forked child (POSIX only): the
same outcomes, several times faster for tests that take less time than importing torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


#: how to rewrite a site: ("op", new operator class), ("cmp", position, new comparison class),
#: ("const", value), ("negate",) or ("unwrap",)
Spec = tuple[Any, ...]


def _candidates(tree: ast.Module) -> Iterator[tuple[ast.AST, str, Spec]]:
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
                    new_cmp = COMPARE_SWAPS[type(op)]
                    yield node, f"{type(op).__name__} -> {new_cmp.__name__}", (
                        "cmp", position, new_cmp)
        elif isinstance(node, ast.BoolOp):
            new_bool = BOOL_SWAPS[type(node.op)]
            yield node, f"{type(node.op).__name__} -> {new_bool.__name__}", ("op", new_bool)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            yield node, f"drop {type(node.op).__name__}", ("unwrap",)
        elif isinstance(node, ast.Constant) and not isinstance(parents.get(node), ast.Expr):
            if isinstance(node.value, bool):
                yield node, f"{node.value} -> {not node.value}", ("const", not node.value)
            for variant in _numeric_variants(node.value):
                yield node, f"{node.value!r} -> {variant!r}", ("const", variant)
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            yield node, "negate condition", ("negate",)


def _apply(tree: ast.Module, target: ast.AST, spec: Spec) -> None:
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
                    setattr(parent, field, target.operand)
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


#: "[3/40] line 12: Add -> Sub: survived" (progress) or "  survived: line 12: Add -> Sub: code"
_SURVIVOR_LINES = (
    re.compile(r"^\[\d+/\d+\] line (\d+): (.+): survived$"),
    re.compile(r"^survived: line (\d+): (.+?): "),
)


def survivors_in_report(text: str) -> set[tuple[int, str]]:
    """``(line, description)`` of every mutant a saved report of this tool lists as survived."""
    found = set()
    for row in text.splitlines():
        for pattern in _SURVIVOR_LINES:
            match = pattern.match(row.strip())
            if match:
                found.add((int(match.group(1)), match.group(2)))
    return found


def select_survivors(mutants: list[Mutant], wanted: set[tuple[int, str]]) -> list[Mutant]:
    """The mutants named in ``wanted``; a name that matches none means the module changed."""
    chosen = [m for m in mutants if (m.line, m.description) in wanted]
    missing = wanted - {(m.line, m.description) for m in chosen}
    if missing:
        shown = ", ".join(f"line {line}: {what}" for line, what in sorted(missing))
        raise ValueError(
            f"the report names mutants this module no longer has ({shown}): the module "
            "changed since that report; run all mutants again"
        )
    return chosen


def mutated_source(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    for index, (node, _, spec) in enumerate(_candidates(tree)):
        if index == mutant.index:
            _apply(tree, node, spec)
            return ast.unparse(ast.fix_missing_locations(tree))
    raise IndexError(f"mutant {mutant.index} not found")


def _scratch_copy() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="figkd-mutation-"))
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "runs", "__pycache__", "*.egg-info", ".device", ".whl", ".cache"
    )
    shutil.copytree(REPO, scratch / "repo", ignore=ignore)
    shared = REPO.parent / "shared"
    if shared.exists():  # tests read ../shared beside the repository
        (scratch / "shared").symlink_to(shared)
    return scratch / "repo"


PYTEST_FLAGS = ("-x", "-q", "-p", "no:cacheprovider")
# Imported once by --fork; none of them imports figkd, so each child imports the mutant fresh.
# torchvision alone takes seconds per child on a busy 2-core machine (figkd.data imports it).
PRELOADED = ("numpy", "torch", "torchvision", "pytest", "pywt", "PIL.Image", "yaml", "scipy.io")


def _outcome(returncode: int) -> str:
    return "survived" if returncode == 0 else ("killed" if returncode == 1 else "error")


def _test_env(repo: Path) -> dict[str, str]:
    # no bytecode: a mutant of the same size written within a second of the last one could
    # otherwise be run from the previous mutant's cached .pyc
    return {**os.environ, "PYTHONPATH": str(repo / "src"), "PYTHONDONTWRITEBYTECODE": "1"}


def _run_tests(repo: Path, pytest_args: list[str], timeout: float) -> str:
    command = [sys.executable, "-m", "pytest", *PYTEST_FLAGS, *pytest_args]
    try:
        result = subprocess.run(
            command, check=False, cwd=repo, env=_test_env(repo), capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return _outcome(result.returncode)


class ForkRunner:
    """Runs pytest in a forked child of a process that has already imported the heavy
    third-party modules; figkd itself is never imported here, so every child reads the
    mutated module from the scratch copy."""

    def __init__(self, repo: Path) -> None:
        if not hasattr(os, "fork"):
            raise SystemExit("--fork needs os.fork (Linux or macOS)")
        if any(name == "figkd" or name.startswith("figkd.") for name in sys.modules):
            raise RuntimeError("figkd is already imported; the children would not see the mutants")
        for name in PRELOADED:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        os.environ.update(_test_env(repo))  # for tests that start subprocesses
        sys.dont_write_bytecode = True
        sys.path.insert(0, str(repo / "src"))
        os.chdir(repo)

    def __call__(self, repo: Path, pytest_args: list[str], timeout: float) -> str:
        import pytest

        pid = os.fork()
        if pid == 0:  # the child: quiet, in its own process group so a timeout stops it all
            os.setsid()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                code = int(pytest.main([*PYTEST_FLAGS, *pytest_args]))
            except BaseException:  # noqa: BLE001 (a forked child must exit, never unwind)
                code = 99
            os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _outcome(os.waitstatus_to_exitcode(status))
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout"
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="the file to mutate, relative to the repository root")
    parser.add_argument("--lines", help="only mutate lines A-B")
    parser.add_argument("--max", type=int, default=0, help="at most this many mutants (0: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    parser.add_argument(
        "--fork", action="store_true", help="import torch once and fork a child per test run"
    )
    parser.add_argument(
        "--survivors",
        metavar="LOG",
        help="only the mutants this saved report of the tool lists as survived",
    )
    args, pytest_args = parser.parse_known_args(argv)
    lines = tuple(int(part) for part in args.lines.split("-")) if args.lines else None
    source = (REPO / args.module).read_text()
    mutants = list_mutants(source, lines)  # type: ignore[arg-type]
    if args.survivors:
        wanted = survivors_in_report(Path(args.survivors).read_text())
        if lines is not None:
            wanted = {(line, what) for line, what in wanted if lines[0] <= line <= lines[1]}
        try:
            mutants = select_survivors(mutants, wanted)
        except ValueError as error:
            print(f"mutation: {error}", file=sys.stderr)
            return 2
    if args.max and len(mutants) > args.max:
        step = len(mutants) / args.max
        mutants = [mutants[int(i * step)] for i in range(args.max)]
    repo = _scratch_copy()
    target = repo / args.module
    survivors = []
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    try:
        run_tests = ForkRunner(repo) if args.fork else _run_tests
        if run_tests(repo, pytest_args, args.timeout) != "survived":
            print("the tests fail on the unchanged module; fix that first", file=sys.stderr)
            return 2
        for number, mutant in enumerate(mutants, 1):
            target.write_text(mutated_source(source, mutant))
            outcome = run_tests(repo, pytest_args, args.timeout)
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
