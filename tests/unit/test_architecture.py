"""The package's shape (docs/ARCHITECTURE.md), checked on the source: imports run one way between
the parts, no module imports itself back through others, and no module grows past the size where
it likely holds two jobs. Files follow seams (what changes together, what another part may see),
not a line count: the size bound is loose on purpose, a smell to look at, not a target to split
under."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vllama"
MAX_LINES = 600  # past this a module most likely holds two jobs: split it by job, not to fit
MAX_TOP_LEVEL_MODULES = 4

# What each part may import (besides itself). A part lower in this list never imports a part
# above it; `catalog` sits beside `scheduling` and `remote`. A dotted entry lets a part see one
# module of another and nothing else of it; that module imports nothing of vllama but `config`
# (checked below), so the narrow door stays narrow. Scheduling sees `catalog.facts`, the value
# type catalog produces for it (`ModelFacts`); catalog imports nothing of scheduling.
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


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    """Every import that `ALLOWED` does not allow."""
    wrong = []
    for module, targets in edges.items():
        mine = part(module)
        allowed = ALLOWED[mine]
        for target in targets:
            theirs = part(target)
            within = target.removeprefix("vllama.")
            if theirs == mine or theirs in allowed or within in allowed:
                continue
            wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def cycles_in(edges: dict[str, set[str]]) -> list[str]:
    """Every chain of imports that leads a module back to itself."""
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
    return sorted(cycles)


def test_parts_import_only_the_parts_below_them() -> None:
    wrong = wrong_way(graph())
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    cycles = cycles_in(graph())
    assert not cycles, "\n".join(cycles)


def test_a_module_another_part_may_see_alone_imports_only_config() -> None:
    # `scheduling` may import `catalog.facts`; were facts to import `catalog.registry`,
    # scheduling would depend on all of catalog through it.
    edges = graph()
    narrow = {
        f"vllama.{entry}" for allowed in ALLOWED.values() for entry in allowed if "." in entry
    }
    assert narrow <= set(edges), narrow - set(edges)  # each names a module that exists
    wide = {
        f"{module} imports {target}"
        for module in narrow
        for target in edges[module]
        if part(target) != "config"
    }
    assert not wide, "\n".join(sorted(wide))


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
    # ... and the rules report what they must: a wrong-way import, a module of a part seen
    # through another's narrow door, and a cycle.
    edges = {
        "vllama.scheduling.scheduler": {"vllama.api.app", "vllama.catalog.facts"},
        "vllama.scheduling.memory": {"vllama.catalog.registry"},
        "vllama.api.app": {"vllama.scheduling.scheduler"},
    }
    assert wrong_way(edges) == [
        "vllama.scheduling.memory imports vllama.catalog.registry",
        "vllama.scheduling.scheduler imports vllama.api.app",
    ]
    assert cycles_in(edges) == [
        "vllama.api.app -> vllama.scheduling.scheduler -> vllama.api.app",
        "vllama.scheduling.scheduler -> vllama.api.app -> vllama.scheduling.scheduler",
    ]


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_grows_past_one_job(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: which two jobs does it hold?"


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
