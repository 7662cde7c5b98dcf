"""Which workers run: load on demand, join loads in flight, keep-alive, restart after a crash.

The lease is the one place where requests meet the supervisor: `async with scheduler.lease(name)`
yields a READY worker and counts the request in flight until the block ends. Everything that reads
state to decide a mutation ("is it loaded?" -> "load it") happens without an `await` in between, so
on one event loop it is a single step.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import structlog

from vllama.config import Config, ModelSpec
from vllama.engine.ports import PortAllocator
from vllama.engine.worker import LoadError, Worker

log = structlog.get_logger("vllama.scheduler")


class ShuttingDown(Exception):
    """The daemon is stopping and takes no new work."""


@dataclass(eq=False)
class ModelSlot:
    """Scheduling state of one configured model."""

    name: str
    spec: ModelSpec
    worker: Worker
    keep_alive: float  # seconds after the last request; math.inf = never unload
    default_keep_alive: float  # the model's configured keep-alive, for each new worker
    in_flight: int = 0
    waiting: int = 0  # requests waiting for a load
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # wall-clock time of the planned unload, when idle
    load_task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None
    unload_when_idle: bool = False  # an explicit unload asked while requests were in flight
    parallel: asyncio.Semaphore | None = None


class Scheduler:
    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self._config = config
        settings = config.server
        self._ports = PortAllocator(settings.worker_port_min, settings.worker_port_max)
        self._http = http
        self._slots: dict[str, ModelSlot] = {}
        for name, spec in config.models.items():
            self.add_model(name, spec)
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def add_model(self, name: str, spec: ModelSpec) -> ModelSlot:
        """Make a model schedulable (configured at start, or discovered on disk later)."""
        slot = self._slots.get(name)
        if slot is None:
            settings = self._config.server
            keep_alive = spec.keep_alive if spec.keep_alive is not None else settings.keep_alive
            slot = ModelSlot(
                name=name,
                spec=spec,
                worker=Worker(name, spec, settings, self._http, self._ports),
                keep_alive=keep_alive,
                default_keep_alive=keep_alive,
                parallel=asyncio.Semaphore(spec.max_parallel) if spec.max_parallel else None,
            )
            self._slots[name] = slot
        return slot

    def slot(self, name: str) -> ModelSlot | None:
        return self._slots.get(name)

    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    # -- leases ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str, keep_alive: float | None = None) -> AsyncIterator[Worker]:
        """A READY worker for `name`, counted in flight until the block exits.

        Raises `LoadError` when the model fails to load, `ShuttingDown` when the daemon stops.
        """
        slot = self._slots[name]
        if slot.parallel is not None:
            await slot.parallel.acquire()
        try:
            await self._until_ready(slot)
            # No await between the readiness check in _until_ready and this count.
            slot.in_flight += 1
            if keep_alive is not None:  # holds for this loaded worker, as in Ollama
                slot.keep_alive = keep_alive
            self._idle.clear()
            self._disarm_expiry(slot)
            try:
                yield slot.worker
            finally:
                slot.in_flight -= 1
                slot.last_used = time.monotonic()
                if slot.in_flight == 0 and slot.waiting == 0:
                    if slot.unload_when_idle:
                        slot.unload_when_idle = False
                        self.unload(name, "unload requested")
                    else:
                        self._arm_expiry(slot)
                if not any(s.in_flight for s in self._slots.values()):
                    self._idle.set()
        finally:
            if slot.parallel is not None:
                slot.parallel.release()

    async def _until_ready(self, slot: ModelSlot) -> None:
        while True:
            if self._closing:
                raise ShuttingDown("vllama is shutting down")
            if slot.worker.is_ready:
                return
            if slot.load_task is None:
                slot.load_task = asyncio.create_task(self._load(slot), name=f"load-{slot.name}")
                slot.load_task.add_done_callback(_retrieve_exception)
            load = slot.load_task
            slot.waiting += 1
            try:
                # Shielded: a waiter whose client went away leaves; the load goes on for the others.
                await asyncio.shield(load)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if load.cancelled() and current is not None and not current.cancelling():
                    continue  # the load was abandoned (shutdown), not this request: look again
                raise
            finally:
                slot.waiting -= 1
                if slot.waiting == 0 and slot.in_flight == 0 and slot.worker.is_ready:
                    self._arm_expiry(slot)

    async def _load(self, slot: ModelSlot) -> None:
        try:
            if slot.stop_task is not None:  # an unload in progress finishes first
                await slot.stop_task
            slot.keep_alive = slot.default_keep_alive  # a new worker starts from the default
            started = time.monotonic()
            await slot.worker.start()
            log.info("model loaded", model=slot.name, seconds=round(time.monotonic() - started, 2))
        except LoadError as error:
            log.error("model load failed", model=slot.name, reason=error.reason)
            raise
        finally:
            slot.load_task = None

    # -- keep-alive --------------------------------------------------------------------------

    def _arm_expiry(self, slot: ModelSlot) -> None:
        self._disarm_expiry(slot)
        if math.isinf(slot.keep_alive) or self._closing:
            return
        slot.expires_at = time.time() + slot.keep_alive
        slot.expiry = asyncio.get_running_loop().call_later(slot.keep_alive, self._expire, slot)

    def _disarm_expiry(self, slot: ModelSlot) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
        slot.expiry = None
        slot.expires_at = None

    def _expire(self, slot: ModelSlot) -> None:
        slot.expiry = None
        slot.expires_at = None
        if slot.in_flight or slot.waiting or not slot.worker.is_ready:
            return
        self.unload(slot.name, "keep_alive expired")

    def unload(self, name: str, reason: str) -> asyncio.Task[None] | None:
        """Begin stopping an idle worker; returns the stop task (None if nothing runs)."""
        slot = self._slots[name]
        if slot.stop_task is not None:
            return slot.stop_task
        if not slot.worker.is_ready:
            return None
        self._disarm_expiry(slot)
        slot.stop_task = asyncio.create_task(self._stop(slot, reason), name=f"stop-{name}")
        return slot.stop_task

    def expire(self, name: str) -> None:
        """Unload a model now, or as soon as its requests in flight are done (Ollama's
        `keep_alive: 0` with an empty prompt, `ollama stop`)."""
        slot = self._slots[name]
        if slot.in_flight or slot.waiting:
            slot.unload_when_idle = True
        else:
            self.unload(name, "unload requested")

    async def _stop(self, slot: ModelSlot, reason: str) -> None:
        try:
            await slot.worker.stop(reason)
        finally:
            slot.stop_task = None

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new leases and abandon loads in flight (their trees are stopped)."""
        self._closing = True
        for slot in self._slots.values():
            self._disarm_expiry(slot)
            if slot.load_task is not None:
                slot.load_task.cancel()

    async def drain(self, within: float) -> bool:
        """Wait for requests in flight to finish; False if some were still running at the limit."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)
        return self._idle.is_set()

    async def stop_all(self) -> None:
        self.begin_shutdown()
        tasks = [s.load_task for s in self._slots.values() if s.load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(slot.worker.stop("vllama shutting down") for slot in self._slots.values()),
            return_exceptions=True,
        )

    def kill_all_now(self) -> None:
        for slot in self._slots.values():
            slot.worker.kill_now()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A load whose every waiter left still fails loudly in the log, not as "never retrieved".
    if not task.cancelled():
        task.exception()
