"""Helpers to run vllama against the fake vLLM server (tests/fake_vllm.py)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import psutil
from aiohttp import web

from tests.conftest import EMPTY_MODELS_DIR, FAKE_ENGINE_COMMAND, FAKE_ENGINE_MEMORY
from vllama.api.keys import SERVICES
from vllama.config.settings import Config, load_config
from vllama.engine.states import WorkerState
from vllama.scheduling.events import Event, StateChanged
from vllama.scheduling.status import ModelStatus

T = TypeVar("T")


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    within: float = 10,
    what: str = "",
    every: float = 0.02,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None], within: float = 10, what: str = "", every: float = 0.02
) -> T: ...


async def eventually(
    condition: Callable[[], Any], within: float = 10, what: str = "", every: float = 0.02
) -> Any:
    """Wait until `condition()` (a plain or an async function) returns something truthy, and
    return it; fail the test if it has not within `within` seconds. For tests, instead of a
    sleep that hopes something has happened by then. `every`: seconds between checks (longer
    where each check is an HTTP request to a daemon that is busy loading a real model)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        result = await value if inspect.isawaitable(value) else value
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what or condition}")
        await asyncio.sleep(every)


def eventually_blocking(
    condition: Callable[[], T | None], within: float = 10, what: str = "", every: float = 0.02
) -> T:
    """`eventually` for tests that drive a daemon process from plain threads."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what or condition}")
        time.sleep(every)


def worker_ports(span: int = 50) -> dict[str, int]:
    """A random worker port range, so concurrent test runs (and a developer's own daemon on the
    default range) rarely race for the same ports."""
    low = random.randrange(20000, 32000 - span)  # below the ephemeral range (32768-60999)
    return {"worker_port_min": low, "worker_port_max": low + span - 1}


def fake_config(
    models: dict[str, dict[str, Any]], peers: dict[str, Any] | None = None, **server: Any
) -> Config:
    """A config whose workers are fake vLLM servers; `models` maps name -> extra spec keys."""
    server_table: dict[str, Any] = {
        "engine_command": FAKE_ENGINE_COMMAND,
        **worker_ports(),
        "stop_timeout": 3,
        "health_interval": 0.5,
        "load_stall_timeout": 20,
        "models_dir": EMPTY_MODELS_DIR,
        "memory_reserved_cpu": FAKE_ENGINE_MEMORY,
        **server,
    }
    model_tables = {name: {"model": f"fake/{name}", **spec} for name, spec in models.items()}
    tables = {"server": server_table, "models": model_tables, "peers": peers or {}}
    return load_config(file_data=tables)


@dataclass
class _Memory:
    total: int
    free: int
    used: int


class FakeNvml:
    """Just enough of pynvml: GPUs of a given size, nothing running on them."""

    def __init__(self, *totals: int) -> None:
        self.totals = totals
        self.processes: dict[int, list[tuple[int, int]]] = {}  # GPU index -> (pid, bytes)

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        return _Memory(total=self.totals[handle], free=self.totals[handle], used=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [_Process(pid, used) for pid, used in self.processes.get(handle, [])]


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int


class WorkerView:
    """A model's worker as the scheduler's status view shows it, read afresh on every access
    (tests look, they never reach into the scheduler's own state)."""

    def __init__(self, app: web.Application, name: str) -> None:
        self._app, self.name = app, name

    @property
    def status(self) -> ModelStatus:
        status = self._app[SERVICES].scheduler.model_status(self.name)
        assert status is not None, f"{self.name} is not a scheduled model"
        return status

    @property
    def state(self) -> WorkerState:
        return self.status.state

    @property
    def is_ready(self) -> bool:
        return self.status.state is WorkerState.READY

    @property
    def base_url(self) -> str:
        url = self.status.url
        assert url is not None, f"{self.name} has no worker running"
        return url

    @property
    def pid(self) -> int:
        pid = self.status.pid
        assert pid is not None, f"{self.name} has no worker running"
        return pid


def engine_cmdline(pid: int) -> list[str]:
    """The command line of a worker's engine: the guard's child, or a warm spare that took the
    model and named itself after the model's full command line."""
    guard = psutil.Process(pid)
    for proc in [guard, *guard.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            line = " ".join(proc.cmdline()).split()  # a retitled spare: one string, spaces
            if "--served-model-name" in line and "vllama.engine.guard" not in " ".join(line):
                return line
    return guard.cmdline()


def count_starts(app: web.Application) -> list[str]:
    """Names of models whose worker starts from now on, one entry per start."""
    starts: list[str] = []

    def listen(event: Event) -> None:
        if isinstance(event, StateChanged) and event.new is WorkerState.STARTING:
            starts.append(event.model)

    app[SERVICES].scheduler.events.subscribe(listen)
    return starts
