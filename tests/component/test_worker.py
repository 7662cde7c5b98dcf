"""The worker's supervision paths, driven by the fake vLLM server's failure knobs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web

from tests.component.fakes import eventually, fake_config
from vllama.engine.guard import GROUP_EXIT_WAIT
from vllama.engine.ports import PortAllocator
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError, MemoryRefused, Worker


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_worker(
    http: aiohttp.ClientSession, env: dict[str, str] | None = None, **server: Any
) -> Worker:
    config = fake_config({"m": {"env": env or {}}}, **server)
    ports = PortAllocator(config.server.worker_port_min, config.server.worker_port_max)
    return Worker("m", config.models["m"], config.server, http, ports)


async def healthy_server_on(port: int) -> web.AppRunner:
    """Another process's server on `port`, answering `/health` with 200."""
    app = web.Application()

    async def healthy(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/health", healthy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_start_until_healthy_then_stop_leaves_nothing(http: aiohttp.ClientSession) -> None:
    worker = make_worker(http, {"FAKE_VLLM_START_DELAY": "0.5"})
    await worker.start()
    assert worker.state is WorkerState.READY
    async with http.get(f"{worker.base_url}/v1/models") as response:
        assert (await response.json())["data"][0]["id"] == "m"
    assert worker.process is not None
    pid = worker.process.pid
    report = await worker.stop("test")
    # (mypy keeps the READY it read before the await, hence the ignore)
    assert worker.state is WorkerState.STOPPED  # type: ignore[comparison-overlap]
    assert report is not None and report.survivors == () and not report.escalated
    assert not pid_alive(pid)
    assert worker.port is None


async def test_crash_at_start_fails_with_the_last_log_lines(http: aiohttp.ClientSession) -> None:
    worker = make_worker(http, {"FAKE_VLLM_CRASH_AT_START": "1"})
    with pytest.raises(LoadError) as info:
        await worker.start()
    assert "exited with code 3 during start" in info.value.reason
    assert any("fake crash at start" in line for line in info.value.tail)
    assert "fake crash at start" in info.value.detail()
    assert worker.state is WorkerState.FAILED
    assert worker.failure == "exited"  # the bounded label restarts are counted by
    assert type(info.value) is LoadError and info.value.code == "start_failed"


async def test_a_start_vllm_refuses_for_memory_is_a_memory_refusal(
    http: aiohttp.ClientSession,
) -> None:
    worker = make_worker(http, {"FAKE_VLLM_CRASH_AT_START": "memory"})
    with pytest.raises(MemoryRefused) as info:
        await worker.start()
    assert info.value.code == "memory_refused"
    assert "exited with code 3 during start" in info.value.reason
    assert any("No available memory for the cache blocks" in line for line in info.value.tail)
    assert worker.last_error is info.value
    assert worker.state is WorkerState.FAILED


async def test_a_silent_start_is_killed_as_stalled(http: aiohttp.ClientSession) -> None:
    worker = make_worker(http, {"FAKE_VLLM_SILENT_START": "30"}, load_stall_timeout=1.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(LoadError, match=r"no progress for 1\.5s"):
        await worker.start()
    assert loop.time() - began < 10
    assert worker.state is WorkerState.FAILED
    assert worker.failure == "load_failed"


async def test_a_slow_start_that_shows_progress_is_not_stalled(http: aiohttp.ClientSession) -> None:
    # 3 s of start-up with progress lines every 0.2 s outlasts a 1.5 s stall limit and still loads.
    worker = make_worker(http, {"FAKE_VLLM_START_DELAY": "3"}, load_stall_timeout=1.5)
    await worker.start()
    assert worker.is_ready
    await worker.stop("test")


async def test_sigterm_ignored_escalates_to_sigkill(http: aiohttp.ClientSession) -> None:
    worker = make_worker(http, {"FAKE_VLLM_IGNORE_SIGTERM": "1"}, stop_timeout=1)
    await worker.start()
    report = await worker.stop("test")
    assert report is not None and report.escalated and report.survivors == ()
    assert report.returncode == -signal.SIGKILL


async def test_engine_outliving_its_api_server_is_killed(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    env = {"FAKE_VLLM_GRANDCHILD": "1", "FAKE_VLLM_GRANDCHILD_PIDFILE": str(pidfile)}
    worker = make_worker(http, env)
    await worker.start()
    grandchild = int(pidfile.read_text())
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGKILL)  # only the API server, as in vLLM issue #55510
    await eventually(lambda: worker.state is WorkerState.FAILED and worker.process is None)
    assert "exited with code -9" in worker.reason
    assert worker.failure == "exited"
    # The next start waits for the failed tree's cleanup (it may still be running), then works.
    await worker.start()
    assert not pid_alive(grandchild), "the orphaned engine process was left running"
    assert worker.is_ready
    await worker.stop("test")


async def test_dead_engine_behind_a_live_server_fails_the_worker(
    http: aiohttp.ClientSession,
) -> None:
    worker = make_worker(http, {"FAKE_VLLM_UNHEALTHY_AFTER": "0.5"})
    await worker.start()
    await eventually(lambda: worker.state is WorkerState.FAILED)
    assert "503" in worker.reason
    await worker.stop("test")
    assert worker.state is WorkerState.STOPPED


async def test_cancelled_start_stops_the_tree(http: aiohttp.ClientSession) -> None:
    worker = make_worker(http, {"FAKE_VLLM_START_DELAY": "30"})
    task = asyncio.create_task(worker.start())
    process = await eventually(lambda: worker.process)
    pid = process.pid
    # Cancelled mid-start: the fake server is up and loading its "weights" (30 s).
    await eventually(lambda: any("Loading model weights" in line for line in worker.tail()))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert worker.state is WorkerState.STOPPED
    assert not pid_alive(pid)


async def test_a_foreign_server_on_the_port_is_not_taken_for_the_worker(
    http: aiohttp.ClientSession,
) -> None:
    # Another process binds the port between vllama's free-port check and the worker's own
    # bind: its health answers must not make the worker READY; the worker, failing to bind,
    # is started once more on the next port.
    worker = make_worker(http, {"FAKE_VLLM_START_DELAY": "1.5"})
    task = asyncio.create_task(worker.start())
    await eventually(lambda: worker.process)
    taken = worker.port
    assert taken is not None
    runner = await healthy_server_on(taken)
    try:
        await task
        assert worker.is_ready and worker.port != taken
        assert worker.process is not None and worker.port is not None
        assert worker.process.listens_on(worker.port)
    finally:
        await worker.stop("test")
        await runner.cleanup()


async def test_a_worker_that_lost_its_port_without_exiting_is_restarted_on_the_next(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Another process answers on the port while the engine, up, listens on nothing (as vLLM was
    # seen to do): the start is given up at once and made again on the next port, rather than
    # waiting out the stall timeout (10 min here).
    marker = tmp_path / "deaf"
    worker = make_worker(http, {"FAKE_VLLM_DEAF_ONCE": str(marker)}, load_stall_timeout=600)
    task = asyncio.create_task(worker.start())
    await eventually(marker.exists, what="the first engine up and deaf")  # before it is replaced
    taken = worker.port
    assert taken is not None
    runner = await healthy_server_on(taken)
    try:
        await asyncio.wait_for(task, 30)
        assert marker.exists() and worker.is_ready and worker.port != taken
    finally:
        await worker.stop("test")
        await runner.cleanup()


@pytest.mark.parametrize("wording", ["uvicorn", "vllm"])
async def test_a_port_taken_before_the_worker_binds_it_is_retried_on_the_next(
    http: aiohttp.ClientSession, tmp_path: Path, wording: str
) -> None:
    marker = tmp_path / "taken"
    env = {"FAKE_VLLM_PORT_TAKEN_ONCE": str(marker), "FAKE_VLLM_PORT_TAKEN_WORDING": wording}
    worker = make_worker(http, env)
    await worker.start()
    assert marker.exists()  # the first start found its port taken
    assert worker.is_ready and worker.port is not None
    await worker.stop("test")


async def test_a_crash_is_timed_from_the_engines_exit_not_the_guards(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The guard waits up to GROUP_EXIT_WAIT (5 s) for an engine group that ignores SIGTERM
    before it exits, so the worker notices late; `ended_at` is when vLLM itself exited, which
    the crash-loop window is measured to."""
    pidfile = tmp_path / "grandchild.pid"
    env = {
        "FAKE_VLLM_GRANDCHILD": "1",
        "FAKE_VLLM_GRANDCHILD_PIDFILE": str(pidfile),
        "FAKE_VLLM_GRANDCHILD_IGNORE_TERM": "1",
    }
    # Health checks far apart: the exit is what the worker notices.
    worker = make_worker(http, env, health_interval=30)
    await worker.start()
    grandchild = int(pidfile.read_text())
    assert worker.process is not None
    # The guard's child: vLLM's API server (killed as an OOM killer would).
    (api_server,) = psutil.Process(worker.process.pid).children()
    os.kill(api_server.pid, signal.SIGKILL)
    await eventually(lambda: worker.state is WorkerState.FAILED, within=20, what="the failure")
    noticed = time.monotonic()
    assert worker.ended_at is not None
    assert noticed - worker.ended_at >= GROUP_EXIT_WAIT - 1.5  # the guard's wait, not counted
    await eventually(lambda: not pid_alive(grandchild), within=10, what="the engine is killed")
