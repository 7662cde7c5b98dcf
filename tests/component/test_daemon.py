"""The daemon as a process: signals, draining, and nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.component.fakes import eventually_blocking, worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import VLLAMA, Daemon, free_port, write_config
from vllama.server import EXIT_FORCED


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


def refused(url: str) -> bool:
    """True once a new request to `url` is refused: the listener is closed. Anything else than
    a refused connection (an answer of any status, a timeout) fails the test."""
    body = {"model": "slow", "messages": [{"role": "user", "content": "new"}], "max_tokens": 1}
    try:
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=5)
    except httpx.ConnectError:
        return True
    raise AssertionError(f"a request after the signal got {response.status_code}: {response.text}")


def test_sigterm_drains_in_flight_streams_then_stops_workers(tmp_path: Path) -> None:
    daemon = fake_daemon(tmp_path)
    with daemon:
        chunks: list[str] = []
        # 60 tokens at 0.1 s: the drain stays open for about 6 s.
        client = threading.Thread(target=stream_chat, args=(daemon.url, 60, chunks))
        client.start()
        eventually_blocking(lambda: chunks, what="the stream is under way")
        workers = descendants(daemon.proc.pid)
        assert workers, "a worker should be running"
        daemon.proc.send_signal(signal.SIGTERM)
        eventually_blocking(lambda: "shutdown requested" in daemon.log(), what="signal handled")
        # While the stream still drains, nothing new is accepted: the listener is closed at the
        # first signal (vllama/server.py), so a new connection is refused.
        assert refused(daemon.url)
        assert daemon.proc.poll() is None and client.is_alive(), "the drain was not under way"
        drained_at_refusal = len(chunks)
        assert daemon.proc.wait(60) == 0
        client.join(10)
        text = "".join(chunks)
        assert text.rstrip().endswith("data: [DONE]"), "the in-flight stream was cut short"
        assert '"tok59 "' in text
        assert len(chunks) > drained_at_refusal  # it went on streaming after the refusal
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


def test_second_signal_stops_at_once_and_kills_workers(tmp_path: Path) -> None:
    # A worker that ignores SIGTERM and a long drain would hold a graceful stop for a while.
    daemon = fake_daemon(tmp_path, FAKE_VLLM_IGNORE_SIGTERM="1")
    with daemon:
        chunks: list[str] = []
        client = threading.Thread(target=stream_chat, args=(daemon.url, 500, chunks))
        client.start()
        eventually_blocking(lambda: chunks, what="the stream is under way")
        workers = descendants(daemon.proc.pid)
        daemon.proc.send_signal(signal.SIGTERM)
        eventually_blocking(lambda: "shutdown requested" in daemon.log(), what="signal handled")
        assert daemon.proc.poll() is None, "the first signal alone should drain, not exit"
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(5)
        assert time.monotonic() - began < 5
        assert daemon.proc.returncode == EXIT_FORCED == 130  # documented: 130 on a forced stop
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
