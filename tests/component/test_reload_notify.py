"""The daemon under systemd: sd_notify messages in order; SIGHUP reloads, bad files kept out."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.component.fakes import eventually_blocking, worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import Daemon, free_port, write_config


def server_table(**extra: Any) -> dict[str, Any]:
    return {"engine_command": FAKE_ENGINE_COMMAND, "stop_timeout": 3, **worker_ports(), **extra}


def complete(daemon: Daemon, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    return httpx.post(daemon.url + "/v1/completions", json=body, timeout=60)


def tokens(daemon: Daemon, model: str) -> int:
    """Completion tokens of a request that leaves the length to the worker."""
    body = {"model": model, "prompt": "hi"}
    answer = httpx.post(daemon.url + "/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    count: int = answer.json()["usage"]["completion_tokens"]
    return count


def worker_pid(daemon: Daemon, model: str) -> int | None:
    """The model's engine process (under its guard; maybe a warm spare that took the model)."""
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline()).split()  # a retitled spare: one string
        except psutil.Error:
            continue
        if "--served-model-name" in line and line[line.index("--served-model-name") + 1] == model:
            return child.pid
    return None


def test_sd_notify_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def drain() -> None:  # as systemd does: a unix datagram queue holds only ~10 messages
        while not done.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=drain)
    reader.start()
    os.environ["NOTIFY_SOCKET"] = str(path)
    os.environ["WATCHDOG_USEC"] = "400000"  # a ping every 0.2 s
    try:
        config = write_config(tmp_path / "v.toml", server_table(), {"a": {"model": "fake/a"}})
        with Daemon(config, free_port(), tmp_path / "v.log") as daemon:
            assert complete(daemon, "a").status_code == 200
            # A STATUS update (every 2 s) with the loaded model, and the watchdog pinging on.
            eventually_blocking(lambda: any("loaded: a" in m for m in messages), within=10)
            eventually_blocking(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 5)
            pid = worker_pid(daemon, "a")
            assert pid is not None
            inherited = psutil.Process(pid).environ()
            assert "NOTIFY_SOCKET" not in inherited and "WATCHDOG_USEC" not in inherited
            assert daemon.terminate() == 0
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
        # Let the reader take in what the daemon sent before it exited, STOPPING=1 last
        # (checked below; not here, where a failure would hide the test's own).
        with contextlib.suppress(AssertionError):
            eventually_blocking(lambda: any(m.startswith("STOPPING=1") for m in messages))
        done.set()
        reader.join()
        sock.close()
    kinds = [m.split("=", 1)[0] for m in messages]
    assert kinds.count("WATCHDOG") >= 5
    ready = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
    stopping = next(i for i, m in enumerate(messages) if m.startswith("STOPPING=1"))
    assert ready < stopping
    assert any("loaded: a" in m for m in messages[ready:stopping])


def test_sighup_reloads_changed_models_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    models: dict[str, dict[str, Any]] = {
        "keep": {"model": "fake/keep"},
        "change": {"model": "fake/c"},
    }
    write_config(path, server_table(), models)
    with Daemon(path, free_port(), tmp_path / "v.log") as daemon:
        assert complete(daemon, "keep").status_code == 200
        assert complete(daemon, "change").status_code == 200
        keep_pid, change_pid = worker_pid(daemon, "keep"), worker_pid(daemon, "change")
        # A changed model, a new one, and the rest untouched.
        models["change"]["env"] = {"FAKE_VLLM_TOKENS": "3"}
        models["new"] = {"model": "fake/new"}
        write_config(path, server_table(), models)
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_blocking(
            lambda: worker_pid(daemon, "change") not in (change_pid, None),
            within=30,
            what="the changed model restarted",
            every=0.1,
        )
        assert worker_pid(daemon, "keep") == keep_pid  # untouched
        assert complete(daemon, "new").status_code == 200
        # The changed model's new settings are in effect (its env: 3 tokens, not the fake's 8).
        assert tokens(daemon, "change") == 3 and tokens(daemon, "keep") == 8
        # A model removed from the file stops, and is no longer served.
        del models["new"]
        write_config(path, server_table(), models)
        new_worker = worker_pid(daemon, "new")
        assert new_worker
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_blocking(
            lambda: worker_pid(daemon, "new") is None,
            within=30,
            what="the removed model stopped",
            every=0.1,
        )
        assert not psutil.pid_exists(new_worker) or psutil.Process(new_worker).status() == "zombie"
        gone = complete(daemon, "new")
        assert gone.status_code == 404 and "new" in gone.json()["error"]["message"]
        assert worker_pid(daemon, "keep") == keep_pid
        # An invalid file is refused and the running config stays.
        path.write_text("[models.broken\n")
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_blocking(lambda: "config reload failed" in daemon.log())
        assert daemon.proc.poll() is None
        assert complete(daemon, "keep").status_code == 200
        # So is a file whose model's Ollama name has a tag no repo serves (refused by the
        # registry, once the library is read, rather than by the config loader).
        write_config(path, server_table(), {**models, "chat": {"model": "qwen3:8b-q6_K"}})
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_blocking(lambda: "no vLLM-ready repo" in daemon.log())
        assert daemon.proc.poll() is None
        assert complete(daemon, "keep").status_code == 200
        assert complete(daemon, "chat").status_code == 404


def _engines_of(daemon: Daemon, model: str) -> list[int]:
    """Every worker's engine serving `model`: a guard's child that names it (the fake's own
    child and the guards left out). A stale replacement's worker is a second one."""
    found = []
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline()).split()  # a retitled spare: one string
            parent = child.parent()
            guarded = parent is not None and "vllama.engine.guard" in parent.cmdline()
        except psutil.Error:
            continue
        named = "--served-model-name" in line
        if guarded and named and line[line.index("--served-model-name") + 1] == model:
            found.append(child.pid)
    return found


def _quiet(daemon: Daemon, seconds: float = 2.0, within: float = 60) -> None:
    """Wait until the daemon has logged nothing for `seconds` (its reloads have settled)."""
    seen = {"size": -1, "since": time.monotonic()}

    def settled() -> bool:
        size = daemon.log_path.stat().st_size
        if size != seen["size"]:
            seen["size"], seen["since"] = size, time.monotonic()
        return time.monotonic() - seen["since"] >= seconds

    eventually_blocking(settled, within=within, what="the daemon's log to go quiet")


def test_a_sighup_storm_reloads_one_pass_at_a_time_and_applies_the_last_file(
    tmp_path: Path,
) -> None:
    """20 SIGHUPs 10 ms apart, each after rewriting the file: the handler only queues a reload,
    one pass runs at a time (signals that arrive meanwhile make one more pass, not one each), a
    pass's model changes finish before the next pass plans its own, the last file wins, and the
    changed model ends up with exactly one worker (none left behind by a stale replacement)."""
    path = tmp_path / "v.toml"
    models: dict[str, dict[str, Any]] = {"m": {"model": "fake/m"}, "keep": {"model": "fake/k"}}
    write_config(path, server_table(), models)
    with Daemon(path, free_port(), tmp_path / "v.log") as daemon:
        assert tokens(daemon, "m") == 8
        assert complete(daemon, "keep").status_code == 200
        keep_pid = worker_pid(daemon, "keep")
        for i in range(20):
            models["m"]["env"] = {"FAKE_VLLM_TOKENS": str(i % 5 + 1)}
            # Whole files only (as an editor saves them): a pass never reads a half-written one.
            os.replace(write_config(tmp_path / "next.toml", server_table(), models), path)
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        _quiet(daemon)  # no requests meanwhile: only the reloads act on the model
        assert len(_engines_of(daemon, "m")) == 1
        assert tokens(daemon, "m") == 5  # the last file's setting (the 20th: 5 tokens)
        assert len(_engines_of(daemon, "m")) == 1
        assert worker_pid(daemon, "keep") == keep_pid
        log = daemon.log()
        # vllama's own lines (a worker's output is the engine's: the fake may print an ignored
        # exception when SIGTERM lands while it starts).
        own = [
            line
            for line in log.splitlines()
            if line[:1] != "{" or json.loads(line).get("event") != "worker output"
        ]
        assert not any("Traceback" in line or "KeyError" in line for line in own), log
        # Passes, in order: each one's model change done before the next pass starts.
        events = [json.loads(line).get("event") for line in log.splitlines() if line[:1] == "{"]
        passes = [e for e in events if e in ("config reloaded", "model changed by config reload")]
        assert 1 <= passes.count("config reloaded") < 20, passes
        changed = "model changed by config reload"
        assert passes[0] == "config reloaded"
        assert not any(a == b == changed for a, b in itertools.pairwise(passes)), passes
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0
