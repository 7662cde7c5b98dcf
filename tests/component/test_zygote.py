"""A warm spare's zygote (engine/zygote.py) with real processes: a spare runs a tiny engine that
starts its children with multiprocessing's `spawn`, as vLLM does (tests/zygote_engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.component.fakes import eventually_blocking
from tests.processes import group_alive, process_group
from vllama.engine import zygote
from vllama.engine.spare import NOTE, READY, import_changes, with_import_changes

REPO = Path(__file__).resolve().parents[2]
ENGINE = [sys.executable, "-m", "tests.zygote_engine.engine"]


def run_spare(tmp_path: Path, env: dict[str, str], *flags: str) -> tuple[dict[str, Any], str]:
    """The engine's RESULT, and everything the spare printed; its whole process group is gone
    when this returns."""
    base = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}
    base |= env
    with process_group(
        [sys.executable, "-m", "vllama.engine.spare", *flags, "--", *ENGINE],
        env=base, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as spare:  # fmt: skip
        assert spare.stdout is not None and spare.stdin is not None
        lines = []
        for raw in spare.stdout:
            lines.append(raw.decode())
            if raw.startswith(READY.encode()):
                break
        order = {"argv": [], "env": {**base, "ZYGOTE_TEST_ORDER": "from the order"}}
        out, _ = spare.communicate(json.dumps(order).encode() + b"\n", timeout=240)
        output = "".join(lines) + out.decode()
        eventually_blocking(
            lambda: not group_alive(spare.pid),
            within=30,
            what="every process of the spare's group gone with it",
            every=0.1,
        )
    assert not list(tmp_path.glob("vllama-zygote-*")), "the zygote's folder was left behind"
    result = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(result.removeprefix("RESULT ")), output


def test_the_engines_spawns_are_forks_of_the_zygote(tmp_path: Path) -> None:
    result, _ = run_spare(tmp_path, {})
    child = result["child"]
    assert child["forked"] and child["child"]["forked"]  # the engine core's own spawn, too
    for seen in (child, child["child"]):  # what a spawned child sees, as the spawner had it
        assert seen["order_env"] == "from the order"
        assert seen["cwd"] == str(tmp_path)
    assert result["child_exitcode"] == 0
    assert child["child_exitcode"] == 0
    assert result["exit_three"] == 3  # its exit status, through the launcher
    assert result["terminated"] == -signal.SIGTERM  # a signal reaches it, and its death is seen


def test_without_the_zygote_the_children_are_spawned(tmp_path: Path) -> None:
    result, _ = run_spare(tmp_path, {}, "--no-zygote")
    assert not result["child"]["forked"]
    assert result["exit_three"] == 3


def test_a_zygote_with_openmp_threads_refuses_to_fork(tmp_path: Path) -> None:
    result, output = run_spare(tmp_path, {"ZYGOTE_TEST_OMP": "child"})
    assert not result["child"]["forked"], "a process with OpenMP threads running was forked"
    assert not result["child"]["child"]["forked"]
    assert "threads are running" in output
    assert result["exit_three"] == 3  # the plain spawn works as ever


def test_a_spare_with_openmp_threads_starts_no_zygote(tmp_path: Path) -> None:
    result, output = run_spare(tmp_path, {"ZYGOTE_TEST_OMP": "now"})
    assert f"{NOTE} no zygote:" in output and "threads are running" in output
    assert not result["child"]["forked"]


def test_a_spawn_whose_import_time_variables_differ_is_not_forked(tmp_path: Path) -> None:
    # The order sets one only for the engine's children, as vLLM's CPU platform sets LD_PRELOAD.
    result, output = run_spare(tmp_path, {"ZYGOTE_TEST_CHILD_ENV": "PYTHONHASHSEED=7"})
    assert not result["child"]["forked"]
    assert "PYTHONHASHSEED differs" in output


def test_the_second_zygote_forks_the_spawns_the_engine_sets_its_variables_for(
    tmp_path: Path,
) -> None:
    # As vLLM's CPU build sets OpenMP's binding for its worker: named to the spare (for vLLM it
    # asks vLLM's code, engine/engine_env.py), a second zygote started with it forks that spawn.
    env = {"ZYGOTE_TEST_CHILD_ENV": "PYTHONHASHSEED=7"}
    result, output = run_spare(tmp_path, env, "--spawn-env", "PYTHONHASHSEED=7")
    child = result["child"]
    assert "vllama.engine.spare second zygote" in child["parent_title"], output
    assert child["hash_seed"] == "7"
    assert "second zygote" in child["child"]["parent_title"]  # its own spawn, too
    assert child["order_env"] == "from the order" and child["cwd"] == str(tmp_path)
    assert "a plain spawn" not in output
    assert result["exit_three"] == 3
    assert result["terminated"] == -signal.SIGTERM


def test_cuda_initialised_is_a_fork_hazard(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert zygote.fork_hazard() == "CUDA is initialised"


def test_the_spare_keeps_what_importing_the_engine_did_to_the_environment() -> None:
    before = {"PATH": "/bin", "X": "1", "GONE": "1"}
    changes = import_changes(before, {"PATH": "/bin", "X": "2", "NEW": "n"})
    assert changes == {"X": "2", "NEW": "n", "GONE": None}
    order = {"PATH": "/usr/bin", "X": "1", "GONE": "1", "MINE": "m"}
    assert with_import_changes(order, before, changes) == {
        "PATH": "/usr/bin",
        "X": "2",
        "NEW": "n",
        "MINE": "m",
    }
    # A variable the order sets otherwise than the spare had it is the order's.
    assert with_import_changes({**order, "X": "9"}, before, changes)["X"] == "9"
