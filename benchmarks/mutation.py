"""Mutation sample: do the tests notice a one-line slip where a slip costs users most?

    .venv/bin/python benchmarks/mutation.py                 # 80 mutants, seed 22, ~30-60 min
    .venv/bin/python benchmarks/mutation.py --per-group 4   # a quick look
    .venv/bin/python benchmarks/mutation.py --list          # the sample, without running it

Each mutant is one small change on one line: a comparison flipped, a boundary or a constant moved
by one, a condition negated, `and`/`or` swapped, a statement or a return dropped. A deterministic
sample (`--seed`) is drawn evenly from five groups of modules (security, guard and leftovers,
placement and sizing, names, Ollama translation); each mutant runs only the fast tests mapped to
its module (unit and a few component tests), under a per-mutant timeout. A mutant is killed when
those tests fail (or time out), survived when they pass.

Mutants are written into a temporary copy of the tree, never into the checkout: a crash or ^C
cannot leave one behind. The unmutated copy's tests must pass first, so a red or flaky test is not
counted as a kill. Own script rather than mutmut (see ai/DECISIONS.md): sampling, a per-module test
map and a copy of the tree are what this needs, and mutmut offers none of the three.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Module -> the fast tests that exercise it. Paths that do not exist are skipped (so a run on an
# older tree still works); `-k` filters are passed as they are.
_WORKER_TESTS = [
    "tests/unit/test_guard.py",
    "tests/unit/test_worker_process.py",
    "tests/component/test_worker.py",
    # Times a start against a 1.5 s stall limit: on a busy host it fails unmutated (issue 22).
    "--deselect",
    "tests/component/test_worker.py::test_a_slow_start_that_shows_progress_is_not_stalled",
]
TESTS: dict[str, list[str]] = {
    "vllama/api/security.py": [
        "tests/component/test_security.py",
        # The page calling its own origin (Access.own_origin) is tested with the page.
        "tests/component/test_status_page.py::"
        "test_on_a_public_bind_the_page_may_call_its_own_origin_but_no_other",
    ],
    "vllama/api/keys.py": ["tests/component/test_security.py"],
    "vllama/config/access.py": ["tests/unit/test_config.py", "tests/component/test_security.py"],
    "vllama/engine/guard.py": _WORKER_TESTS,
    "vllama/engine/leftovers.py": ["tests/unit/test_leftovers.py"],
    "vllama/engine/process.py": _WORKER_TESTS,
    "vllama/scheduling/placement.py": ["tests/unit/test_placement.py"],
    "vllama/scheduling/sizing.py": [
        "tests/unit/test_memory.py",
        "tests/unit/test_placement.py",
        "tests/unit/test_ray_cluster.py",
    ],
    "vllama/catalog/names.py": [
        "tests/unit/test_names.py",
        "tests/unit/test_catalog.py",
        "-k",
        "name",
    ],
}
_OLLAMA_TESTS = [
    "tests/unit/test_ollama_translate.py",
    "tests/unit/test_budget.py",
    "tests/unit/test_relay_lean.py",
    "tests/component/test_ollama_api.py",
    # /api/delete's file side (models.py) is tested with the model store.
    "tests/component/test_model_store.py::test_deleting_a_symlink_removes_the_link_never_its_target",
]
GROUPS: dict[str, list[str]] = {
    "security": ["vllama/api/security.py", "vllama/api/keys.py", "vllama/config/access.py"],
    "guard": ["vllama/engine/guard.py", "vllama/engine/leftovers.py", "vllama/engine/process.py"],
    "placement": ["vllama/scheduling/placement.py", "vllama/scheduling/sizing.py"],
    "names": ["vllama/catalog/names.py"],
    "translation": sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "vllama/api/ollama").glob("*.py")
    ),
}
for _module in GROUPS["translation"]:
    TESTS.setdefault(_module, _OLLAMA_TESTS)

_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
# The boundary a comparison moves to: `<` <-> `<=`, `>` <-> `>=`.
_EDGE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    kind: str
    before: str  # the line as written
    after: str  # the line mutated
    source: str  # the whole mutated module

    def __str__(self) -> str:
        change = f"{self.before.strip()!r} -> {self.after.strip()!r}"
        return f"{self.module}:{self.line} [{self.kind}] {change}"


def _expression_swaps(node: ast.expr) -> Iterator[tuple[str, ast.expr]]:
    """(kind, replacement) for one expression node."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        op = type(node.ops[0])
        if op in _FLIP:
            yield "comparison flipped", ast.Compare(node.left, [_FLIP[op]()], node.comparators)
        if op in _EDGE:
            yield "boundary moved", ast.Compare(node.left, [_EDGE[op]()], node.comparators)
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "and/or swapped", ast.BoolOp(other, node.values)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "negation dropped", node.operand
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
        if isinstance(node.value, bool):
            yield "constant changed", ast.Constant(not node.value)
        elif isinstance(node.value, int):
            yield "constant changed", ast.Constant(node.value + 1)
            if node.value != 0:
                yield "constant changed", ast.Constant(node.value - 1)
        elif isinstance(node.value, float):
            yield "constant changed", ast.Constant(node.value * 2 if node.value else 1.0)


def _condition_swaps(node: ast.AST) -> Iterator[tuple[str, ast.expr, ast.expr]]:
    """(kind, condition, its negation) for `if`/`while`/ternary/comprehension conditions."""
    tests: list[ast.expr] = []
    if isinstance(node, ast.If | ast.While | ast.IfExp):
        tests.append(node.test)
    elif isinstance(node, ast.comprehension):
        tests.extend(node.ifs)
    for test in tests:
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            continue  # "negation dropped" is the same mutant
        yield "condition negated", test, ast.UnaryOp(ast.Not(), test)


def _skipped(node: ast.AST, docstrings: set[int]) -> bool:
    """Lines whose mutants say nothing about behaviour users see."""
    if id(node) in docstrings:
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        # Log lines: a dropped or altered log message is not a behaviour slip.
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return func.value.id in ("log", "logger", "logging")
    return isinstance(node, ast.Assert)


def _annotation_ids(tree: ast.AST) -> set[int]:
    """Nodes inside annotations (never run) and docstrings."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            # Decorators say how a thing is built (`@dataclass(frozen=True)`), not what it does.
            annotations.extend(node.decorator_list)
        for annotation in annotations:
            if annotation is not None:
                skip.update(id(n) for n in ast.walk(annotation))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                skip.update(id(n) for n in ast.walk(body[0]))
    return skip


def _loop_tails(tree: ast.AST) -> set[int]:
    """`continue` statements that end their loop's body anyway: dropping one changes nothing."""
    tails: set[int] = set()

    def walk_tail(body: list[ast.stmt]) -> None:
        if not body:
            return
        last = body[-1]
        if isinstance(last, ast.Continue):
            tails.add(id(last))
        elif isinstance(last, ast.If):
            walk_tail(last.body)
            walk_tail(last.orelse)
        elif isinstance(last, ast.Try):
            walk_tail(last.orelse or last.body)
            for handler in last.handlers:
                walk_tail(handler.body)
        elif isinstance(last, ast.With):
            walk_tail(last.body)

    for node in ast.walk(tree):
        if isinstance(node, ast.For | ast.AsyncFor | ast.While):
            walk_tail(node.body)
    return tails


def mutants_of(module: str) -> list[Mutant]:
    """Every single-line mutant of `module` that still compiles and changes the code."""
    text = (ROOT / module).read_text()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    skip = _annotation_ids(tree)
    skip |= {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for n in ast.walk(f)}
    # Statements are dropped only inside functions: a dropped module-level definition is a
    # NameError at import, which any test catches and which says nothing.
    in_function = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for statement in f.body
        for n in ast.walk(statement)
    }
    last_in_loop = _loop_tails(tree)
    found: dict[str, Mutant] = {}

    def add(kind: str, node: ast.AST, replacement: str) -> None:
        lineno, end = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if lineno is None or lineno != end:
            return  # single-line mutants only
        line = lines[lineno - 1]
        start, stop = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        encoded = line.encode()
        after = (encoded[:start] + replacement.encode() + encoded[stop:]).decode()
        if after == line:
            return
        source = "".join(lines[: lineno - 1]) + after + "".join(lines[lineno:])
        try:
            compiled = ast.dump(ast.parse(source))
        except SyntaxError:
            return
        if compiled == ast.dump(tree):
            return  # the same program, written differently
        found.setdefault(source, Mutant(module, lineno, kind, line, after, source))

    for node in ast.walk(tree):
        if id(node) in skip or _skipped(node, skip):
            continue
        if isinstance(node, ast.expr):
            for kind, replacement in _expression_swaps(node):
                add(kind, node, f"({ast.unparse(replacement)})")
        for kind, test, negated in _condition_swaps(node):
            if id(test) not in skip:
                add(kind, test, f"({ast.unparse(negated)})")
        if id(node) not in in_function:
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            falsy = isinstance(node.value, ast.Constant) and not node.value.value
            if not falsy:  # `return False` -> `return None`: the same to every caller here
                add("return dropped", node, "return None")
        elif isinstance(node, ast.Expr | ast.Assign | ast.AugAssign | ast.Raise | ast.Break):
            add("statement dropped", node, "pass")
        elif isinstance(node, ast.Continue) and id(node) not in last_in_loop:
            add("statement dropped", node, "pass")
    return sorted(found.values(), key=lambda m: (m.module, m.line, m.kind, m.after))


def sample(per_group: int, seed: int) -> list[Mutant]:
    chosen: list[Mutant] = []
    for group, modules in GROUPS.items():
        # One generator per group: a change in one group's modules leaves the others' sample.
        rng = random.Random(f"{seed}-{group}")
        population = [m for module in modules for m in mutants_of(module)]
        chosen += rng.sample(population, min(per_group, len(population)))
    return chosen


def _tests_for(module: str, tree: Path) -> list[str]:
    args = TESTS[module]
    return [a for a in args if not a.endswith(".py") or (tree / a).exists()]


def _run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    """'passed', 'failed' or 'timeout', and the seconds it took. Its own process group, so a
    timeout stops everything the tests started."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return "timeout", time.monotonic() - started
    except BaseException:  # ^C: the tests are in a session of their own, which ^C misses
        _stop(proc)
        raise
    return ("passed" if code == 0 else "failed"), time.monotonic() - started


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _copy_tree(into: Path) -> Path:
    """The checkout's files as git sees them (tracked, and new ones it does not ignore): tests
    read configs/ and docs/ as well as vllama/ and tests/."""
    tree = into / "tree"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is skipped
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    return tree


def run(mutants: list[Mutant], timeout: float, echo: Callable[[str], None]) -> list[Mutant]:
    """The survivors."""
    with tempfile.TemporaryDirectory(prefix="vllama-mutation-") as scratch:
        tree = _copy_tree(Path(scratch))
        for tests in sorted({tuple(_tests_for(m.module, tree)) for m in mutants}):
            outcome, took = _run_tests(tree, list(tests), timeout)
            echo(f"baseline {' '.join(tests)}: {outcome} ({took:.0f} s)")
            if outcome != "passed":
                raise SystemExit("the unmutated tests must pass first")
        survivors: list[Mutant] = []
        for index, mutant in enumerate(mutants, 1):
            target = tree / mutant.module
            original = target.read_text()
            target.write_text(mutant.source)
            try:
                outcome, took = _run_tests(tree, _tests_for(mutant.module, tree), timeout)
            finally:
                target.write_text(original)
            verdict = "SURVIVED" if outcome == "passed" else f"killed ({outcome})"
            echo(f"[{index}/{len(mutants)}] {verdict} {took:.0f} s  {mutant}")
            if outcome == "passed":
                survivors.append(mutant)
        return survivors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-group", type=int, default=16, help="mutants from each group")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--timeout", type=float, default=180, help="seconds for each mutant")
    parser.add_argument("--group", choices=sorted(GROUPS), action="append", help="only these")
    parser.add_argument("--list", action="store_true", help="print the sample and stop")
    parser.add_argument(
        "--survivors-of",
        type=Path,
        metavar="LOG",
        help="run only the sample's mutants that an earlier run's output lists as survived "
        "(after adding tests: what was killed stays killed, the tests only grew)",
    )
    args = parser.parse_args()
    if args.group:
        for name in set(GROUPS) - set(args.group):
            del GROUPS[name]
    mutants = sample(args.per_group, args.seed)
    drawn = len(mutants)
    if args.survivors_of:
        listed = {
            line.removeprefix("  survived: ").rstrip("\n")
            for line in args.survivors_of.read_text().splitlines()
            if line.startswith("  survived: ")
        }
        mutants = [m for m in mutants if str(m) in listed]
        if len(mutants) != len(listed):
            raise SystemExit("that log is not of this sample (seed, size or modules differ)")

    def echo(text: str) -> None:
        print(text, flush=True)

    if args.list:
        for mutant in mutants:
            echo(str(mutant))
        return
    survivors = run(mutants, args.timeout, echo)
    killed = drawn - len(survivors)  # with --survivors-of, the others were killed before
    echo(f"\nkilled {killed} of {drawn} ({100 * killed / max(drawn, 1):.0f}%)")
    for mutant in survivors:
        echo(f"  survived: {mutant}")


if __name__ == "__main__":
    main()
