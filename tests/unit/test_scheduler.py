"""The scheduler's decisions against workers with no processes (tests/unit/fake_worker.py).

A pretend GPU host (a fake NVML) and model sizes set by the test; every start finishes when the
test opens its gate. No process is spawned and nothing waits on a clock: `settle()` only lets the
event loop run what is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from tests.component.fakes import FakeNvml, eventually
from tests.unit.fake_worker import FakeWorkers, settle, state
from vllama.catalog.facts import ModelFacts
from vllama.config.settings import ModelSpec, load_config
from vllama.engine import page_cache
from vllama.engine.page_cache import Warmed
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError
from vllama.scheduling.devices import DeviceMemory, Devices
from vllama.scheduling.errors import QueueFull, ShuttingDown
from vllama.scheduling.events import Event, LoadFailed, ModelLoaded, ModelUnloaded
from vllama.scheduling.scheduler import Scheduler

GiB = 1 << 30
S = WorkerState


def config_for(models: dict[str, dict[str, Any]], **server: Any) -> Any:
    # 1 GiB of KV cache: on a GPU each model needs its weights + 1 GiB + what vllama adds for
    # vLLM's overheads and the CUDA context (vllama/scheduling/sizing.py).
    table = {"kv_cache": "1GiB", "restart_backoff": 0, **server}
    specs = {name: {"model": f"org/{name}", **spec} for name, spec in models.items()}
    return load_config(file_data={"server": table, "models": specs})


# An engine setting: a reload that changes it replaces the model's worker.
SEQS_8 = ["--max-num-seqs", "8"]
SEQS_16 = ["--max-num-seqs", "16"]


class FakeDevices(Devices):
    """The NVML fake, answered on the event loop: no thread hops, so `settle()` suffices."""

    async def snapshot_async(self) -> list[DeviceMemory]:
        return self.snapshot()

    async def usage_by_tree_async(self, root: int) -> dict[str, int]:
        return {}


def host(
    models: dict[str, dict[str, Any]],
    weights_gib: dict[str, int],
    gpus: tuple[int, ...] = (10 * GiB,),
    **server: Any,
) -> tuple[Scheduler, FakeWorkers, list[Event]]:
    workers = FakeWorkers()

    async def facts(spec: ModelSpec) -> ModelFacts:
        weights = weights_gib[spec.model.removeprefix("org/")] * GiB
        return ModelFacts(
            weights,
            weight_files=(f"/models/{spec.model}.safetensors",),
            warm_up=("/v1/completions", (("prompt", "hi"), ("max_tokens", 1))),
        )

    scheduler = Scheduler(
        config_for(models, **server),
        workers,
        FakeDevices(nvml=FakeNvml(*gpus)),
        facts=facts,
    )
    events: list[Event] = []
    scheduler.events.subscribe(events.append)
    return scheduler, workers, events


@contextlib.asynccontextmanager
async def held(scheduler: Scheduler, name: str, **kwargs: Any) -> AsyncIterator[None]:
    async with scheduler.lease(name, **kwargs):
        yield


async def test_concurrent_requests_join_one_load() -> None:
    scheduler, workers, events = host({"a": {}}, {"a": 1})
    workers.made["a"].gate.clear()
    leases = [asyncio.create_task(_use(scheduler, "a")) for _ in range(5)]
    await settle()
    assert state(scheduler, "a") is S.STARTING
    assert scheduler.status().queued == 5 and scheduler.model_status("a").waiting == 5  # type: ignore[union-attr]
    workers.made["a"].gate.set()
    await asyncio.gather(*leases)
    assert workers.made["a"].starts == 1
    assert [type(e) for e in events if not _state_event(e)] == [ModelLoaded]
    assert scheduler.status().queued == 0


async def test_a_failed_start_fails_every_waiter_and_the_next_request_retries() -> None:
    scheduler, workers, events = host({"a": {}}, {"a": 1})
    worker = workers.made["a"]
    worker.fail_starts = 1
    tries = (_use(scheduler, "a") for _ in range(3))
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(r, LoadError) and "during start" in str(r) for r in results)
    assert state(scheduler, "a") is S.FAILED
    assert [type(e) for e in events if not _state_event(e)] == [LoadFailed]
    await _use(scheduler, "a")
    assert worker.starts == 2 and state(scheduler, "a") is S.READY
    loaded = [e for e in events if isinstance(e, ModelLoaded)]
    assert loaded[0].restarted_after == "exited"


async def test_fast_failures_in_a_row_are_fatal_until_an_explicit_load() -> None:
    scheduler, workers, _ = host({"a": {}}, {"a": 1}, crash_loop_failures=3)
    worker = workers.made["a"]
    worker.fail_starts = 3
    for _ in range(3):
        with pytest.raises(LoadError):
            await _use(scheduler, "a")
    with pytest.raises(LoadError, match="marked failed after 3 failures"):
        await _use(scheduler, "a")
    assert state(scheduler, "a") is S.FATAL and worker.starts == 3  # refused without a start
    await _use(scheduler, "a", explicit=True)
    assert state(scheduler, "a") is S.READY and worker.starts == 4


async def test_crashes_soon_after_ready_are_timed_from_the_engines_exit() -> None:
    # Each worker ran 1 s before its engine died, but the worker noticed only 100 s after its
    # start (the guard waits for the engine's group before it exits): three fast failures in
    # a row, so the model is FATAL, as a crash loop after ready must be.
    scheduler, workers, _ = host({"a": {}}, {"a": 1}, crash_loop_failures=3, crash_loop_window=5)
    worker = workers.made["a"]
    for _ in range(3):
        await _use(scheduler, "a")
        assert worker.ready_at is not None
        worker.ready_at -= 100.0
        worker.crash(ended_at=worker.ready_at + 1.0)
    with pytest.raises(LoadError, match="marked failed after 3 failures"):
        await _use(scheduler, "a")
    assert state(scheduler, "a") is S.FATAL and worker.starts == 3


async def test_a_fatal_model_is_retried_on_its_own_later_each_time() -> None:
    # The one test here that waits on a clock: vllama's own retry timer (50 ms, then 100 ms).
    scheduler, workers, _ = host(
        {"a": {}}, {"a": 1}, crash_loop_failures=2, fatal_retry_backoff="50ms"
    )
    worker = workers.made["a"]
    worker.fail_starts = 2
    for _ in range(2):
        with pytest.raises(LoadError):
            await _use(scheduler, "a")
    with pytest.raises(LoadError) as refused:
        await _use(scheduler, "a")
    assert state(scheduler, "a") is S.FATAL
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1  # a header
    await eventually(lambda: worker.starts == 3, what="vllama's own retry, with no request")
    await settle()
    assert worker.starts == 3 and state(scheduler, "a") is S.READY
    await _use(scheduler, "a")  # serving again


async def test_an_idle_model_is_evicted_for_one_that_does_not_fit_beside_it() -> None:
    scheduler, workers, events = host({"a": {}, "b": {}}, {"a": 4, "b": 4})  # 9 GiB each of 10
    await _use(scheduler, "a")
    await _use(scheduler, "b")
    assert (state(scheduler, "a"), state(scheduler, "b")) == (S.STOPPED, S.READY)
    assert [e.why for e in events if isinstance(e, ModelUnloaded)] == ["memory"]
    # The share vLLM was told, pinned to that GPU: 4 GiB of weights, 1 GiB of KV and 2.75 GiB
    # of vLLM's overheads, of CUDA's total (NVML not saying its reserve: 98 % of 10 GiB).
    args, env = workers.made["b"].share
    assert args == ("--gpu-memory-utilization", "0.7909", "--max-model-len", "-1")
    assert env["CUDA_VISIBLE_DEVICES"] == "0"


async def test_a_busy_model_is_waited_for_and_each_model_gets_its_turn() -> None:
    scheduler, workers, _ = host({"a": {}, "b": {}}, {"a": 4, "b": 4})  # never both at once
    release = asyncio.Event()
    first = asyncio.create_task(_use(scheduler, "a", until=release))
    await settle()
    b = asyncio.create_task(_use(scheduler, "b"))
    await settle()
    assert state(scheduler, "a") is S.READY and workers.made["b"].starts == 0  # b waits
    # Turn-taking: while b waits, a new request for a queues instead of keeping a busy.
    late = asyncio.create_task(_use(scheduler, "a"))
    await settle()
    assert scheduler.model_status("a").waiting == 1  # type: ignore[union-attr]
    assert not late.done()
    release.set()
    # Every request is served: b once a is idle, then a again for the late request; a model
    # loaded for its waiters is not evicted before they have run (no endless ping-pong).
    await asyncio.wait_for(asyncio.gather(first, b, late), 5)
    assert (workers.made["a"].starts, workers.made["b"].starts) == (2, 1)
    assert state(scheduler, "a") is S.READY and state(scheduler, "b") is S.STOPPED


class ReadAhead:
    """Records what `page_cache.read_ahead` was asked to read, and how far each model's start had
    got."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.workers: FakeWorkers | None = None
        self.reads: list[tuple[tuple[str, ...], dict[str, int]]] = []
        self.stops: list[threading.Event] = []
        monkeypatch.setattr(page_cache, "read_ahead", self)

    async def __call__(self, files: Sequence[str], stop: threading.Event) -> Warmed:
        assert self.workers is not None
        starts = {name: worker.starts for name, worker in self.workers.made.items()}
        self.reads.append((tuple(files), starts))
        self.stops.append(stop)
        return Warmed(1, 0.0)


async def test_a_load_reads_its_weights_ahead_while_it_waits_for_a_busy_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_ahead = ReadAhead(monkeypatch)
    scheduler, workers, _ = host({"a": {}, "b": {}}, {"a": 4, "b": 4})  # never both at once
    read_ahead.workers = workers
    release = asyncio.Event()
    first = asyncio.create_task(_use(scheduler, "a", until=release))
    await eventually(lambda: state(scheduler, "a") is S.READY)
    b = asyncio.create_task(_use(scheduler, "b"))
    await eventually(lambda: len(read_ahead.reads) == 2, what="b's weights read")
    files, starts = read_ahead.reads[1]
    assert files == ("/models/org/b.safetensors",) and starts["b"] == 0  # a still serves
    assert not read_ahead.stops[1].is_set()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, b), 5)
    assert read_ahead.stops[1].is_set()  # b's start is over: the reading stops, if not done


async def test_a_load_queued_behind_another_load_reads_its_weights_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_ahead = ReadAhead(monkeypatch)
    scheduler, workers, _ = host({"a": {}, "b": {}}, {"a": 1, "b": 1})  # room for both
    read_ahead.workers = workers
    workers.made["a"].gate.clear()
    a = asyncio.create_task(_use(scheduler, "a"))
    await eventually(lambda: state(scheduler, "a") is S.STARTING)
    b = asyncio.create_task(_use(scheduler, "b"))
    await eventually(lambda: len(read_ahead.reads) == 2, what="b's weights read")
    assert read_ahead.reads[1][1]["b"] == 0 and state(scheduler, "a") is S.STARTING
    workers.made["a"].gate.set()
    await asyncio.wait_for(asyncio.gather(a, b), 5)


async def test_reading_weights_ahead_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    read_ahead = ReadAhead(monkeypatch)
    scheduler, workers, _ = host({"a": {}}, {"a": 1}, read_ahead_weights=False)
    read_ahead.workers = workers
    await _use(scheduler, "a")
    assert read_ahead.reads == []


async def test_a_model_too_big_for_any_gpu_is_refused_with_the_numbers() -> None:
    scheduler, workers, _ = host({"huge": {}}, {"huge": 20})
    with pytest.raises(LoadError, match=r"needs 25\.2 GiB per device.*10\.0 GiB"):
        await _use(scheduler, "huge")
    assert workers.made["huge"].starts == 0


async def test_the_wait_queue_is_bounded() -> None:
    scheduler, workers, _ = host({"a": {}}, {"a": 1}, max_queue=2)
    workers.made["a"].gate.clear()
    waiting = [asyncio.create_task(_use(scheduler, "a")) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull, match="max_queue 2"):
        await _use(scheduler, "a")
    workers.made["a"].gate.set()
    await asyncio.gather(*waiting)


async def test_max_parallel_admits_one_request_at_a_time() -> None:
    scheduler, _, _ = host({"a": {"max_parallel": 1}}, {"a": 1})
    await _use(scheduler, "a")
    release = asyncio.Event()
    order: list[str] = []

    async def request(tag: str) -> None:
        async with scheduler.lease("a"):
            order.append(f"{tag} in")
            await release.wait()
            order.append(f"{tag} out")

    tasks = [asyncio.create_task(request(tag)) for tag in ("x", "y")]
    await settle()
    assert order == ["x in"]
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["x in", "x out", "y in", "y out"]


async def test_keep_alive_zero_unloads_when_the_last_request_ends() -> None:
    scheduler, _, events = host({"a": {}}, {"a": 1})
    await _use(scheduler, "a", keep_alive=0)
    await settle()
    assert state(scheduler, "a") is S.STOPPED
    assert [e.why for e in events if isinstance(e, ModelUnloaded)] == ["keep_alive"]


async def test_expire_waits_for_requests_in_flight() -> None:
    scheduler, _, _ = host({"a": {}}, {"a": 1})
    async with scheduler.lease("a"):
        scheduler.expire("a")
        await settle()
        assert state(scheduler, "a") is S.READY  # still serving
    await settle()
    assert state(scheduler, "a") is S.STOPPED


async def test_sleep_mode_sleeps_when_idle_and_wakes_on_the_next_request() -> None:
    scheduler, workers, _ = host({"a": {"sleep_when_idle": True, "keep_alive": "1h"}}, {"a": 1})
    await _use(scheduler, "a", keep_alive=0)  # idle at once: to sleep, for the model's 1h
    await settle()
    worker = workers.made["a"]
    assert state(scheduler, "a") is S.SLEEPING and worker.sleeps == 1
    assert "--enable-sleep-mode" in worker.share[0]
    await _use(scheduler, "a", keep_alive=-1)
    assert state(scheduler, "a") is S.READY and (worker.wakes, worker.starts) == (1, 1)
    assert worker.warm_up == ("/v1/completions", {"prompt": "hi", "max_tokens": 1})


async def test_a_crash_while_ready_restarts_on_the_next_request() -> None:
    scheduler, workers, events = host({"a": {}}, {"a": 1})
    await _use(scheduler, "a")
    workers.made["a"].crash()
    await _use(scheduler, "a")
    assert workers.made["a"].starts == 2
    assert [e.restarted_after for e in events if isinstance(e, ModelLoaded)] == [None, "exited"]


async def test_a_reload_restarts_changed_stops_removed_and_adds_new_models() -> None:
    scheduler, workers, _ = host({"a": {}, "b": {}}, {"a": 1, "b": 1, "c": 1}, gpus=(40 * GiB,))
    await _use(scheduler, "a")
    await _use(scheduler, "b")
    old_a = workers.made["a"]
    release = asyncio.Event()
    busy = asyncio.create_task(_use(scheduler, "a", until=release))
    await settle()
    scheduler.reconfigure(config_for({"a": {"keep_alive": "1h", "args": SEQS_8}, "c": {}}))
    await settle()
    assert old_a.state is S.READY  # finishing its request first
    assert scheduler.model_status("b") is None and workers.made["b"].state is S.STOPPED
    assert state(scheduler, "c") is S.STOPPED  # available, not loaded
    release.set()
    await busy
    await settle(200)
    # (mypy keeps the READY it read before the awaits, hence the ignore)
    assert old_a.state is S.STOPPED  # type: ignore[comparison-overlap]
    assert workers.made["a"] is not old_a
    assert state(scheduler, "a") is S.READY  # it was loaded, so the new spec loads again
    status = scheduler.model_status("a")
    assert status is not None and status.keep_alive == 3600


async def test_a_reload_that_changes_only_vllamas_settings_keeps_the_worker() -> None:
    # keep_alive, pinned, aliases: vllama's own scheduling, not the worker's arguments.
    scheduler, workers, _ = host({"a": {}}, {"a": 1}, keep_alive="1h")
    await _use(scheduler, "a")
    worker = workers.made["a"]
    changes = scheduler.reconfigure(config_for({"a": {"keep_alive": "2s", "pinned": True}}))
    assert changes == []
    await settle()
    assert workers.made["a"] is worker and worker.starts == 1 and worker.state is S.READY
    status = scheduler.model_status("a")
    assert status is not None and status.keep_alive == 2  # the new default, counting already
    assert status.expires_at is not None and status.expires_at - time.time() <= 2


async def test_a_reload_keeps_a_keep_alive_the_request_set() -> None:
    scheduler, workers, _ = host({"a": {}}, {"a": 1})
    await _use(scheduler, "a", keep_alive=math.inf)  # this worker: never unloaded (Ollama -1)
    worker = workers.made["a"]
    await asyncio.gather(*scheduler.reconfigure(config_for({"a": {"keep_alive": "2s"}})))
    await settle()
    status = scheduler.model_status("a")
    assert status is not None and status.keep_alive == math.inf and status.expires_at is None
    assert workers.made["a"] is worker and worker.starts == 1


async def test_a_reload_starts_the_new_worker_beside_the_old_one_where_both_fit() -> None:
    # 1 + 2 GiB each on 40 GiB: the old worker serves until the new one is ready (as uvicorn's
    # reload: start the new, check it, then stop the old).
    scheduler, workers, _ = host({"a": {}}, {"a": 1}, gpus=(40 * GiB,))
    await _use(scheduler, "a")
    old_a = workers.made["a"]
    workers.gate_new = asyncio.Event()
    scheduler.reconfigure(config_for({"a": {"keep_alive": "1h", "args": SEQS_8}}))
    await settle()
    new_a = workers.made["a"]
    assert new_a is not old_a and new_a.state is S.STARTING
    assert old_a.state is S.READY
    await _use(scheduler, "a")  # served by the old worker meanwhile
    assert old_a.state is S.READY and new_a.starts == 1
    workers.gate_new.set()
    await settle(200)
    assert (new_a.state, old_a.state) == (S.READY, S.STOPPED)
    status = scheduler.model_status("a")
    assert status is not None and status.keep_alive == 3600 and status.state is S.READY


async def test_a_reload_stops_the_old_worker_first_where_both_do_not_fit() -> None:
    # 9 GiB each on 10 GiB: only one fits, so the old one goes before the new one starts.
    scheduler, workers, _ = host({"a": {}}, {"a": 4})
    await _use(scheduler, "a")
    old_a = workers.made["a"]
    workers.gate_new = asyncio.Event()
    scheduler.reconfigure(config_for({"a": {"keep_alive": "1h", "args": SEQS_8}}))
    await settle(200)
    new_a = workers.made["a"]
    assert new_a is not old_a
    assert old_a.state is S.STOPPED
    assert new_a.state is S.STARTING  # only once the old one is gone
    workers.gate_new.set()
    await settle(200)
    assert (new_a.state, old_a.stops) == (S.READY, 1)


@pytest.mark.parametrize("gpu_gib", [40, 10])  # both fit beside each other / only one fits
async def test_reloads_close_together_change_a_model_one_after_the_other(gpu_gib: int) -> None:
    scheduler, workers, _ = host({"a": {}}, {"a": 4}, gpus=(gpu_gib * GiB,))
    await _use(scheduler, "a")
    first = scheduler.reconfigure(config_for({"a": {"keep_alive": "1h", "args": SEQS_8}}))
    second = scheduler.reconfigure(config_for({"a": {"keep_alive": "2h", "args": SEQS_16}}))
    await asyncio.gather(*first, *second)
    await settle(200)
    running = [w for w in workers.every if w.state in (S.READY, S.STARTING)]
    assert len(running) == 1, [w.state for w in workers.every]
    assert running[0] is workers.made["a"]
    status = scheduler.model_status("a")
    assert status is not None and status.keep_alive == 7200 and status.state is S.READY


async def test_a_request_during_a_reload_never_starts_the_retired_worker_again() -> None:
    # "a" crashed, so a reload retires its runner at once (nothing to start beside); the stop
    # waits for the load lock, which "b"'s start holds. A request for "a" meanwhile must not
    # start the retired runner's worker (it would run with nothing left to stop it): it waits
    # for the new runner and is served there.
    scheduler, workers, _ = host({"a": {}, "b": {}}, {"a": 3, "b": 1}, gpus=(16 * GiB,))
    await _use(scheduler, "a")
    old_a = workers.made["a"]
    old_a.crash()
    workers.made["b"].gate.clear()
    loading_b = asyncio.create_task(_use(scheduler, "b"))
    await settle()
    changes = scheduler.reconfigure(
        config_for({"a": {"keep_alive": "1h", "args": SEQS_8}, "b": {}})
    )
    await settle()
    served: list[object] = []

    async def request() -> None:
        async with scheduler.lease("a") as worker:
            served.append(worker)

    waiting = asyncio.create_task(request())
    await settle()
    workers.made["b"].gate.set()
    await loading_b
    await asyncio.gather(*changes)
    await asyncio.wait_for(waiting, 5)
    assert served == [workers.made["a"]] and workers.made["a"] is not old_a
    assert old_a.starts == 1  # never started again once retired
    assert [w for w in workers.every if w.state is S.READY] == [
        workers.made["b"],
        workers.made["a"],
    ]


async def test_shutdown_refuses_new_leases_and_stops_every_worker() -> None:
    scheduler, workers, _ = host({"a": {}, "b": {}}, {"a": 1, "b": 1}, gpus=(40 * GiB,))
    await _use(scheduler, "a")
    workers.made["b"].gate.clear()
    loading = asyncio.create_task(_use(scheduler, "b"))
    await settle()
    scheduler.begin_shutdown()
    with pytest.raises(ShuttingDown):
        await _use(scheduler, "a")
    with pytest.raises((ShuttingDown, asyncio.CancelledError)):
        await loading
    await scheduler.stop_all()
    assert {m.state for m in scheduler.status().models} == {S.STOPPED}


async def _use(
    scheduler: Scheduler, name: str, until: asyncio.Event | None = None, **kwargs: Any
) -> None:
    """One request: a lease held until `until` is set (at once without it)."""
    async with scheduler.lease(name, **kwargs):
        if until is not None:
            await until.wait()


def _state_event(event: Event) -> bool:
    return type(event).__name__ == "StateChanged"
