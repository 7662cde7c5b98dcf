"""Which workers run: load on demand within the memory budget, evict, queue, keep-alive, restart.

The lease is the one place where requests meet the supervisor: `async with scheduler.lease(name)`
yields a READY worker and counts the request in flight until the block ends. Everything that reads
state to decide a mutation ("is it loaded?" -> "load it") happens without an `await` in between, so
on one event loop it is a single step. Loads run one at a time (`_load_lock`): two vLLM servers
starting together on one GPU mis-measure each other's memory, and the placement decision must see
the memory the previous load really took.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from vllama.config import vllm_args
from vllama.config.settings import Config, ModelSpec
from vllama.engine.ports import PortAllocator
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError, Worker
from vllama.ops.metrics import Metrics
from vllama.scheduling.devices import Devices
from vllama.scheduling.memory import MemoryPlanner, Share
from vllama.scheduling.placement import LoadedModel, Place, Refuse, Request, decide
from vllama.scheduling.restarts import (
    RestartPolicy,
    count_failure,
    is_crash_loop,
    restart_delay,
    restart_kind,
)

log = structlog.get_logger("vllama.scheduler")


class ShuttingDown(Exception):
    """The daemon is stopping and takes no new work."""


class QueueFull(Exception):
    """Too many requests are waiting for models already (Ollama's OLLAMA_MAX_QUEUE)."""


@dataclass(eq=False)
class ModelSlot:
    """Scheduling state of one model."""

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
    sleep_task: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None
    unload_when_idle: bool = False  # an explicit unload asked while requests were in flight
    parallel: asyncio.Semaphore | None = None
    devices: tuple[str, ...] = ()  # where its worker runs
    fast_failures: int = 0  # consecutive failures soon after a start
    # A load elsewhere waits for this busy model to finish: new requests queue instead of
    # keeping it busy forever (they get it back once the other model has had its turn).
    draining: bool = False


class Scheduler:
    def __init__(
        self,
        config: Config,
        http: aiohttp.ClientSession,
        devices: Devices | None = None,
        weight_bytes: Callable[[ModelSpec], int] = lambda spec: 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self._config = config
        self._settings = config.server
        self._ports = PortAllocator(self._settings.worker_port_min, self._settings.worker_port_max)
        self._http = http
        self.devices = devices or Devices()
        self.memory = MemoryPlanner(self._settings, self.devices, weight_bytes)
        self._slots: dict[str, ModelSlot] = {}
        self._closing = False
        self._load_lock = asyncio.Lock()
        settings = self._settings
        self._restarts = RestartPolicy(
            backoff=settings.restart_backoff,
            backoff_max=settings.restart_backoff_max,
            limit=settings.crash_loop_failures,
            window=settings.crash_loop_window,
        )
        self._changed = asyncio.Event()  # set when a request ends or a worker stops
        self._queued = 0  # requests waiting for a model, all models together
        self._tasks: set[asyncio.Task[object]] = set()  # config-reload work in the background
        for name, spec in config.models.items():
            self.add_model(name, spec)

    def add_model(self, name: str, spec: ModelSpec) -> ModelSlot:
        """Make a model schedulable (configured at start, or discovered on disk later)."""
        slot = self._slots.get(name)
        if slot is None:
            keep_alive = (
                spec.keep_alive if spec.keep_alive is not None else self._settings.keep_alive
            )
            worker = Worker(name, spec, self._settings, self._http, self._ports, self._on_state)
            slot = ModelSlot(
                name=name,
                spec=spec,
                worker=worker,
                keep_alive=keep_alive,
                default_keep_alive=keep_alive,
                parallel=asyncio.Semaphore(spec.max_parallel) if spec.max_parallel else None,
            )
            self._slots[name] = slot
        return slot

    @property
    def queued(self) -> int:
        return self._queued

    def slot(self, name: str) -> ModelSlot | None:
        return self._slots.get(name)

    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    def preload(self) -> None:
        """Start loading every `preload = true` model in the background (failures are logged)."""
        for slot in self._slots.values():
            if slot.spec.preload:
                self._start_load(slot, explicit=True)

    # -- leases ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, keep_alive: float | None = None, explicit: bool = False
    ) -> AsyncIterator[Worker]:
        """A READY worker for `name`, counted in flight until the block exits.

        `explicit`: an operator's load (Ollama's empty prompt), which also clears a model marked
        failed after a crash loop. Raises `LoadError` (failed to load, crash loop, doesn't fit,
        waited too long), `QueueFull`, or `ShuttingDown`.
        """
        slot = self._slots[name]
        await self._queue(slot, explicit)
        # No await between the readiness check in _queue and this count.
        slot.in_flight += 1
        if keep_alive is not None:  # holds for this loaded worker, as in Ollama
            slot.keep_alive = keep_alive
        self._disarm_expiry(slot)
        try:
            yield slot.worker
        finally:
            slot.in_flight -= 1
            slot.last_used = time.monotonic()
            if slot.parallel is not None:
                slot.parallel.release()
            if slot.in_flight == 0 and slot.waiting == 0:
                if slot.unload_when_idle:
                    slot.unload_when_idle = False
                    self.unload(name, "unload requested", "requested")
                else:
                    self._arm_expiry(slot)
            self._notify()

    async def _queue(self, slot: ModelSlot, explicit: bool) -> None:
        """Wait (bounded in number and time) for a parallel slot and a READY worker."""
        if self._closing:
            raise ShuttingDown("vllama is shutting down")
        if slot.worker.is_ready and slot.parallel is None and not slot.draining:
            return  # the hot path: nothing to wait for, nothing to count
        ready_now = (
            slot.worker.is_ready
            and not slot.draining
            and (slot.parallel is None or not slot.parallel.locked())
        )
        if not ready_now and self._queued >= self._settings.max_queue:
            raise QueueFull(
                f"server busy: {self._queued} requests are already waiting for models "
                f"(max_queue {self._settings.max_queue})"
            )
        self._queued += 1
        slot.waiting += 1
        try:
            async with asyncio.timeout(self._settings.load_timeout):
                if slot.parallel is not None:
                    await slot.parallel.acquire()
                try:
                    await self._until_ready(slot, explicit)
                except BaseException:
                    if slot.parallel is not None:
                        slot.parallel.release()
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
            if slot.waiting == 0 and slot.in_flight == 0 and slot.worker.is_ready:
                self._arm_expiry(slot)  # every waiter left before using the model

    async def _until_ready(self, slot: ModelSlot, explicit: bool) -> None:
        while True:
            if self._closing:
                raise ShuttingDown("vllama is shutting down")
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

    # -- loading -----------------------------------------------------------------------------

    async def _load(self, slot: ModelSlot, explicit: bool) -> None:
        worker = slot.worker
        attempted = False
        try:
            for pending in (slot.sleep_task, slot.stop_task):  # a sleep or unload finishes first
                if pending is not None:
                    await pending
            if worker.state is WorkerState.SLEEPING:
                async with self._load_lock:  # waking takes GPU memory back, like a load
                    await worker.wake()
                return
            restart_after = worker.reason if worker.state is WorkerState.FAILED else None
            await self._crash_loop_guard(slot, explicit)
            async with self._load_lock:
                if worker.is_ready:  # it was draining for another load, which has finished
                    return
                share = await self._place(slot)
                slot.keep_alive = slot.default_keep_alive  # a new worker starts from the default
                started = time.monotonic()
                args, env = share.args, share.env
                if slot.spec.sleep_when_idle:
                    args = (*args, *vllm_args.SLEEP_MODE_ARGS)
                    env = {**env, **vllm_args.SLEEP_MODE_ENV}
                attempted = True
                await worker.start(args, env)
                slot.devices = share.devices
                await self.memory.measure(slot.name, worker.pids(), share.devices)
            seconds = time.monotonic() - started
            log.info("model loaded", model=slot.name, seconds=round(seconds, 2))
            if slot.waiting == 0 and slot.in_flight == 0:  # a preload: nobody will release it
                self._arm_expiry(slot)
            if self.metrics is not None:
                self.metrics.loads.labels(slot.name, "ok").inc()
                self.metrics.load_seconds.labels(slot.name).observe(seconds)
                if restart_after is not None:
                    self.metrics.restarts.labels(slot.name, restart_kind(restart_after)).inc()
        except LoadError as error:
            log.error("model load failed", model=slot.name, reason=error.reason)
            if self.metrics is not None and attempted:  # a refusal is not a failed load
                self.metrics.loads.labels(slot.name, "failed").inc()
            raise
        finally:
            slot.load_task = None

    async def _crash_loop_guard(self, slot: ModelSlot, explicit: bool) -> None:
        """FATAL after repeated fast failures (until an explicit load); else back off."""
        worker = slot.worker
        if explicit:
            slot.fast_failures = 0
            return
        if worker.state is WorkerState.FATAL or (
            worker.state is WorkerState.FAILED and is_crash_loop(slot.fast_failures, self._restarts)
        ):
            reason = (
                f"marked failed after {slot.fast_failures} failures in a row; an explicit load "
                "(e.g. an empty /api/generate request) or a config reload retries it"
            )
            if worker.state is WorkerState.FAILED:
                worker.enter_fatal(reason)
            last = worker.last_error
            raise LoadError(slot.name, reason, last.tail if last else worker.tail())
        delay = restart_delay(slot.fast_failures, self._restarts)
        if delay and worker.state is WorkerState.FAILED:
            worker.enter_backoff(f"restart in {delay:g}s after {slot.fast_failures} failure(s)")
            await asyncio.sleep(delay)

    async def _place(self, slot: ModelSlot) -> Share:
        """Decide where the model goes, evicting idle models or waiting for busy ones."""
        request = self.memory.request(slot.name, slot.spec)
        deadline = time.monotonic() + self._settings.drain_wait
        held: list[ModelSlot] = []
        try:
            return await self._place_loop(slot, request, deadline, held)
        finally:
            for other in held:
                other.draining = False
            if held:
                self._notify()  # their queued requests may go on (or load them again)

    async def _place_loop(
        self, slot: ModelSlot, request: Request, deadline: float, held: list[ModelSlot]
    ) -> Share:
        while True:
            snapshot = await self.memory.snapshot(lambda: self._loaded_models(exclude=slot))
            # From here to the unloads there is no await: the victims are idle as decided, and
            # unloading closes their admission before any request can start on them.
            decision = decide(snapshot, request)
            if isinstance(decision, Refuse):
                raise LoadError(slot.name, decision.reason, [])
            if isinstance(decision, Place):
                reason = f"evicted to make room for {slot.name}"
                stopping = [self.unload(victim, reason, "memory") for victim in decision.evict]
                for task in stopping:
                    if task is not None:
                        await task
                if decision.evict:
                    await self.memory.wait_for_memory(decision.devices, request.need)
                return self.memory.share(slot.spec, decision.devices, request.need)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadError(
                    slot.name,
                    f"does not fit while {', '.join(decision.blocking)} are busy; waited "
                    f"{self._settings.drain_wait:g}s (drain_wait) for them to finish",
                    [],
                )
            log.info("load waits for busy models", model=slot.name, blocking=decision.blocking)
            for name in decision.blocking:
                other = self._slots.get(name)
                if other is not None and not other.draining:
                    other.draining = True
                    held.append(other)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    def _loaded_models(self, exclude: ModelSlot) -> tuple[LoadedModel, ...]:
        loaded = []
        for slot in self._slots.values():
            state = slot.worker.state
            if slot is exclude or state not in (WorkerState.READY, WorkerState.STARTING):
                continue
            loaded.append(
                LoadedModel(
                    name=slot.name,
                    devices=slot.devices or (self.memory.kind,),
                    footprint=self.memory.need(slot.name, slot.spec),
                    in_flight=slot.in_flight,
                    pinned=slot.spec.pinned,
                    last_used=slot.last_used,
                    starting=state is WorkerState.STARTING,
                )
            )
        return tuple(loaded)

    def _on_state(self, worker: Worker, old: WorkerState, new: WorkerState, why: str) -> None:
        slot = self._slots.get(worker.name)
        if slot is None:
            return
        if new is WorkerState.FAILED:
            up_for = time.monotonic() - worker.ready_at if worker.ready_at else None
            slot.fast_failures = count_failure(slot.fast_failures, up_for, self._restarts)
        if new in (WorkerState.STOPPED, WorkerState.FAILED):
            self._notify()

    def _notify(self) -> None:
        # One event per generation: setting it wakes every waiter, and the next waiters get a
        # fresh one. Cheap enough for the end of every request (no task, no lock).
        self._changed.set()
        self._changed = asyncio.Event()

    # -- keep-alive and unloading ------------------------------------------------------------

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
        if slot.spec.sleep_when_idle and slot.sleep_task is None:
            slot.sleep_task = asyncio.create_task(self._sleep(slot), name=f"sleep-{slot.name}")
            return
        self.unload(slot.name, "keep_alive expired", "keep_alive")

    async def _sleep(self, slot: ModelSlot) -> None:
        try:
            if not await slot.worker.sleep():
                log.warning("sleep refused; stopping instead", model=slot.name)
                await slot.worker.stop("keep_alive expired (sleep failed)")
        finally:
            slot.sleep_task = None
            self._notify()

    def unload(self, name: str, reason: str, kind: str) -> asyncio.Task[None] | None:
        """Begin stopping an idle worker; returns the stop task (None if nothing runs).

        `kind` is the bounded reason for metrics: memory, keep_alive, requested, deleted.
        """
        slot = self._slots[name]
        if slot.stop_task is not None:
            return slot.stop_task
        running = (WorkerState.READY, WorkerState.SLEEPING)
        if slot.worker.state not in running and slot.sleep_task is None:
            return None
        self._disarm_expiry(slot)
        slot.draining = True  # no new request may start on a worker that is being stopped
        if self.metrics is not None:
            self.metrics.evictions.labels(name, kind).inc()
        slot.stop_task = asyncio.create_task(self._stop(slot, reason), name=f"stop-{name}")
        return slot.stop_task

    def expire(self, name: str) -> None:
        """Unload a model now, or as soon as its requests in flight are done (Ollama's
        `keep_alive: 0` with an empty prompt, `ollama stop`)."""
        slot = self._slots[name]
        if slot.in_flight or slot.waiting:
            slot.unload_when_idle = True
        else:
            self.unload(name, "unload requested", "requested")

    async def _stop(self, slot: ModelSlot, reason: str) -> None:
        try:
            if slot.sleep_task is not None:
                await slot.sleep_task
            await slot.worker.stop(reason)
        finally:
            slot.stop_task = None
            slot.devices = ()
            slot.draining = False
            self._notify()

    # -- config reload -----------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config's models: changed ones restart, removed ones stop, new ones
        become available, unchanged ones are untouched (a FATAL mark is cleared, as promised).
        Server settings are not re-read: they need a restart."""
        old = self._config.models
        self._config = config
        for name, spec in config.models.items():
            slot = self._slots.get(name)
            if slot is None:
                self.add_model(name, spec)
            elif spec != slot.spec:
                self._background(self._replace(slot, spec), f"reload-{name}")
            elif slot.worker.state is WorkerState.FATAL:
                slot.fast_failures = 0
                self._background(slot.worker.stop("config reloaded"), f"clear-{name}")
        for name in old.keys() - config.models.keys():
            slot = self._slots.get(name)
            if slot is not None:
                self._background(self._replace(slot, None), f"remove-{name}")

    def _background(self, work: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)  # a reference, so the task is not garbage-collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, slot: ModelSlot, spec: ModelSpec | None) -> None:
        """Let the old worker finish its requests, stop it, then run the new spec (if any)."""
        was_loaded = slot.worker.is_ready or slot.load_task is not None
        while slot.in_flight or slot.waiting or slot.load_task is not None:
            if slot.load_task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(slot.load_task)
            else:
                await self._changed.wait()
        if slot.stop_task is not None:
            await slot.stop_task
        await slot.worker.stop("config reloaded")
        self._slots.pop(slot.name, None)
        if spec is None:
            log.info("model removed by config reload", model=slot.name)
            return
        fresh = self.add_model(slot.name, spec)
        log.info("model changed by config reload", model=slot.name, reload=was_loaded)
        if was_loaded:
            self._start_load(fresh, explicit=True)

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new leases and abandon loads in flight (their trees are stopped)."""
        self._closing = True
        for slot in self._slots.values():
            self._disarm_expiry(slot)
            if slot.load_task is not None:
                slot.load_task.cancel()

    async def stop_all(self) -> None:
        self.begin_shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        tasks = [s.load_task for s in self._slots.values() if s.load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(slot.worker.stop("vllama shutting down") for slot in self._slots.values()),
            return_exceptions=True,
        )
        self.devices.close()

    def kill_all_now(self) -> None:
        for slot in self._slots.values():
            slot.worker.kill_now()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A load whose every waiter left still fails loudly in the log, not as "never retrieved".
    if not task.cancelled():
        task.exception()
