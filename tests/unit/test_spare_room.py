"""Warm spares hold host memory: it counts in the CPU budget, and they are the first thing
dropped when a CPU model needs the room (before any model is evicted)."""

from __future__ import annotations

from typing import Any, cast

from tests.component.fakes import FakeNvml
from tests.unit.fake_worker import FakeWorkers
from tests.unit.test_scheduler import FakeDevices, config_for
from vllama.catalog.facts import ModelFacts
from vllama.config.settings import ModelSpec
from vllama.engine.spares import SparePool
from vllama.scheduling.scheduler import Scheduler

GiB = 1 << 30


class FakeSpares:
    """The pool's face to the scheduler: one idle spare holding `held` bytes, which a load takes
    if it `fits` the model (no import-time variable differs); drop and refill."""

    def __init__(self, held: int, fits: bool) -> None:
        self.held_bytes = held
        self.idle_count = 1
        self.fits = fits
        self.dropped = 0
        self.refills = 0

    def held_bytes_beside(self, spec: ModelSpec) -> int:
        return 0 if self.fits else self.held_bytes

    async def drop_idle(self, keep_for: ModelSpec | None = None) -> int:
        if self.fits and keep_for is not None:
            return 0
        held, self.held_bytes, self.idle_count = self.held_bytes, 0, 0
        self.dropped += 1
        return held

    def refill(self) -> None:
        self.refills += 1

    async def close(self) -> None:
        return None


def cpu_host(spares: FakeSpares, limit_of: Any) -> tuple[Scheduler, FakeWorkers]:
    workers = FakeWorkers()

    async def facts(spec: ModelSpec) -> ModelFacts:
        return ModelFacts(1 * GiB)

    probe = Scheduler(config_for({"a": {}, "b": {}}), workers, FakeDevices(nvml=FakeNvml()), facts)
    need = probe.memory.need("a", probe._config.models["a"], ModelFacts(1 * GiB))
    config = config_for({"a": {}, "b": {}}, memory_limit_cpu=limit_of(need))
    scheduler = Scheduler(
        config,
        workers,
        FakeDevices(nvml=FakeNvml()),
        facts,
        spares=cast(SparePool, spares),
    )
    return scheduler, workers


async def test_a_spare_in_the_way_of_a_cpu_model_is_dropped_before_anything_else() -> None:
    spares = FakeSpares(held=2 * GiB, fits=False)
    scheduler, _ = cpu_host(spares, lambda need: need + 1 * GiB)  # the model, or the spare
    async with scheduler.lease("a"):
        pass
    assert spares.dropped == 1
    assert scheduler.status().loaded() == ["a"]
    assert spares.refills == 1  # a new spare is asked for once the load is over


async def test_a_spare_with_room_beside_the_model_stays() -> None:
    spares = FakeSpares(held=1 * GiB, fits=False)
    scheduler, _ = cpu_host(spares, lambda need: need + 2 * GiB)
    async with scheduler.lease("a"):
        pass
    assert spares.dropped == 0 and spares.held_bytes == 1 * GiB


async def test_the_spare_goes_before_an_idle_model_is_evicted() -> None:
    spares = FakeSpares(held=1 * GiB, fits=False)
    scheduler, _ = cpu_host(spares, lambda need: 2 * need + GiB // 2)  # two models, no spare
    async with scheduler.lease("a"):
        pass
    assert spares.dropped == 0  # a and the spare fit
    async with scheduler.lease("b"):
        pass
    assert spares.dropped == 1
    assert scheduler.status().loaded() == ["a", "b"]  # the spare went, not a
    assert scheduler.status().spares == 0


async def test_the_spare_a_swap_will_take_is_not_in_its_way() -> None:
    # A one-model budget with no room for the spare beside a model: a swap from a to b evicts a,
    # and keeps the spare that b's load takes (its process becomes b's, counted in b's estimate).
    spares = FakeSpares(held=1 * GiB, fits=True)
    scheduler, _ = cpu_host(spares, lambda need: need + GiB // 2)
    async with scheduler.lease("a"):
        pass
    async with scheduler.lease("b"):
        pass
    assert scheduler.status().loaded() == ["b"]
    assert spares.dropped == 0
