"""Run `vllama serve` as a real subprocess for tests, and stop it the way systemd would."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.conftest import EMPTY_MODELS_DIR, FAKE_ENGINE_COMMAND, FAKE_ENGINE_MEMORY

VLLAMA = [sys.executable, "-m", "vllama"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(
    path: Path,
    server: dict[str, Any],
    models: dict[str, dict[str, Any]],
    peers: dict[str, dict[str, Any]] | None = None,
) -> Path:
    # Never the user's ~/.vllama/models, nor ~/.vllama/run: the runtime state (the workers file)
    # goes beside the config, in the test's own folder.
    defaults: dict[str, Any] = {
        "models_dir": EMPTY_MODELS_DIR,
        "runtime_dir": str(path.parent / "run"),
    }
    if server.get("engine_command") == FAKE_ENGINE_COMMAND:
        defaults["memory_reserved_cpu"] = FAKE_ENGINE_MEMORY
    server = {**defaults, **server}
    lines = ["[server]", *(f"{k} = {toml_value(v)}" for k, v in server.items())]
    for kind, tables in (("models", models), ("peers", peers or {})):
        for name, table in tables.items():
            lines += ["", f'[{kind}."{name}"]']
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """`vllama serve --config FILE` on a free port; waits for `/` to answer."""

    def __init__(
        self,
        config: Path,
        port: int,
        log_path: Path,
        start_timeout: float = 30,
        source: Path | None = None,
        scheme: str = "http",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`source`: run vllama from this source tree instead of the installed one (benchmarks
        compare two versions side by side)."""
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "VLLAMA_LOG_FORMAT": "json"}
        command = VLLAMA
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
            # -P: `-m` would put the working directory first on the path, ahead of PYTHONPATH, so
            # a run from a checkout's root would import that checkout, not `source`.
            command = [sys.executable, "-P", "-m", "vllama"]
        self.proc = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--port", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllama exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/", timeout=1, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"vllama did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM, as systemd would; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)  # a second signal: stop at once
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
