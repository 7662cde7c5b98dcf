"""One model's runner: the only object that changes that model's scheduling state.

A `ModelRunner` owns one worker and everything counted about it: requests in flight and waiting,
the `max_parallel` permits, the keep-alive timer, the load, stop and sleep in progress, where it
runs and what it holds, and the crash-loop counters. Every field is written here and nowhere else
(`tests/unit/test_ownership.py` checks it); the coordinator and the scheduler ask through methods.
The worker's state changes come in through one method, `_on_state`, which moves the crash
counters with them (as supervisor's `Subprocess.change_state` does).

Anything that changes device memory (a start, a wake, a sleep, a stop) goes through the
`Placement` the runner was given (`coordinator.Coordinator`), which serializes them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine.ray_cluster import Cluster
from vllama.engine.states import HOLDS_MEMORY, RUNNING, FailureKind, WorkerState
from vllama.engine.vllm_report import StartReport
from vllama.engine.worker import LoadError
from vllama.scheduling.admission import Admission, admit
from vllama.scheduling.errors import CrashLoop, PlacementRefused, Replaced, ShuttingDown
from vllama.scheduling.events import Events, LoadFailed, ModelLoaded, ModelUnloaded, StateChanged
from vllama.scheduling.keepalive import Expiry, on_expiry
from vllama.scheduling.placement import LoadedModel
from vllama.scheduling.restarts import (
    RestartPolicy,
    count_failure,
    fatal_retry_delay,
    is_crash_loop,
    restart_delay,
)
from vllama.scheduling.status import ModelStatus

log = structlog.get_logger("vllama.scheduler")


class WorkerLike(Protocol):
    """What scheduling needs of a worker (`vllama.engine.worker.Worker`; a fake in tests)."""

    name: str
    state: WorkerState
    reason: str
    failure: FailureKind | None
    ready_at: float | None
    ended_at: float | None  # when its engine ended, while FAILED (monotonic)
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
    @property
    def memory_report(self) -> StartReport: ...
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


class Changes:
    """A "something changed" signal (a request ended, a worker stopped) that waiters sleep on:
    a load waiting for busy models, a reload waiting for requests to end."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        # One event per generation: setting it wakes every waiter, and the next waiters get a
        # fresh one. Cheap enough for the end of every request (no task, no lock).
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, within: float | None = None) -> None:
        """Return when something changed (or after `within` seconds)."""
        try:
            await asyncio.wait_for(self._event.wait(), within)
        except TimeoutError:
            pass


class Placement(Protocol):
    """What a runner asks of the coordinator: every change of device memory, one at a time."""

    async def start(self, runner: ModelRunner, may_evict: bool) -> None: ...
    async def wake(self, runner: ModelRunner) -> None: ...
    async def sleep(self, runner: ModelRunner) -> bool: ...
    async def stop(self, runner: ModelRunner, reason: str, in_load: bool) -> None: ...


@dataclass(frozen=True)
class Shared:
    """What every runner of one scheduler shares (none of it is a runner's to change)."""

    settings: ServerSettings
    restarts: RestartPolicy
    events: Events
    changes: Changes
    closing: Callable[[], bool]


class ModelRunner:
    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        new_worker: WorkerFactory,
        placement: Placement,
        shared: Shared,
        extra: bool = False,
    ) -> None:
        self.name = name
        self.spec = spec
        self.worker = new_worker(name, spec, self._on_state)
        self._placement = placement
        self._shared = shared
        keep_alive = self._configured_keep_alive(spec)
        self.keep_alive = keep_alive  # seconds after the last request; math.inf = never unload
        self.default_keep_alive = keep_alive  # the model's configured keep-alive, per new worker
        self._permits = asyncio.Semaphore(spec.max_parallel) if spec.max_parallel else None
        self.in_flight = 0
        self.waiting = 0  # requests waiting for a load (or a permit)
        # Waiters a finished load is kept for: they go ahead even if the model is draining by
        # then, and placement counts them as busy, so another load cannot evict the model before
        # the requests it was loaded for have run.
        self.reserved = 0
        self.last_used = time.monotonic()
        self._expiry = Expiry()
        self.load_task: asyncio.Task[None] | None = None
        self.stop_task: asyncio.Task[None] | None = None
        self.sleep_task: asyncio.Task[None] | None = None
        self._unload_when_idle = False  # an explicit unload asked while requests were in flight
        self.devices: tuple[str, ...] = ()  # where its worker runs
        self.footprint = 0  # bytes per device its worker holds (measured, else its share)
        self.fast_failures = 0  # consecutive failures soon after a start
        self._fatal_retries = 0  # times it was marked FATAL since it last ran a while
        self._retry_at: float | None = None  # monotonic time of vllama's own next try (FATAL)
        self._retry_timer: asyncio.TimerHandle | None = None
        # A load elsewhere waits for this busy model to finish: new requests queue instead of
        # keeping it busy forever (they get it back once the other model has had its turn).
        self.draining = False
        # A replica past the model's `replicas` (up to `max_replicas`): started only while the
        # others are busy, and only where it fits without evicting anything.
        self.extra = extra
        self.extra_refused_until = 0.0  # monotonic: no room for it was found; not tried before
        # Replaced or removed by a reload: it serves what it has, but never loads again (a
        # waiter that would start a load asks the scheduler's table instead).
        self._retired = False

    # -- what it is --------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0

    @property
    def holds_memory(self) -> bool:
        return self.worker.state in HOLDS_MEMORY

    def as_loaded(self) -> LoadedModel:
        """This model as placement sees it."""
        return LoadedModel(
            name=self.name,
            devices=self.devices,
            footprint=self.footprint,
            in_flight=self.in_flight + self.reserved,
            pinned=self.spec.pinned,
            last_used=self.last_used,
            starting=self.worker.state is WorkerState.STARTING,
        )

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
            expires_at=self._expiry.expires_at,
            context_length=worker.max_model_len,
            pid=worker.pid,
            url=worker.base_url if worker.has_port else None,
            ray_nodes=worker.cluster.nodes if worker.cluster is not None else (),
        )

    # -- requests ----------------------------------------------------------------------------

    def admission(self, queued: int) -> Admission:
        return admit(
            ready=self.worker.is_ready,
            draining=self.draining,
            limited=self._permits is not None,
            permit_free=self._permits is not None and not self._permits.locked(),
            queued=queued,
            max_queue=self._shared.settings.max_queue,
        )

    async def wait_ready(self, explicit: bool) -> None:
        """Wait (bounded by `load_timeout`) for a `max_parallel` permit and a READY worker,
        counted as waiting meanwhile."""
        timeout = self._shared.settings.load_timeout
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                if self._permits is not None:
                    await self._permits.acquire()
                try:
                    await self._until_ready(explicit)
                except BaseException:
                    if self._permits is not None:
                        self._permits.release()
                    raise
        except TimeoutError:
            raise LoadError(
                self.name,
                f"gave up after waiting {timeout:g}s (load_timeout) for the model to be ready",
                self.worker.tail(),
            ) from None
        finally:
            self.waiting -= 1
            self.reserved = min(self.reserved, self.waiting)  # none outlives its waiters
            if self.idle and self.worker.is_ready:
                self.arm_expiry()  # every waiter left before using the model

    async def _until_ready(self, explicit: bool) -> None:
        while True:
            if self._shared.closing():
                raise ShuttingDown("vllama is shutting down")
            if self.worker.is_ready and self.reserved:
                self.reserved -= 1  # a load finished for the waiters: go, even if draining
                return
            if self.worker.is_ready and not self.draining:
                return
            load = self.load_task or self.ensure_loading(explicit)
            try:
                # Shielded: a waiter whose client went away leaves; the load goes on for others.
                await asyncio.shield(load)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if load.cancelled() and current is not None and not current.cancelling():
                    continue  # the load was abandoned (shutdown), not this request: look again
                raise

    def begin(self, keep_alive: float | None) -> None:
        """A request starts on the READY worker (no await since its admission)."""
        self.in_flight += 1
        if keep_alive is not None:  # holds for this loaded worker, as in Ollama
            self.keep_alive = keep_alive
        self._expiry.disarm()

    def end(self) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()
        if self._permits is not None:
            self._permits.release()
        if self.idle:
            if self._unload_when_idle:
                self._unload_when_idle = False
                self.unload("unload requested", "requested")
            else:
                self.arm_expiry()
        self._shared.changes.notify()

    # -- loading -----------------------------------------------------------------------------

    def ensure_loading(self, explicit: bool, may_evict: bool = True) -> asyncio.Task[None]:
        """The load in progress, or a new one (`may_evict` False: only where it fits as
        things are)."""
        if self.load_task is None:
            self.load_task = asyncio.create_task(
                self._load(explicit, may_evict), name=f"load-{self.name}"
            )
            self.load_task.add_done_callback(_retrieve_exception)
        return self.load_task

    async def _load(self, explicit: bool, may_evict: bool) -> None:
        """Make the worker READY; `LoadError` (or a typed refusal) says why it could not be."""
        try:
            if self._retired:
                raise Replaced(self.name)
            for pending in (self.sleep_task, self.stop_task):  # a sleep or unload finishes first
                if pending is not None:
                    await pending
            if self.worker.state is WorkerState.SLEEPING:
                await self._wake()
            else:
                await self._start(explicit, may_evict)
        finally:
            self.load_task = None

    async def _start(self, explicit: bool, may_evict: bool) -> None:
        worker = self.worker
        restart_after = worker.failure if worker.state is WorkerState.FAILED else None
        try:
            await self._crash_loop_guard(explicit)
            started = time.monotonic()
            await self._placement.start(self, may_evict)
        except (PlacementRefused, CrashLoop) as refused:
            # Nothing was started: not a failed load, and not worth a line per request.
            log.debug("model load refused", model=self.name, reason=refused.reason)
            raise
        except LoadError as error:
            log.error("model load failed", model=self.name, reason=error.reason)
            self._shared.events.emit(LoadFailed(self.name, error.code))
            if error.retry_after is None:  # its waiters' Retry-After: when a start is tried again
                error.retry_after = self._next_start_in()
            raise
        seconds = time.monotonic() - started
        log.info("model loaded", model=self.name, seconds=round(seconds, 2))
        if self.idle:  # a preload: nobody will release it
            self.arm_expiry()
        self._shared.events.emit(ModelLoaded(self.name, seconds, restart_after))

    async def _wake(self) -> None:
        # A wake that fails is logged by the worker and counted as its restart; it was never
        # counted as a failed load.
        try:
            await self._placement.wake(self)
        except LoadError as error:
            log.debug("model wake refused or failed", model=self.name, reason=error.reason)
            raise

    async def _crash_loop_guard(self, explicit: bool) -> None:
        """FATAL after repeated fast failures (until an explicit load); else back off."""
        worker = self.worker
        if explicit:
            self.fast_failures = 0
            return
        restarts = self._shared.restarts
        if worker.state is WorkerState.FATAL or (
            worker.state is WorkerState.FAILED and is_crash_loop(self.fast_failures, restarts)
        ):
            reason = (
                f"marked failed after {self.fast_failures} failures in a row; an explicit load "
                "(e.g. an empty /api/generate request) or a config reload retries it"
            )
            if worker.state is WorkerState.FAILED:
                worker.enter_fatal(reason)
            last = worker.last_error
            raise CrashLoop(
                self.name, reason, last.tail if last else worker.tail(), self.retry_after()
            )
        delay = restart_delay(self.fast_failures, restarts)
        if delay and worker.state is WorkerState.FAILED:
            worker.enter_backoff(f"restart in {delay:g}s after {self.fast_failures} failure(s)")
            await asyncio.sleep(delay)

    def _next_start_in(self) -> float:
        """Seconds until a start after this failure may succeed: the restart back-off, or, once
        the failures make a crash loop, vllama's own retry of the FATAL model."""
        restarts = self._shared.restarts
        if is_crash_loop(self.fast_failures, restarts):
            return fatal_retry_delay(self._fatal_retries, restarts)
        return max(restart_delay(self.fast_failures, restarts), 1.0)

    def _configured_keep_alive(self, spec: ModelSpec) -> float:
        """The model's own keep-alive, else the server's."""
        return spec.keep_alive if spec.keep_alive is not None else self._shared.settings.keep_alive

    def retune(self, spec: ModelSpec) -> None:
        """A reload changed only vllama's own settings (`reload._VLLAMA_ONLY`): take them while
        the worker serves. A keep-alive a request set holds for this worker, as in Ollama; else
        the new default applies now, counted from the model's last use."""
        default = self._configured_keep_alive(spec)
        follows_default = self.keep_alive == self.default_keep_alive
        self.spec = spec
        self.default_keep_alive = default
        if follows_default and self.keep_alive != default:
            self.keep_alive = default
            if self._expiry.expires_at is not None:  # idle and counting down: count anew
                elapsed = time.monotonic() - self.last_used
                self._expiry.arm(max(default - elapsed, 0.0), self._expire)

    def clear_failures(self) -> None:
        """A config reload clears a crash loop."""
        self.fast_failures = 0

    # -- what the coordinator records --------------------------------------------------------

    def placed(self, devices: tuple[str, ...], need: int) -> None:
        """Its memory is spoken for from here: placement counts a starting model. A new
        worker starts from the model's default keep-alive."""
        self.devices, self.footprint = devices, need
        self.keep_alive = self.default_keep_alive

    def unplaced(self) -> None:
        self.devices, self.footprint = (), 0

    def ready(self, footprint: int) -> None:
        """Started or woken, holding `footprint`; the waiters it was loaded for go first
        (recorded before the coordinator lets the next load in)."""
        self.footprint = footprint
        self.reserved = self.waiting

    def refuse_extra(self, until: float) -> None:
        self.extra_refused_until = until

    def hold(self) -> bool:
        """Another load waits for this busy model: new requests queue. False if already held."""
        if self.draining:
            return False
        self.draining = True
        return True

    def release(self) -> None:
        self.draining = False

    # -- the worker's state, and the crash counters with it ----------------------------------

    def _on_state(self, worker: WorkerLike, old: WorkerState, new: WorkerState, why: str) -> None:
        """Every state change of this runner's worker: the counters move with it."""
        if worker is not self.worker:
            return
        if new is WorkerState.FAILED:
            # From the engine's own exit: the worker may notice it seconds later.
            ended = worker.ended_at or time.monotonic()
            up_for = ended - worker.ready_at if worker.ready_at else None
            self.fast_failures = count_failure(self.fast_failures, up_for, self._shared.restarts)
            if up_for is not None and up_for >= self._shared.restarts.window:
                self._fatal_retries = 0  # it ran a while: a crash loop starts over
        if new is WorkerState.FATAL:
            self._schedule_retry()
        elif new is WorkerState.STARTING:
            self._cancel_retry()
        self._shared.events.emit(StateChanged(worker.name, old, new, why))
        if new in (WorkerState.STOPPED, WorkerState.FAILED):
            self._shared.changes.notify()

    def _schedule_retry(self) -> None:
        """A FATAL model is tried again on its own, later each time (as CrashLoopBackOff)."""
        self._cancel_retry()
        if self._shared.closing():
            return
        delay = fatal_retry_delay(self._fatal_retries, self._shared.restarts)
        self._fatal_retries += 1
        self._retry_at = time.monotonic() + delay
        self._retry_timer = asyncio.get_running_loop().call_later(
            delay, self.ensure_loading, True, True
        )
        log.warning("model failed repeatedly; retrying later", model=self.name, seconds=delay)

    def _cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_timer = self._retry_at = None

    def retry_after(self) -> float | None:
        """Seconds until vllama's own next try of this model, when one is planned."""
        if self._retry_at is None:
            return None
        return max(self._retry_at - time.monotonic(), 1.0)

    # -- keep-alive --------------------------------------------------------------------------

    def arm_expiry(self) -> None:
        if self._shared.closing():
            return
        self._expiry.arm(self.keep_alive, self._expire)

    def _expire(self) -> None:
        action = on_expiry(
            in_flight=self.in_flight,
            waiting=self.waiting,
            state=self.worker.state,
            sleep_when_idle=self.spec.sleep_when_idle,
            sleeping=self.sleep_task is not None,
        )
        if action == "sleep":
            # Admission closes first: a request reaching the engine while /sleep runs is
            # aborted or hangs in the paused engine. Requests that come now queue, and wake it.
            self.draining = True
            self.sleep_task = asyncio.create_task(self._sleep(), name=f"sleep-{self.name}")
        elif action == "unload":
            self.unload("keep_alive expired", "keep_alive")

    async def _sleep(self) -> None:
        slept = False
        try:
            slept = await self._placement.sleep(self)
        finally:
            self.sleep_task = None
            self.draining = False
            if slept:  # asleep for the model's own keep_alive, then stopped
                self.keep_alive = self.default_keep_alive
                self.arm_expiry()
            self._shared.changes.notify()

    def asleep(self, residue: int) -> None:
        """Level-1 sleep freed the share; `residue` stays on the GPU."""
        self.footprint = min(self.footprint, residue)

    # -- unloading ---------------------------------------------------------------------------

    def unload(self, reason: str, why: str, in_load: bool = False) -> asyncio.Task[None] | None:
        """Begin stopping the worker; returns the stop task (None if nothing runs).

        `why` is the bounded reason for metrics: memory, keep_alive, requested, deleted.
        `in_load`: an eviction decided by a load, which already holds the coordinator's lock.
        """
        if self.stop_task is not None:
            return self.stop_task
        if self.worker.state not in RUNNING and self.sleep_task is None:
            return None
        self._expiry.disarm()
        self.draining = True  # no new request may start on a worker that is being stopped
        self._shared.events.emit(ModelUnloaded(self.name, why))
        self.stop_task = asyncio.create_task(self._stop(reason, in_load), name=f"stop-{self.name}")
        return self.stop_task

    def unload_when_idle(self) -> None:
        """Unload now, or as soon as the requests in flight are done (Ollama's `keep_alive: 0`
        with an empty prompt, `ollama stop`)."""
        if self.idle:
            self.unload("unload requested", "requested")
        else:
            self._unload_when_idle = True

    async def _stop(self, reason: str, in_load: bool) -> None:
        try:
            if self.sleep_task is not None:
                await self.sleep_task
            await self._placement.stop(self, reason, in_load)
        finally:
            self.stop_task = None
            self.devices = ()
            self.footprint = 0
            self.draining = False
            self._shared.changes.notify()

    async def retire(self, reason: str) -> None:
        """Stop the worker for good (a reload or a removal), once it is idle."""
        self._retired = True
        while not self.idle or self.load_task is not None:
            load = self.load_task
            if load is not None:
                try:
                    await asyncio.shield(load)
                except LoadError:
                    pass  # the load's own waiters saw it; the worker stops either way
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if load.cancelled() and current is not None and not current.cancelling():
                        return  # the load was abandoned: shutdown stops every worker
                    raise
            else:
                await self._shared.changes.wait(1.0)
        # No request starts on it from here: its stop may wait for the coordinator's lock, and
        # a request let in meanwhile would lose its worker mid-answer. Requests queue instead,
        # and go to its successor (`Replaced`).
        self.draining = True
        self.close()
        if self.stop_task is not None:
            await self.stop_task
        await self._placement.stop(self, reason, in_load=False)
        self.unplaced()

    def close(self) -> None:
        """No timer of this runner fires any more (shutdown, or the runner was replaced)."""
        self._expiry.disarm()
        self._cancel_retry()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A load whose every waiter left still fails loudly in the log, not as "never retrieved".
    if not task.cancelled():
        task.exception()
