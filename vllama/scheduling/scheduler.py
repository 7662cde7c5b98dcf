"""Which workers run: leases, admission and the wait queue, config reloads, shutdown.

The lease is the one place where requests meet the supervisor: `async with scheduler.lease(name)`
yields a READY worker and counts the request in flight until the block ends. Everything that reads
state to decide a mutation ("is it loaded?" -> "load it") happens without an `await` in between, so
on one event loop it is a single step. Loading is `loading.Loader`; unloading and keep-alive are
`fleet.Fleet`; what it runs is reported through `status()` and `events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import structlog

from vllama.config import replicas
from vllama.config.settings import Config, ModelSpec, ServerSettings
from vllama.engine.leftovers import Leftovers
from vllama.engine.ports import PortAllocator
from vllama.engine.spares import SparePool
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError, Worker
from vllama.scheduling.admission import admit
from vllama.scheduling.devices import Devices
from vllama.scheduling.errors import QueueFull, ShuttingDown
from vllama.scheduling.events import Events, LoadFailed, ModelLoaded
from vllama.scheduling.fleet import Fleet, ModelSlot, StateListener, WorkerFactory, WorkerLike
from vllama.scheduling.loading import FactsSource, Loader
from vllama.scheduling.memory import MemoryPlanner
from vllama.scheduling.reload import plan_reload
from vllama.scheduling.replicas import BUSY_AT, ReplicaView, route
from vllama.scheduling.restarts import RestartPolicy
from vllama.scheduling.status import ModelStatus, SchedulerStatus

log = structlog.get_logger("vllama.scheduler")


def process_workers(
    settings: ServerSettings,
    http: aiohttp.ClientSession,
    leftovers: Leftovers | None = None,
    spares: SparePool | None = None,
) -> WorkerFactory:
    """Workers that run vLLM servers as child processes, on ports from the configured range;
    their process groups recorded in `leftovers` while they run; started from a warm spare
    when `spares` has one that fits."""
    ports = PortAllocator(settings.worker_port_min, settings.worker_port_max)
    launch = spares.launch if spares is not None else None

    def new_worker(name: str, spec: ModelSpec, on_state: StateListener) -> WorkerLike:
        return Worker(name, spec, settings, http, ports, on_state, leftovers, launch)

    return new_worker


class Scheduler:
    def __init__(
        self,
        config: Config,
        new_worker: WorkerFactory,
        devices: Devices,
        facts: FactsSource,
        spares: SparePool | None = None,
    ) -> None:
        self._config = config
        self.spares = spares
        settings = self._settings = config.server
        self.events = Events()
        self.devices = devices
        self.memory = MemoryPlanner(settings, self.devices)
        restarts = RestartPolicy(
            backoff=settings.restart_backoff,
            backoff_max=settings.restart_backoff_max,
            limit=settings.crash_loop_failures,
            window=settings.crash_loop_window,
            fatal_backoff=settings.fatal_retry_backoff,
            fatal_backoff_max=settings.fatal_retry_backoff_max,
        )
        self._fleet = Fleet(settings, restarts, self.events, new_worker)
        self._loader = Loader(
            self._fleet, settings, self.memory, restarts, self.events, facts, spares
        )
        if spares is not None:  # a spare taken by a load is replaced once that load is over
            self.events.subscribe(
                lambda event: (
                    spares.refill() if isinstance(event, ModelLoaded | LoadFailed) else None
                )
            )
        self._fleet.retry = lambda slot: self._start_load(slot, explicit=True)
        self._queued = 0  # requests waiting for a model, all models together
        self._tasks: set[asyncio.Task[object]] = set()  # config-reload work in the background
        for name, spec in config.models.items():
            self.add_model(name, spec)

    def add_model(self, name: str, spec: ModelSpec) -> None:
        """Make a model schedulable (configured at start, or discovered on disk later)."""
        self._fleet.add(name, spec)

    def preload(self) -> None:
        """Start loading every `preload = true` model in the background (failures are logged)."""
        for slot in self._fleet.slots.values():
            if slot.spec.preload:
                self._start_load(slot, explicit=True)

    # -- what runs ---------------------------------------------------------------------------

    def status(self) -> SchedulerStatus:
        models = tuple(slot.status() for slot in self._fleet.slots.values())
        spares = self.spares
        return SchedulerStatus(
            models=models,
            queued=self._queued,
            spares=spares.idle_count if spares is not None else 0,
            spare_bytes=spares.held_bytes if spares is not None else 0,
        )

    def model_status(self, name: str) -> ModelStatus | None:
        slot = self._fleet.slots.get(name)
        return slot.status() if slot is not None else None

    def log_tail(self, name: str, lines: int) -> list[str]:
        slot = self._fleet.slots.get(name)
        return slot.worker.tail(lines) if slot is not None else []

    # -- leases ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, keep_alive: float | None = None, explicit: bool = False
    ) -> AsyncIterator[WorkerLike]:
        """A READY worker for `name`, counted in flight until the block exits.

        `explicit`: an operator's load (Ollama's empty prompt), which also clears a model marked
        failed after a crash loop. Raises `LoadError` (failed to load, crash loop, doesn't fit,
        waited too long), `QueueFull`, or `ShuttingDown`.
        """
        slot = self._pick(name, explicit)
        await self._admit(slot, explicit)
        # No await between the readiness check in _admit and this count.
        slot.in_flight += 1
        if keep_alive is not None:  # holds for this loaded worker, as in Ollama
            slot.keep_alive = keep_alive
        slot.expiry.disarm()
        try:
            yield slot.worker
        finally:
            slot.in_flight -= 1
            slot.last_used = time.monotonic()
            if slot.permits is not None:
                slot.permits.release()
            if slot.idle:
                if slot.unload_when_idle:
                    slot.unload_when_idle = False
                    self._fleet.unload(slot.name, "unload requested", "requested")
                else:
                    self._fleet.arm_expiry(slot)
            self._fleet.notify()

    def _pick(self, name: str, explicit: bool) -> ModelSlot:
        """The slot a request for `name` goes to (a replica, for a model that has them), after
        starting the replicas `replicas.route` asks for."""
        slot = self._fleet.slots[name]
        if slot.spec.replicas == 1 and slot.spec.max_replicas is None:
            return slot
        group = self._fleet.replicas_of(slot)
        now = time.monotonic()
        views = [
            ReplicaView(
                ready=s.worker.is_ready and not s.draining,
                starting=s.load_task is not None,
                failed=s.worker.state is WorkerState.FATAL or s.extra_refused_until > now,
                busy=s.in_flight + s.waiting,
                extra=s.extra,
            )
            for s in group
        ]
        chosen, start = route(views, slot.spec.max_parallel or BUSY_AT)
        for index in start:
            if not self._fleet.closing:
                self._start_load(group[index], explicit)
        return group[chosen]

    async def _admit(self, slot: ModelSlot, explicit: bool) -> None:
        """Wait (bounded in number and time) for a `max_parallel` permit and a READY worker."""
        if self._fleet.closing:
            raise ShuttingDown("vllama is shutting down")
        admission = admit(
            ready=slot.worker.is_ready,
            draining=slot.draining,
            limited=slot.permits is not None,
            permit_free=slot.permits is not None and not slot.permits.locked(),
            queued=self._queued,
            max_queue=self._settings.max_queue,
        )
        if admission == "go":
            return  # the hot path: nothing to wait for, nothing to count
        if admission == "refuse":
            raise QueueFull(
                f"server busy: {self._queued} requests are already waiting for models "
                f"(max_queue {self._settings.max_queue})"
            )
        self._queued += 1
        slot.waiting += 1
        try:
            async with asyncio.timeout(self._settings.load_timeout):
                if slot.permits is not None:
                    await slot.permits.acquire()
                try:
                    await self._until_ready(slot, explicit)
                except BaseException:
                    if slot.permits is not None:
                        slot.permits.release()
                    raise
        except TimeoutError:
            raise LoadError(
                slot.name,
                f"gave up after waiting {self._settings.load_timeout:g}s (load_timeout) for the "
                "model to be ready",
                slot.worker.tail(),
            ) from None
        finally:
            self._queued -= 1
            slot.waiting -= 1
            slot.reserved = min(slot.reserved, slot.waiting)  # no reservation outlives its waiters
            if slot.idle and slot.worker.is_ready:
                self._fleet.arm_expiry(slot)  # every waiter left before using the model

    async def _until_ready(self, slot: ModelSlot, explicit: bool) -> None:
        while True:
            if self._fleet.closing:
                raise ShuttingDown("vllama is shutting down")
            if slot.worker.is_ready and slot.reserved:
                slot.reserved -= 1  # a load finished for the waiters: go, even if draining
                return
            if slot.worker.is_ready and not slot.draining:
                return
            load = slot.load_task or self._start_load(slot, explicit)
            try:
                # Shielded: a waiter whose client went away leaves; the load goes on for the others.
                await asyncio.shield(load)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if load.cancelled() and current is not None and not current.cancelling():
                    continue  # the load was abandoned (shutdown), not this request: look again
                raise

    def _start_load(self, slot: ModelSlot, explicit: bool) -> asyncio.Task[None]:
        if slot.load_task is None:
            slot.load_task = asyncio.create_task(
                self._load(slot, explicit), name=f"load-{slot.name}"
            )
            slot.load_task.add_done_callback(_retrieve_exception)
        return slot.load_task

    async def _load(self, slot: ModelSlot, explicit: bool) -> None:
        try:
            await self._loader.load(slot, explicit)
        finally:
            slot.load_task = None

    # -- unloading ---------------------------------------------------------------------------

    def unload(self, name: str, reason: str, why: str) -> asyncio.Task[None] | None:
        """Begin stopping a model's workers (every replica); the model's own slot's stop task,
        or None when it runs nothing."""
        slot = self._fleet.slots.get(name)
        if slot is None:
            return None
        for replica in self._fleet.replicas_of(slot)[1:]:
            self._fleet.unload(replica.name, reason, why)
        return self._fleet.unload(name, reason, why)

    def expire(self, name: str) -> None:
        """Unload now, or once the requests in flight are done (`keep_alive: 0`)."""
        slot = self._fleet.slots.get(name)
        names = [s.name for s in self._fleet.replicas_of(slot)] if slot is not None else [name]
        for each in names:
            self._fleet.unload_when_idle(each)

    # -- config reload -----------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config's models (see `reload.plan_reload`). Server settings are not
        re-read: they need a restart."""
        slots = self._fleet.slots
        models = {name: slot for name, slot in slots.items() if name == replicas.model_of(name)}
        plan = plan_reload(
            running={name: slot.spec for name, slot in models.items()},
            configured_before=self._config.models.keys(),
            configured_now=config.models,
            fatal=[n for n, s in models.items() if s.worker.state is WorkerState.FATAL],
        )
        self._config = config
        for name in plan.added:
            self.add_model(name, config.models[name])
        for name in plan.changed:
            self._background(self._replace_model(name, config.models[name]), f"reload-{name}")
        for name in plan.removed:
            self._background(self._replace_model(name, None), f"remove-{name}")
        for name in plan.cleared:
            slots[name].fast_failures = 0
            self._background(slots[name].worker.stop("config reloaded"), f"clear-{name}")

    def _background(self, work: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)  # a reference, so the task is not garbage-collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def _replace_model(self, name: str, spec: ModelSpec | None) -> None:
        """`_replace` for a model and its replicas: the replicas go first, and come back (as
        the new spec has them) with the model's own slot."""
        slot = self._fleet.slots[name]
        for replica in self._fleet.replicas_of(slot)[1:]:
            await self._replace(replica, None)
        await self._replace(slot, spec)

    async def _replace(self, slot: ModelSlot, spec: ModelSpec | None) -> None:
        """Let the old worker finish its requests, stop it, then run the new spec (if any)."""
        was_loaded = slot.worker.is_ready or slot.load_task is not None
        while not slot.idle or slot.load_task is not None:
            if slot.load_task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(slot.load_task)
            else:
                await self._fleet.changed()
        if slot.stop_task is not None:
            await slot.stop_task
        async with self._fleet.changes:  # not while another model loads on the GPU
            await slot.worker.stop("config reloaded")
        self._fleet.slots.pop(slot.name, None)
        if spec is None:
            log.info("model removed by config reload", model=slot.name)
            return
        self.add_model(slot.name, spec)
        log.info("model changed by config reload", model=slot.name, reload=was_loaded)
        if was_loaded:
            self._start_load(self._fleet.slots[slot.name], explicit=True)

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new leases and abandon loads in flight (their trees are stopped)."""
        self._fleet.closing = True
        for slot in self._fleet.slots.values():
            slot.expiry.disarm()
            self._fleet.cancel_retry(slot)
            if slot.load_task is not None:
                slot.load_task.cancel()

    async def stop_all(self) -> None:
        self.begin_shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        slots = list(self._fleet.slots.values())
        tasks = [s.load_task for s in slots if s.load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(slot.worker.stop("vllama shutting down") for slot in slots),
            *([self.spares.close()] if self.spares is not None else []),
            return_exceptions=True,
        )

    def kill_all_now(self) -> None:
        for slot in self._fleet.slots.values():
            slot.worker.kill_now()
        if self.spares is not None:
            self.spares.kill_now()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A load whose every waiter left still fails loudly in the log, not as "never retrieved".
    if not task.cancelled():
        task.exception()
