"""The status page's shared snapshot (`api.live.Shared`): one measurement for every open page
within a tick, a new one after any scheduler event or once it is stale."""

from __future__ import annotations

import asyncio

import pytest

from vllama.api.live import Shared


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counting() -> tuple[list[int], Shared[int], Clock]:
    taken: list[int] = []
    clock = Clock()

    async def measure() -> int:
        taken.append(len(taken) + 1)
        await asyncio.sleep(0)
        return len(taken)

    return taken, Shared(measure, fresh=1.0, clock=clock), clock


async def test_pages_asking_within_a_tick_share_one_measurement() -> None:
    taken, shared, clock = counting()
    first = await asyncio.gather(*(shared.get(moves=0) for _ in range(5)))  # five pages at once
    clock.now = 0.9
    assert [*first, await shared.get(moves=0)] == [1] * 6 and taken == [1]
    clock.now = 1.0  # stale: measured again
    assert await shared.get(moves=0) == 2


async def test_a_scheduler_event_makes_the_next_ask_measure_again() -> None:
    taken, shared, _ = counting()
    assert await shared.get(moves=0) == 1
    assert await shared.get(moves=1) == 2  # something moved: what was measured is out of date
    assert await shared.get(moves=1) == 2 and taken == [1, 2]


async def test_a_failed_measurement_is_not_shared_on() -> None:
    calls = 0

    async def measure() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("NVML hiccup")
        return calls

    shared = Shared(measure, fresh=10.0, clock=Clock())
    with pytest.raises(RuntimeError):
        await shared.get(moves=0)
    assert await shared.get(moves=0) == 2


async def test_a_page_going_away_does_not_cancel_the_others_measurement() -> None:
    release = asyncio.Event()

    async def measure() -> int:
        await release.wait()
        return 7

    shared = Shared(measure, fresh=10.0, clock=Clock())
    leaving = asyncio.create_task(shared.get(moves=0))
    staying = asyncio.create_task(shared.get(moves=0))
    await asyncio.sleep(0)
    leaving.cancel()
    release.set()
    assert await staying == 7
    with pytest.raises(asyncio.CancelledError):
        await leaving
