"""Helpers shared by the end-to-end modules."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.component.fakes import worker_ports
from tests.conftest import LONG_LIVED, assert_no_leftovers
from tests.daemon import Daemon, free_port, write_config

# An OpenAI/Ollama tool, as clients send it.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@contextlib.contextmanager
def own_daemon(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    server: dict[str, Any],
    models: dict[str, dict[str, Any]],
    peers: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Daemon]:
    """A real daemon for a module (or the session): a folder of its own holding its config, log,
    models folder and runtime state, free worker ports and room for a slow first start (each
    `server` key overrides those); stopped, and checked for leftovers, at the end."""
    folder = tmp_path_factory.mktemp(name)
    settings = {
        "load_stall_timeout": 240,
        "models_dir": str(folder / "models"),
        "runtime_dir": str(folder / "run"),
        **worker_ports(),
        **server,
    }
    config = write_config(folder / "vllama.toml", settings, models, peers)
    with shared_daemon(config, folder / "vllama.log") as daemon:
        yield daemon


@contextlib.contextmanager
def shared_daemon(config: Path, log: Path) -> Iterator[Daemon]:
    """A daemon that outlives single tests (a module or session fixture's): the per-test leak
    check leaves its tree alone, and leftovers are checked once it is stopped."""
    started = time.time() - 1
    daemon = Daemon(config, free_port(), log)
    LONG_LIVED.add(daemon.proc.pid)
    try:
        yield daemon
    finally:
        LONG_LIVED.discard(daemon.proc.pid)
        daemon.kill()
        assert_no_leftovers(started, settle=30)


def workers(daemon: Daemon) -> dict[str, psutil.Process]:
    """Each model's vLLM API server (under its guard, vllama/engine/guard.py), by served name."""
    found = {}
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:  # a warm spare that took a model names itself in one string, spaces between
            cmdline = " ".join(child.cmdline()).split()
        except psutil.Error:  # exited (a zombie until reaped): not a worker any more
            continue
        if "vllm.entrypoints.openai.api_server" in cmdline and "--served-model-name" in cmdline:
            found[cmdline[cmdline.index("--served-model-name") + 1]] = child
    return found


def worker_tree(server: psutil.Process) -> list[psutil.Process]:
    """A worker's processes: its guard, the API server, and vLLM's engine processes."""
    guard = server.parent()
    return [*([guard] if guard is not None else []), server, *server.children(recursive=True)]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
