"""Replicas: the pure routing policy, and the scheduler running them against fake workers."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.unit.fake_worker import settle, state
from tests.unit.test_scheduler import GiB, host
from vllama.config.settings import ConfigError, load_config
from vllama.engine.states import WorkerState
from vllama.scheduling.replicas import ReplicaView, route

S = WorkerState


def view(
    ready: bool = False, starting: bool = False, busy: int = 0, extra: bool = False
) -> ReplicaView:
    return ReplicaView(ready=ready, starting=starting, failed=False, busy=busy, extra=extra)


def test_a_cold_model_loads_its_own_slot_and_starts_its_other_replicas() -> None:
    assert route([view(), view()], 16) == (0, (1,))


def test_a_request_goes_to_the_least_busy_ready_replica() -> None:
    assert route([view(ready=True, busy=3), view(ready=True, busy=1)], 16) == (1, ())
    assert route([view(ready=True, busy=2), view(ready=True, busy=2)], 16) == (0, ())


def test_a_replica_not_running_is_started_while_another_serves() -> None:
    # The model's own slot was evicted; its replica serves, and the slot comes back.
    assert route([view(), view(ready=True)], 16) == (1, (0,))
    assert route([view(starting=True), view(ready=True)], 16) == (1, ())
    failed = ReplicaView(ready=False, starting=False, failed=True, busy=0, extra=False)
    assert route([view(ready=True), failed], 16) == (0, ())  # left to its own retry


def test_an_extra_replica_starts_only_while_every_ready_one_is_busy() -> None:
    replicas = [view(ready=True, busy=14), view(ready=True, busy=15), view(extra=True)]
    assert route(replicas, 16) == (0, ())
    replicas = [view(ready=True, busy=15), view(ready=True, busy=15), view(extra=True)]
    assert route(replicas, 16) == (0, (2,))
    replicas = [view(ready=True, busy=15), view(extra=True, starting=True), view(extra=True)]
    assert route(replicas, 16) == (0, ())  # one extra at a time


def test_replica_settings_are_checked() -> None:
    def spec(**table: object) -> object:
        return load_config(file_data={"models": {"m": {"model": "org/m", **table}}})

    with pytest.raises(ConfigError, match=r"max_replicas \(2\) is below replicas \(3\)"):
        spec(replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match=r"models\.m\.replicas"):
        spec(replicas=9)
    with pytest.raises(ConfigError, match="sleep_when_idle"):
        spec(replicas=2, sleep_when_idle=True)
    # Extra replicas on demand are replicas too (docs/SCALE-OUT.md: not with sleep_when_idle).
    with pytest.raises(ConfigError, match="sleep_when_idle"):
        spec(max_replicas=2, sleep_when_idle=True)
    spec(sleep_when_idle=True)  # one replica may sleep


async def test_two_replicas_load_share_requests_and_unload_together() -> None:
    scheduler, workers, _ = host({"a": {"replicas": 2}}, {"a": 1}, gpus=(10 * GiB, 10 * GiB))
    async with scheduler.lease("a"):
        pass
    await settle()
    assert state(scheduler, "a") is S.READY and state(scheduler, "a#2") is S.READY
    assert workers.made["a"].starts == 1 and workers.made["a#2"].starts == 1
    # Held requests spread over both.
    async with contextlib.AsyncExitStack() as stack:
        used = [await stack.enter_async_context(scheduler.lease("a")) for _ in range(4)]
        assert sorted(w.name for w in used) == ["a", "a", "a#2", "a#2"]
    stop = scheduler.unload("a", "test", "requested")
    assert stop is not None
    await stop
    await settle()
    assert state(scheduler, "a") is S.STOPPED and state(scheduler, "a#2") is S.STOPPED


async def test_an_extra_replica_never_evicts_another_model() -> None:
    # One 14 GiB GPU: "a" (under 6 GiB each) and "b" (as much) fit; a second "a" would need
    # b's room.
    scheduler, workers, _ = host(
        {"a": {"max_replicas": 2, "max_parallel": 1}, "b": {}}, {"a": 1, "b": 1}, gpus=(14 * GiB,)
    )
    async with scheduler.lease("b"):
        pass
    async with scheduler.lease("a"):
        # a is busy (max_parallel 1 in flight): the next request asks for an extra replica,
        # which finds no room without evicting b, and waits for a instead.
        second = asyncio.create_task(_use(scheduler, "a"))
        await settle()
        assert state(scheduler, "b") is S.READY and state(scheduler, "a#2") is S.STOPPED
    await second
    assert workers.made["a#2"].starts == 0


async def _use(scheduler: object, name: str) -> None:
    async with scheduler.lease(name):  # type: ignore[attr-defined]
        pass
