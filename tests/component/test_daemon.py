"""The daemon as a process: signals, draining, and nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.component.fakes import worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import VLLAMA, Daemon, free_port, write_config


def fake_daemon(tmp_path: Path, **env: str) -> Daemon:
    config = write_config(
        tmp_path / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "stop_timeout": 3,
            "drain_timeout": 20,
            **worker_ports(),
        },
        {"slow": {"model": "fake/slow", "env": {"FAKE_VLLM_TOKEN_DELAY": "0.1", **env}}},
    )
    return Daemon(config, free_port(), tmp_path / "vllama.log")


def stream_chat(url: str, tokens: int, out: list[str]) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    body |= {"max_tokens": tokens, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            for text in response.iter_text():
                out.append(text)
    except httpx.HTTPError as exc:  # the forced-stop test cuts streams on purpose
        out.append(f"<cut: {exc}>")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_drains_in_flight_streams_then_stops_workers(tmp_path: Path) -> None:
    daemon = fake_daemon(tmp_path)
    with daemon:
        chunks: list[str] = []
        client = threading.Thread(target=stream_chat, args=(daemon.url, 20, chunks))
        client.start()
        while not chunks:  # the stream is under way
            time.sleep(0.05)
        workers = descendants(daemon.proc.pid)
        assert workers, "a worker should be running"
        assert daemon.terminate() == 0
        client.join(10)
        text = "".join(chunks)
        assert text.rstrip().endswith("data: [DONE]"), "the in-flight stream was cut short"
        assert '"tok19 "' in text
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
        # After the first signal nothing new is accepted.
        try:
            httpx.get(daemon.url + "/", timeout=1)
            raise AssertionError("still listening after shutdown")
        except httpx.ConnectError:
            pass


def test_second_signal_stops_at_once_and_kills_workers(tmp_path: Path) -> None:
    # A worker that ignores SIGTERM and a long drain would hold a graceful stop for a while.
    daemon = fake_daemon(tmp_path, FAKE_VLLM_IGNORE_SIGTERM="1")
    with daemon:
        chunks: list[str] = []
        client = threading.Thread(target=stream_chat, args=(daemon.url, 500, chunks))
        client.start()
        while not chunks:
            time.sleep(0.05)
        workers = descendants(daemon.proc.pid)
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(5)
        assert time.monotonic() - began < 5
        assert daemon.proc.returncode != 0
        client.join(10)
        for proc in workers:
            try:
                proc.wait(5)
            except psutil.NoSuchProcess:
                pass
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


def test_invalid_config_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", {"port": 99999}, {"m": {"model": "a/b"}})
    result = subprocess.run(
        [*VLLAMA, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr
