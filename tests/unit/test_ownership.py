"""State belongs to the one object that changes it: a model's scheduling state is its runner's.

Every attribute `ModelRunner.__init__` sets is written only by the runner's own methods
(`self.<field> = ...` inside `vllama/scheduling/runner.py`); anywhere else in `scheduling/` (the
only package that holds runners), `<something>.<field> = ...` for one of those fields fails this
test. The coordinator and the scheduler change a runner through its methods.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vllama

SCHEDULING = Path(vllama.__file__).parent / "scheduling"
RUNNER = SCHEDULING / "runner.py"


def _runner_fields() -> set[str]:
    tree = ast.parse(RUNNER.read_text())
    runner = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ModelRunner"
    )
    init = next(
        node
        for node in runner.body
        if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    )
    return {
        target.attr
        for node in ast.walk(init)
        for target in _stored(node)
        if isinstance(target.value, ast.Name) and target.value.id == "self"
    }


def _stored(node: ast.AST) -> list[ast.Attribute]:
    """The attributes an assignment statement writes (tuple targets included)."""
    if isinstance(node, ast.Assign):
        targets: list[ast.expr] = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    else:
        return []
    flat: list[ast.expr] = []
    while targets:
        target = targets.pop()
        if isinstance(target, ast.Tuple | ast.List):
            targets.extend(target.elts)
        else:
            flat.append(target)
    return [t for t in flat if isinstance(t, ast.Attribute)]


def writes_outside_the_runner(package: Path, fields: set[str]) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.stmt):
                continue
            for target in _stored(node):
                if target.attr not in fields:
                    continue
                if isinstance(target.value, ast.Name) and target.value.id == "self":
                    continue  # the runner's own write, or another class's own attribute
                found.append(f"{path.relative_to(package)}:{node.lineno} writes .{target.attr}")
    return found


def test_the_runner_has_the_fields_it_owns() -> None:
    fields = _runner_fields()
    # The ones the review found written by three classes.
    assert {"keep_alive", "fast_failures", "reserved", "draining", "footprint", "devices"} <= fields


def test_only_the_runner_writes_a_model_runners_state() -> None:
    assert writes_outside_the_runner(SCHEDULING, _runner_fields()) == []


def test_a_write_from_outside_is_found(tmp_path: Path) -> None:
    (tmp_path / "coordinator.py").write_text("def f(runner):\n    runner.draining = True\n")
    (tmp_path / "scheduler.py").write_text("def g(r):\n    r.devices, r.footprint = (), 0\n")
    found = writes_outside_the_runner(tmp_path, {"draining", "devices", "footprint"})
    assert found == [
        "coordinator.py:2 writes .draining",
        "scheduler.py:2 writes .footprint",
        "scheduler.py:2 writes .devices",
    ]
