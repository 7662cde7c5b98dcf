"""Workers never outlive their daemon: killed with it (the worker guard's parent-death signal),
or, where that was defeated, stopped by the next daemon before it serves."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil

from tests.component.fakes import eventually_blocking, worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import Daemon, free_port, write_config


def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "stop_timeout": 3,
            "runtime_dir": str(tmp_path / "run"),
            **worker_ports(),
        },
        # The fake starts a grandchild, as vLLM starts its EngineCore.
        {"m": {"model": "fake/m", "env": {"FAKE_VLLM_GRANDCHILD": "1"}}},
    )


def load(daemon: Daemon) -> list[psutil.Process]:
    body = {"model": "m", "prompt": "hi", "max_tokens": 1}
    assert httpx.post(daemon.url + "/v1/completions", json=body, timeout=60).status_code == 200
    tree = psutil.Process(daemon.proc.pid).children(recursive=True)
    assert len(tree) >= 3, tree  # guard, server, engine
    return tree


def alive_pids(processes: list[psutil.Process]) -> list[int]:
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_workers_die_with_a_killed_daemon(tmp_path: Path) -> None:
    daemon = Daemon(config(tmp_path), free_port(), tmp_path / "vllama.log")
    try:
        tree = load(daemon)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        eventually_blocking(
            lambda: not alive_pids(tree), within=10, what="the worker tree gone", every=0.1
        )
    finally:
        daemon.kill()


def test_the_next_daemon_stops_what_a_killed_one_left(tmp_path: Path) -> None:
    path, port = config(tmp_path), free_port()
    first = Daemon(path, port, tmp_path / "first.log")
    try:
        tree = load(first)
        # Defeat the death signal: the guard goes down with the daemon, in one instant.
        # The worker's guard, above the process serving fake/m: the daemon's other child guards
        # a warm spare (and a spare that took the model names it in one string).
        guard = next(
            child
            for child in psutil.Process(first.proc.pid).children()
            if any("fake/m" in " ".join(p.cmdline()) for p in [child, *child.children(True)])
        )
        guard.send_signal(signal.SIGKILL)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        left = [p for p in tree if p.pid != guard.pid]
        time.sleep(1)  # a while: nothing else stops them
        assert alive_pids(left), "the server and its engine should be left running"
    finally:
        first.kill()
    second = Daemon(path, port, tmp_path / "second.log")
    try:
        # By the time the new daemon answers, the old workers are gone.
        assert alive_pids(left) == []
        assert "stopping workers a previous vllama left" in second.log()
    finally:
        second.kill()
