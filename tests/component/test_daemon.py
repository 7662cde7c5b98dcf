"""The daemon as a process: signals, draining, and nothing left behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.component.fakes import eventually_blocking, worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import VLLAMA, Daemon, free_port, write_config
from vllama.server import EXIT_FORCED


def fake_daemon(tmp_path: Path, drain_timeout: float = 20, **env: str) -> Daemon:
    config = write_config(
        tmp_path / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "stop_timeout": 3,
            "drain_timeout": drain_timeout,
            **worker_ports(),
        },
        {"slow": {"model": "fake/slow", "env": {"FAKE_VLLM_TOKEN_DELAY": "0.1", **env}}},
    )
    return Daemon(config, free_port(), tmp_path / "vllama.log")


def stream_chat(url: str, tokens: int, out: list[str]) -> None:
    body: dict[str, Any] = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    body |= {"max_tokens": tokens, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            for text in response.iter_text():
                out.append(text)
    except httpx.HTTPError as exc:  # the forced-stop test cuts streams on purpose
        out.append(f"<cut: {exc}>")


def post_whole(url: str, path: str, body: dict[str, object], out: list[str]) -> None:
    """One request's status and whole body (streamed or not), as one string."""
    try:
        with httpx.stream("POST", url + path, json=body, timeout=60) as response:
            out.append(f"{response.status_code} " + "".join(response.iter_text()))
    except httpx.HTTPError as exc:
        out.append(f"<cut: {exc}>")


def in_flight(url: str, metric: str = "vllama_requests_in_flight") -> int:
    """vllama's own count of requests being served (or waiting), from its metrics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    lines = [line for line in text.splitlines() if line.startswith(metric + "{")]
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines))


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


def test_a_drain_that_runs_out_ends_each_answer_with_an_error_then_exits_zero(
    tmp_path: Path,
) -> None:
    """drain_timeout (2 s) is shorter than the answers in flight (500 tokens at 0.1 s): each
    client reads why its answer ended, in its own format, and the daemon still exits 0."""
    daemon = fake_daemon(tmp_path, drain_timeout=2)
    with daemon:
        chat = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        requests = {
            "v1 stream": ("/v1/chat/completions", {**chat, "max_tokens": 500, "stream": True}),
            "v1 whole": ("/v1/chat/completions", {**chat, "max_tokens": 500}),
            "ollama stream": ("/api/chat", {**chat, "options": {"num_predict": 500}}),
        }
        results: dict[str, list[str]] = {name: [] for name in requests}
        threads = [
            threading.Thread(target=post_whole, args=(daemon.url, path, body, results[name]))
            for name, (path, body) in requests.items()
        ]
        for thread in threads:
            thread.start()
        eventually_blocking(lambda: in_flight(daemon.url) == 3, what="three answers under way")
        began = time.monotonic()
        assert daemon.terminate() == 0
        assert time.monotonic() - began < 2 + 10  # the drain, then the workers' stop
        for thread in threads:
            thread.join(10)
        v1_stream, v1_whole, ollama_stream = (results[n][0] for n in requests)
        assert v1_stream.startswith("200 ") and "data: [DONE]" not in v1_stream
        last_event = json.loads(v1_stream.rstrip().rsplit("data: ", 1)[1])
        assert last_event["error"]["code"] == "shutting_down"
        assert "drain_timeout" in last_event["error"]["message"]
        assert v1_whole.startswith("503 ")
        assert json.loads(v1_whole[4:])["error"]["code"] == "shutting_down"
        assert ollama_stream.startswith("200 ")
        last_line = json.loads(ollama_stream.rstrip().splitlines()[-1])
        assert "drain_timeout" in last_line["error"]
        assert "answers in flight cut" in daemon.log()


def test_a_request_waiting_for_a_load_at_shutdown_gets_503_shutting_down(tmp_path: Path) -> None:
    """The listener closes at once, but a request already accepted and waiting for its model's
    load is answered: the load is abandoned and the client told why, in its API's format."""
    daemon = fake_daemon(tmp_path, FAKE_VLLM_START_DELAY="30")
    with daemon:
        results: dict[str, list[str]] = {"v1": [], "ollama": []}
        chat = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        threads = [
            threading.Thread(
                target=post_whole, args=(daemon.url, "/v1/chat/completions", chat, results["v1"])
            ),
            threading.Thread(
                target=post_whole, args=(daemon.url, "/api/chat", chat, results["ollama"])
            ),
        ]
        for thread in threads:
            thread.start()
        eventually_blocking(lambda: "Loading model weights" in daemon.log(), what="a load")
        waiting = "vllama_requests_waiting"
        eventually_blocking(lambda: in_flight(daemon.url, waiting) == 2, what="both waiting")
        began = time.monotonic()
        assert daemon.terminate() == 0
        assert time.monotonic() - began < 10, "the 30 s load was waited for, not abandoned"
        for thread in threads:
            thread.join(10)
        v1, ollama = results["v1"][0], results["ollama"][0]
        assert v1.startswith("503 ") and json.loads(v1[4:])["error"]["code"] == "shutting_down"
        assert ollama.startswith("503 ") and "shutting down" in json.loads(ollama[4:])["error"]


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
        (requested,) = [
            json.loads(line) for line in daemon.log().splitlines() if "shutdown requested" in line
        ]
        assert requested["answers_in_flight"] == 1  # the stream the drain waits for
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


def _slow_client_daemon(tmp_path: Path) -> Daemon:
    config = write_config(
        tmp_path / "vllama.toml",
        {"engine_command": FAKE_ENGINE_COMMAND, "idle_timeout": 1, "body_timeout": 1},
        {"a": {"model": "fake/a"}},
    )
    return Daemon(config, free_port(), tmp_path / "vllama.log")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes the connection within `seconds` (what it sent is skipped)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_slow_clients_are_cut_off_and_malformed_requests_log_one_line(tmp_path: Path) -> None:
    with _slow_client_daemon(tmp_path) as daemon:
        # Headers that never end (slowloris): closed after idle_timeout (1 s here).
        with socket.create_connection(("127.0.0.1", daemon.port)) as slow:
            slow.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert _closed_within(slow, 20)
        # A body that never comes: 408 after body_timeout, in Ollama's envelope.
        with socket.create_connection(("127.0.0.1", daemon.port)) as slow:
            slow.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: 100\r\n\r\n{"
            )
            slow.settimeout(20)
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"request body not received within 1s" in answer
        # A malformed request: a 400, and one line in the log, not the parser's traceback.
        with socket.create_connection(("127.0.0.1", daemon.port)) as bad:
            bad.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n")
            bad.settimeout(20)
            assert b" 400 Bad Request" in bad.recv(4096)
        assert daemon.terminate() == 0
    lines = [line for line in daemon.log().splitlines() if "Error handling request" in line]
    assert len(lines) == 1, daemon.log()
    event = json.loads(lines[0])
    assert event["level"] == "error" and "Invalid header token" in event["error"]
    assert "Traceback" not in daemon.log()
