"""The models the scheduler knows, each with its worker: unloading, keep-alive, change signals.

`Fleet` is what loads and leases share: the table of `ModelSlot`s, the one way to stop a worker
(`unload`), the keep-alive timers that call it, and a "something changed" signal that waiters
(a load waiting for busy models, a reload waiting for requests to end) sleep on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from vllama.config import replicas
from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine.ray_cluster import Cluster
from vllama.engine.states import HOLDS_MEMORY, RUNNING, WorkerState
from vllama.engine.worker import LoadError
from vllama.scheduling.events import Events, ModelUnloaded, StateChanged
from vllama.scheduling.keepalive import Expiry, on_expiry
from vllama.scheduling.placement import LoadedModel
from vllama.scheduling.restarts import RestartPolicy, count_failure, fatal_retry_delay
from vllama.scheduling.sizing import GPU_CONTEXT
from vllama.scheduling.status import ModelStatus

log = structlog.get_logger("vllama.scheduler")


class WorkerLike(Protocol):
    """What scheduling needs of a worker (`vllama.engine.worker.Worker`; a fake in tests)."""

    name: str
    state: WorkerState
    reason: str
    ready_at: float | None
    max_model_len: int | None
    last_error: LoadError | None
    cluster: Cluster | None

    @property
    def is_ready(self) -> bool: ...
    @property
    def base_url(self) -> str: ...
    @property
    def has_port(self) -> bool: ...
    def tail(self, lines: int = ...) -> list[str]: ...
    @property
    def pid(self) -> int | None: ...
    async def start(
        self, share_args: Sequence[str] = (), share_env: Mapping[str, str] | None = None
    ) -> None: ...
    async def stop(self, reason: str) -> object: ...
    async def sleep(self) -> bool: ...
    async def wake(self, warm_up: tuple[str, Mapping[str, object]] | None = None) -> None: ...
    async def confirm_health(self) -> None: ...
    def enter_backoff(self, reason: str) -> None: ...
    def enter_fatal(self, reason: str) -> None: ...
    def kill_now(self) -> None: ...


StateListener = Callable[[WorkerLike, WorkerState, WorkerState, str], None]
WorkerFactory = Callable[[str, ModelSpec, StateListener], WorkerLike]


@dataclass(eq=False)
class ModelSlot:
    """Scheduling state of one model."""

    name: str
    spec: ModelSpec
    worker: WorkerLike
    keep_alive: float  # seconds after the last request; math.inf = never unload
    default_keep_alive: float  # the model's configured keep-alive, for each new worker
    permits: asyncio.Semaphore | None = None  # `max_parallel`
    in_flight: int = 0
    waiting: int = 0  # requests waiting for a load (or a permit)
    # Waiters a finished load is kept for: they go ahead even if the model is draining by then,
    # and placement counts them as busy, so another load cannot evict the model before the
    # requests it was loaded for have run.
    reserved: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expiry: Expiry = field(default_factory=Expiry)
    load_task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    sleep_task: asyncio.Task[None] | None = None
    unload_when_idle: bool = False  # an explicit unload asked while requests were in flight
    devices: tuple[str, ...] = ()  # where its worker runs
    footprint: int = 0  # bytes per device its worker holds (measured, else its share)
    fast_failures: int = 0  # consecutive failures soon after a start
    fatal_retries: int = 0  # times it was marked FATAL since it last ran a while
    retry_at: float | None = None  # monotonic time of vllama's own next try of a FATAL model
    retry_timer: asyncio.TimerHandle | None = None
    # A load elsewhere waits for this busy model to finish: new requests queue instead of
    # keeping it busy forever (they get it back once the other model has had its turn).
    draining: bool = False
    # A replica past the model's `replicas` (up to `max_replicas`): started only while the others
    # are busy, and only where it fits without evicting anything.
    extra: bool = False
    extra_refused_until: float = 0.0  # monotonic: no room for it was found; not tried before

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0

    def status(self) -> ModelStatus:
        worker = self.worker
        return ModelStatus(
            name=self.name,
            state=worker.state,
            reason=worker.reason,
            devices=self.devices,
            footprint=self.footprint,
            in_flight=self.in_flight,
            waiting=self.waiting,
            keep_alive=self.keep_alive,
            expires_at=self.expiry.expires_at,
            context_length=worker.max_model_len,
            pid=worker.pid,
            url=worker.base_url if worker.has_port else None,
            ray_nodes=worker.cluster.nodes if worker.cluster is not None else (),
        )


class Fleet:
    def __init__(
        self,
        settings: ServerSettings,
        restarts: RestartPolicy,
        events: Events,
        new_worker: WorkerFactory,
    ) -> None:
        self._settings = settings
        self._restarts = restarts
        self._events = events
        self._new_worker = new_worker
        self.slots: dict[str, ModelSlot] = {}
        self.closing = False
        self._changed = asyncio.Event()  # set when a request ends or a worker stops
        # Every change of what holds device memory (a load, a wake, a sleep, a stop) takes this
        # lock, so none happens while vLLM profiles memory during a start (vLLM #56830): memory
        # freed under it makes vLLM size its KV cache wrong or assert. Evictions a load decides
        # run inside that load's hold.
        self.changes = asyncio.Lock()
        # Starts a load of a FATAL model on vllama's own (set by the scheduler).
        self.retry: Callable[[ModelSlot], object] | None = None

    def add(self, name: str, spec: ModelSpec) -> ModelSlot:
        """The model's slot, made with its replicas' (`name#2`, ...) if it is new."""
        if name in self.slots:
            return self.slots[name]
        keep_alive = spec.keep_alive if spec.keep_alive is not None else self._settings.keep_alive
        for index, slot_name in enumerate(
            replicas.slot_names(name, spec.replicas, spec.max_replicas), start=1
        ):
            self.slots[slot_name] = ModelSlot(
                name=slot_name,
                spec=spec,
                worker=self._new_worker(slot_name, spec, self._on_state),
                keep_alive=keep_alive,
                default_keep_alive=keep_alive,
                permits=asyncio.Semaphore(spec.max_parallel) if spec.max_parallel else None,
                extra=index > spec.replicas,
            )
        return self.slots[name]

    def replicas_of(self, slot: ModelSlot) -> list[ModelSlot]:
        """Every slot of `slot`'s model, the model's own first."""
        names = replicas.slot_names(slot.name, slot.spec.replicas, slot.spec.max_replicas)
        return [self.slots[n] for n in names if n in self.slots]

    # -- change signal -----------------------------------------------------------------------

    def notify(self) -> None:
        # One event per generation: setting it wakes every waiter, and the next waiters get a
        # fresh one. Cheap enough for the end of every request (no task, no lock).
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, within: float | None = None) -> None:
        """Return when something changed (or after `within` seconds)."""
        try:
            await asyncio.wait_for(self._changed.wait(), within)
        except TimeoutError:
            pass

    def _on_state(self, worker: WorkerLike, old: WorkerState, new: WorkerState, why: str) -> None:
        slot = self.slots.get(worker.name)
        if slot is None or slot.worker is not worker:
            return
        if new is WorkerState.FAILED:
            up_for = time.monotonic() - worker.ready_at if worker.ready_at else None
            slot.fast_failures = count_failure(slot.fast_failures, up_for, self._restarts)
            if up_for is not None and up_for >= self._restarts.window:
                slot.fatal_retries = 0  # it ran a while: a crash loop starts over
        if new is WorkerState.FATAL:
            self._schedule_retry(slot)
        elif new is WorkerState.STARTING:
            self.cancel_retry(slot)
        self._events.emit(StateChanged(worker.name, old, new, why))
        if new in (WorkerState.STOPPED, WorkerState.FAILED):
            self.notify()

    def loaded_models(self, exclude: ModelSlot) -> tuple[LoadedModel, ...]:
        """The models holding memory now, as placement sees them (all but `exclude`)."""
        return tuple(
            LoadedModel(
                name=slot.name,
                devices=slot.devices,
                footprint=slot.footprint,
                in_flight=slot.in_flight + slot.reserved,
                pinned=slot.spec.pinned,
                last_used=slot.last_used,
                starting=slot.worker.state is WorkerState.STARTING,
            )
            for slot in self.slots.values()
            if slot is not exclude and slot.worker.state in HOLDS_MEMORY
        )

    # -- crash loops ---------------------------------------------------------------------------

    def _schedule_retry(self, slot: ModelSlot) -> None:
        """A FATAL model is tried again on its own, later each time (as CrashLoopBackOff)."""
        self.cancel_retry(slot)
        if self.closing or self.retry is None:
            return
        delay = fatal_retry_delay(slot.fatal_retries, self._restarts)
        slot.fatal_retries += 1
        slot.retry_at = time.monotonic() + delay
        slot.retry_timer = asyncio.get_running_loop().call_later(delay, self.retry, slot)
        log.warning("model failed repeatedly; retrying later", model=slot.name, seconds=delay)

    def cancel_retry(self, slot: ModelSlot) -> None:
        if slot.retry_timer is not None:
            slot.retry_timer.cancel()
        slot.retry_timer = slot.retry_at = None

    def retry_after(self, slot: ModelSlot) -> float | None:
        """Seconds until vllama's own next try of this model, when one is planned."""
        if slot.retry_at is None:
            return None
        return max(slot.retry_at - time.monotonic(), 1.0)

    # -- keep-alive --------------------------------------------------------------------------

    def arm_expiry(self, slot: ModelSlot) -> None:
        if self.closing:
            return
        slot.expiry.arm(slot.keep_alive, lambda: self._expire(slot))

    def _expire(self, slot: ModelSlot) -> None:
        action = on_expiry(
            in_flight=slot.in_flight,
            waiting=slot.waiting,
            state=slot.worker.state,
            sleep_when_idle=slot.spec.sleep_when_idle,
            sleeping=slot.sleep_task is not None,
        )
        if action == "sleep":
            # Admission closes first: a request reaching the engine while /sleep runs is
            # aborted or hangs in the paused engine. Requests that come now queue, and wake it.
            slot.draining = True
            slot.sleep_task = asyncio.create_task(self._sleep(slot), name=f"sleep-{slot.name}")
        elif action == "unload":
            self.unload(slot.name, "keep_alive expired", "keep_alive")

    async def _sleep(self, slot: ModelSlot) -> None:
        slept = False
        try:
            async with self.changes:
                slept = await slot.worker.sleep()
                if slept:  # level 1 frees the share; the CUDA context stays on the GPU
                    slot.footprint = min(slot.footprint, GPU_CONTEXT)
                else:
                    log.warning("sleep refused; stopping instead", model=slot.name)
                    await slot.worker.stop("keep_alive expired (sleep failed)")
        finally:
            slot.sleep_task = None
            slot.draining = False
            if slept:  # asleep for the model's own keep_alive, then stopped
                slot.keep_alive = slot.default_keep_alive
                self.arm_expiry(slot)
            self.notify()

    # -- unloading ---------------------------------------------------------------------------

    def unload(
        self, name: str, reason: str, why: str, in_load: bool = False
    ) -> asyncio.Task[None] | None:
        """Begin stopping a worker; returns the stop task (None if nothing runs).

        `why` is the bounded reason for metrics: memory, keep_alive, requested, deleted.
        `in_load`: an eviction decided by a load, which already holds `changes`.
        """
        slot = self.slots[name]
        if slot.stop_task is not None:
            return slot.stop_task
        if slot.worker.state not in RUNNING and slot.sleep_task is None:
            return None
        slot.expiry.disarm()
        slot.draining = True  # no new request may start on a worker that is being stopped
        self._events.emit(ModelUnloaded(name, why))
        slot.stop_task = asyncio.create_task(self._stop(slot, reason, in_load), name=f"stop-{name}")
        return slot.stop_task

    def unload_when_idle(self, name: str) -> None:
        """Unload now, or as soon as the requests in flight are done (Ollama's `keep_alive: 0`
        with an empty prompt, `ollama stop`)."""
        slot = self.slots[name]
        if slot.idle:
            self.unload(name, "unload requested", "requested")
        else:
            slot.unload_when_idle = True

    async def _stop(self, slot: ModelSlot, reason: str, in_load: bool) -> None:
        try:
            if slot.sleep_task is not None:
                await slot.sleep_task
            if in_load:  # an eviction: the load that decided it holds `changes`
                await slot.worker.stop(reason)
            else:
                async with self.changes:
                    await slot.worker.stop(reason)
        finally:
            slot.stop_task = None
            slot.devices = ()
            slot.footprint = 0
            slot.draining = False
            self.notify()
