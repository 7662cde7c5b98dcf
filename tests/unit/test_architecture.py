"""The package's shape (docs/ARCHITECTURE.md), checked on the source: imports run one way between
the parts, no module imports itself back through others, and modules stay small."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vllama"
MAX_LINES = 400
MAX_TOP_LEVEL_MODULES = 4

# What each part may import (besides itself). A part lower in this list never imports a part
# above it; `catalog` sits beside `scheduling` and neither imports the other, nor `remote`.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "demo": set(),
    "catalog": {"config"},
    "engine": {"config"},
    "remote": {"config", "catalog.names"},  # Ollama's naming rules, as the CLI uses them
    "scheduling": {"engine", "config", "catalog.facts"},  # ModelFacts: what catalog hands it
    "ops": {"scheduling", "remote", "engine", "config"},
    "api": {"ops", "scheduling", "remote", "catalog", "engine", "config", "vllama"},
    "server": {"api", "ops", "scheduling", "remote", "catalog", "engine", "config", "demo"},
    # The CLI is a thin HTTP client: besides the daemon's entry point (`serve`), it shares only
    # the pure naming and unit rules, so it prints names and sizes exactly as the daemon does.
    "cli": {"server", "vllama", "config.units", "catalog.names"},
    "__main__": {"cli"},
    "vllama": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> Iterator[str]:
    """Every vllama module `path` imports, anywhere in it (functions and TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from vllama.x import y`: y may be a module itself.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        yield from (name for name in names if name == "vllama" or name.startswith("vllama."))


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "vllama"


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports_of(path, known)) - {name} for name, path in found.items()}


def test_parts_import_only_the_parts_below_them() -> None:
    wrong = []
    for module, targets in graph().items():
        mine = part(module)
        allowed = ALLOWED[mine]
        for target in targets:
            theirs = part(target)
            within = target.removeprefix("vllama.")
            if theirs == mine or theirs in allowed or within in allowed:
                continue
            wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_itself_back() -> None:
    edges = graph()
    cycles = []
    for start in edges:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in edges.get(node, ()):
                if target == start:
                    cycles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not cycles, "\n".join(sorted(cycles))


def test_the_check_sees_a_cycle_and_a_wrong_way_import(tmp_path: Path) -> None:
    # The checks above must be able to fail: the import reader finds both kinds of import.
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vllama.scheduling.scheduler import Scheduler\n"
        "def f():\n    import vllama.api.app\n"
    )
    known = {"vllama.scheduling.scheduler", "vllama.api.app", "vllama.api"}
    assert set(imports_of(source, known)) == {"vllama.scheduling.scheduler", "vllama.api.app"}
    assert "api" not in ALLOWED["scheduling"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (split it by job)"


def test_the_top_level_holds_only_the_entry_points() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == {
        "api",
        "catalog",
        "cli",
        "config",
        "demo",
        "engine",
        "ops",
        "remote",
        "scheduling",
    }
