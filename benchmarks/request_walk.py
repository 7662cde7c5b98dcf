"""How one request walks the code: moves between vllama's files, and returns to files already left.

Traces `POST /api/chat` for a model that is not loaded yet (the walk docs/ARCHITECTURE.md tells),
through the in-process app on a loopback port with the fake engine (`tests/fake_vllm.py`), and
counts, over the frames of vllama's own files run by the request's handler task and its load
task: the moves (the running file changes, by a call or a return), the files touched, and the
moves back into a file the walk had already left, split into new calls and returns.

Run it against two trees to compare them, each with its own code first on the path:

    PYTHONPATH=<tree> python -P benchmarks/request_walk.py

The counts are of this one request's path; background tasks (health watches, output readers,
the metrics sampler) are left out. The readiness poll during the start repeats as often as the
fake takes to come up, so each figure is the median of `--runs` fresh daemons (5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from aiohttp import web

import vllama
from vllama.api.app import build_app
from vllama.config.settings import load_config

PACKAGE = str(Path(vllama.__file__).parent)
FAKE_VLLM = Path(__file__).resolve().parent.parent / "tests" / "fake_vllm.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Walk:
    """The file each traced event leaves the request in, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []  # (event, file)
        self.handler: asyncio.Task[Any] | None = None

    def traced(self) -> bool:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return False
        if task is None:
            return False
        return task is self.handler or task.get_name().startswith("load-")

    def profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event not in ("call", "return"):
            return
        path = frame.f_code.co_filename
        if not path.startswith(PACKAGE):
            return
        if self.handler is None and frame.f_code.co_name == "observe_middleware":
            self.handler = asyncio.current_task()
        if not self.traced():
            return
        if event == "call":
            self.steps.append(("call", path))
        else:  # back to the caller's file, where the caller is vllama's
            caller = frame.f_back
            if caller is not None and caller.f_code.co_filename.startswith(PACKAGE):
                self.steps.append(("return", caller.f_code.co_filename))

    def counts(self) -> dict[str, int]:
        moves = revisits = revisit_calls = 0
        current: str | None = None
        seen: set[str] = set()
        for event, path in self.steps:
            if path == current:
                continue
            if current is not None:
                moves += 1
                if path in seen:
                    revisits += 1
                    revisit_calls += event == "call"
                seen.add(current)
            current = path
        files = {path for _, path in self.steps}
        return {
            "moves": moves,
            "files": len(files),
            "returns_to_files_left": revisits,
            "of_which_new_calls": revisit_calls,
        }


async def main() -> dict[str, int]:
    port, first = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            file_data={
                "server": {
                    "engine_command": [sys.executable, str(FAKE_VLLM)],
                    "worker_port_min": first,
                    "worker_port_max": first,
                    "models_dir": folder,
                    "runtime_dir": folder,
                    "warm_spares": 0,
                },
                "models": {"tiny": {"model": "fake/tiny"}},
            }
        )
        runner = web.AppRunner(build_app(config))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        walk = Walk()
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        try:
            async with aiohttp.ClientSession() as client:
                sys.setprofile(walk.profile)
                try:
                    async with client.post(f"http://127.0.0.1:{port}/api/chat", json=body) as r:
                        await r.read()
                        status = r.status
                finally:
                    sys.setprofile(None)
        finally:
            await runner.cleanup()
    if status != 200:
        raise SystemExit(f"the request failed: {status}")
    return walk.counts()


def median_of(runs: int) -> dict[str, int]:
    results = [asyncio.run(main()) for _ in range(runs)]
    return {key: sorted(r[key] for r in results)[runs // 2] for key in results[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(median_of(parser.parse_args().runs)))
