"""The daemon under systemd: sd_notify messages in order; SIGHUP reloads, bad files kept out."""

from __future__ import annotations

import contextlib
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


def wait_for(check: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    return check()


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
        new_pid = wait_for(lambda: (p := worker_pid(daemon, "change")) != change_pid and p)
        assert new_pid, "the changed model was not restarted"
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
        assert wait_for(lambda: worker_pid(daemon, "new") is None), "the removed model still runs"
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
