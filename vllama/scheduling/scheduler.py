"""Which workers run: the runners' table, leases and the wait queue, replicas, reloads, shutdown.

The lease is the one place where requests meet the supervisor: `async with scheduler.lease(name)`
yields a READY worker and counts the request in flight until the block ends. Everything that reads
state to decide a mutation ("is it loaded?" -> "load it") happens without an `await` in between, so
on one event loop it is a single step. Each model's state is its `runner.ModelRunner`'s; device
memory changes hands only through the `coordinator.Coordinator`; what runs is reported through
`status()` and `events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import aiohttp
import structlog

from vllama.config import replicas
from vllama.config.settings import Config, ModelSpec, ServerSettings
from vllama.engine import page_cache
from vllama.engine.leftovers import Leftovers
from vllama.engine.ports import PortAllocator
from vllama.engine.spares import SparePool
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError, Worker
from vllama.scheduling.coordinator import Coordinator, FactsSource
from vllama.scheduling.devices import Devices
from vllama.scheduling.errors import PlacementRefused, QueueFull, Replaced, ShuttingDown
from vllama.scheduling.events import Events, LoadFailed, ModelLoaded
from vllama.scheduling.footprints import Footprints
from vllama.scheduling.memory import MemoryPlanner
from vllama.scheduling.reload import plan_reload
from vllama.scheduling.replicas import BUSY_AT, ReplicaView, route
from vllama.scheduling.restarts import RestartPolicy
from vllama.scheduling.runner import (
    Changes,
    ModelRunner,
    Shared,
    StateListener,
    WorkerFactory,
    WorkerLike,
)
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
        learned: Footprints | None = None,
    ) -> None:
        self._config = config
        self.spares = spares
        settings = self._settings = config.server
        self.events = Events()
        self.devices = devices
        self.memory = MemoryPlanner(settings, self.devices, learned)
        self._new_worker = new_worker
        self._closing = False
        self._changes = Changes()
        self._shared = Shared(
            settings=settings,
            restarts=RestartPolicy(
                backoff=settings.restart_backoff,
                backoff_max=settings.restart_backoff_max,
                limit=settings.crash_loop_failures,
                window=settings.crash_loop_window,
                fatal_backoff=settings.fatal_retry_backoff,
                fatal_backoff_max=settings.fatal_retry_backoff_max,
            ),
            events=self.events,
            changes=self._changes,
            closing=lambda: self._closing,
        )
        self._runners: dict[str, ModelRunner] = {}
        # Runners outside the table whose workers may hold memory: the one a reload starts
        # beside the running one, and those a reload replaced, until they have stopped.
        self._outside: set[ModelRunner] = set()
        self._coordinator = Coordinator(
            settings,
            self.memory,
            facts,
            self.events,
            self._changes,
            self._holders,
            spares,
            read_ahead=page_cache.read_ahead if settings.read_ahead_weights else None,
        )
        if spares is not None:  # a spare taken by a load is replaced once that load is over
            self.events.subscribe(
                lambda event: (
                    spares.refill() if isinstance(event, ModelLoaded | LoadFailed) else None
                )
            )
        self._queued = 0  # requests waiting for a model, all models together
        self._replacing: dict[str, asyncio.Task[Any]] = {}  # the latest replacement per model
        self._tasks: set[asyncio.Task[object]] = set()  # config-reload work in the background
        for name, spec in config.models.items():
            self.add_model(name, spec)

    def _holders(self) -> Iterator[ModelRunner]:
        """Every runner whose worker may hold device memory."""
        yield from self._runners.values()
        yield from self._outside

    def add_model(self, name: str, spec: ModelSpec) -> None:
        """Make a model schedulable (configured at start, or discovered on disk later), with
        its replicas' runners (`name#2`, ...)."""
        if name in self._runners:
            return
        for runner in self._new_runners(name, spec):
            self._runners[runner.name] = runner

    def _new_runners(self, name: str, spec: ModelSpec) -> list[ModelRunner]:
        names = replicas.slot_names(name, spec.replicas, spec.max_replicas)
        return [
            ModelRunner(
                slot_name,
                spec,
                self._new_worker,
                self._coordinator,
                self._shared,
                extra=index > spec.replicas,
            )
            for index, slot_name in enumerate(names, start=1)
        ]

    def _replicas_of(self, runner: ModelRunner) -> list[ModelRunner]:
        """Every runner of `runner`'s model, the model's own first."""
        names = replicas.slot_names(runner.name, runner.spec.replicas, runner.spec.max_replicas)
        return [self._runners[n] for n in names if n in self._runners]

    def preload(self) -> None:
        """Start loading every `preload = true` model in the background (failures are logged)."""
        for runner in self._runners.values():
            if runner.spec.preload:
                runner.ensure_loading(explicit=True)

    # -- what runs ---------------------------------------------------------------------------

    def status(self) -> SchedulerStatus:
        models = tuple(runner.status() for runner in self._runners.values())
        spares = self.spares
        return SchedulerStatus(
            models=models,
            queued=self._queued,
            spares=spares.idle_count if spares is not None else 0,
            spare_bytes=spares.held_bytes if spares is not None else 0,
        )

    def model_status(self, name: str) -> ModelStatus | None:
        runner = self._runners.get(name)
        return runner.status() if runner is not None else None

    def context_length(self, name: str) -> int | None:
        """The context its worker served when it was last ready (None before that): a read of
        one attribute, for the request path."""
        runner = self._runners.get(name)
        return runner.worker.max_model_len if runner is not None else None

    def log_tail(self, name: str, lines: int) -> list[str]:
        runner = self._runners.get(name)
        return runner.worker.tail(lines) if runner is not None else []

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
        runner = await self._admitted(name, explicit)
        runner.begin(keep_alive)  # no await between the readiness check in _admit and this
        try:
            yield runner.worker
        finally:
            runner.end()

    async def _admitted(self, name: str, explicit: bool) -> ModelRunner:
        """The runner for `name`, once it lets the request in. A runner a reload retired while
        the request waited sends it back to the table, for the model's new runner."""
        while True:
            runner = self._pick(name, explicit)
            try:
                await self._admit(runner, explicit)
                return runner
            except Replaced:
                if self._runners.get(name) is runner:  # still being stopped: its successor
                    await self._changes.wait(1.0)  # comes once it is gone

    def _pick(self, name: str, explicit: bool) -> ModelRunner:
        """The runner a request for `name` goes to (a replica, for a model that has them),
        after starting the replicas `replicas.route` asks for."""
        runner = self._runners.get(name)
        if runner is None:  # the request found it before a reload removed it
            raise LoadError(name, "removed from the configuration by a reload", [])
        if runner.spec.replicas == 1 and runner.spec.max_replicas is None:
            return runner
        group = self._replicas_of(runner)
        now = time.monotonic()
        views = [
            ReplicaView(
                ready=r.worker.is_ready and not r.draining,
                starting=r.load_task is not None,
                failed=r.worker.state is WorkerState.FATAL or r.extra_refused_until > now,
                busy=r.in_flight + r.waiting,
                extra=r.extra,
            )
            for r in group
        ]
        chosen, start = route(views, runner.spec.max_parallel or BUSY_AT)
        for index in start:
            if not self._closing:
                group[index].ensure_loading(explicit)
        return group[chosen]

    async def _admit(self, runner: ModelRunner, explicit: bool) -> None:
        """Go at once, or wait in the bounded queue for a permit and a READY worker."""
        if self._closing:
            raise ShuttingDown("vllama is shutting down")
        admission = runner.admission(self._queued)
        if admission == "go":
            return  # the hot path: nothing to wait for, nothing to count
        if admission == "refuse":
            raise QueueFull(
                f"server busy: {self._queued} requests are already waiting for models "
                f"(max_queue {self._settings.max_queue})"
            )
        self._queued += 1
        try:
            await runner.wait_ready(explicit)
        finally:
            self._queued -= 1

    # -- unloading ---------------------------------------------------------------------------

    def unload(self, name: str, reason: str, why: str) -> asyncio.Task[None] | None:
        """Begin stopping a model's workers (every replica); the model's own runner's stop task,
        or None when it runs nothing."""
        runner = self._runners.get(name)
        if runner is None:
            return None
        for replica in self._replicas_of(runner)[1:]:
            replica.unload(reason, why)
        return runner.unload(reason, why)

    def expire(self, name: str) -> None:
        """Unload now, or once the requests in flight are done (`keep_alive: 0`)."""
        runner = self._runners.get(name)
        for each in self._replicas_of(runner) if runner is not None else []:
            each.unload_when_idle()

    # -- config reload -----------------------------------------------------------------------

    def reconfigure(self, config: Config) -> list[asyncio.Task[object]]:
        """Apply a reloaded config's models (see `reload.plan_reload`); the changes it starts
        (a changed model's replacement, a removed one's stop) are the tasks returned. Server
        settings are not re-read: they need a restart."""
        runners = self._runners
        models = {name: r for name, r in runners.items() if name == replicas.model_of(name)}
        plan = plan_reload(
            running={name: runner.spec for name, runner in models.items()},
            configured_before=self._config.models.keys(),
            configured_now=config.models,
            fatal=[n for n, r in models.items() if r.worker.state is WorkerState.FATAL],
        )
        self._config = config
        for name in plan.added:
            self.add_model(name, config.models[name])
        changes = [
            *(
                self._background(self._replace_model(name, config.models[name]), f"reload-{name}")
                for name in plan.changed
            ),
            *(
                self._background(self._replace_model(name, None), f"remove-{name}")
                for name in plan.removed
            ),
        ]
        for name in plan.retuned:
            for runner in self._replicas_of(runners[name]):
                runner.retune(config.models[name])
            log.info("model settings changed by config reload", model=name, restart=False)
        for name in plan.cleared:
            runners[name].clear_failures()
            changes.append(
                self._background(runners[name].worker.stop("config reloaded"), f"clear-{name}")
            )
        return changes

    def _background(self, work: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)  # a reference, so the task is not garbage-collected mid-way
        task.add_done_callback(self._tasks.discard)
        return task

    async def _replace_model(self, name: str, spec: ModelSpec | None) -> None:
        """`_replace_model_now`, after any replacement of the same model still running: two
        reloads close together change a model one after the other, never both at once."""
        previous = self._replacing.get(name)
        current = asyncio.current_task()
        if current is not None:
            self._replacing[name] = current
        try:
            if previous is not None:
                await asyncio.wait([previous])  # its own failure is its own (and logged)
            if spec is None and name not in self._runners:
                return
            if name not in self._runners:  # an earlier pass removed it: this one adds it back
                assert spec is not None
                self.add_model(name, spec)
                return
            await self._replace_model_now(name, spec)
        finally:
            if current is not None and self._replacing.get(name) is current:
                del self._replacing[name]

    async def _replace_model_now(self, name: str, spec: ModelSpec | None) -> None:
        """Run a model's new spec (or none): a loaded model with one worker starts its new
        worker first, where that fits beside the old one without evicting anything, and the old
        one stops once its requests are done; otherwise (no room, replicas, or not loaded) the
        old workers finish their requests and stop first, then the new spec runs."""
        old = self._runners[name]
        group = self._replicas_of(old)
        was_loaded = old.worker.is_ready or old.load_task is not None
        if spec is not None and was_loaded and len(group) == 1 and spec.replicas == 1:
            if spec.max_replicas is None and await self._start_beside(old, spec):
                return
        for replica in group[1:]:
            await self._retire(replica)
        await self._retire(old)
        if spec is None:
            log.info("model removed by config reload", model=name)
            return
        self.add_model(name, spec)
        log.info("model changed by config reload", model=name, reload=was_loaded)
        if was_loaded:
            self._runners[name].ensure_loading(explicit=True)

    async def _start_beside(self, old: ModelRunner, spec: ModelSpec) -> bool:
        """Start the new spec's worker while the old one serves, then swap them and stop the
        old one once its requests are done. False (nothing changed) when the new one does not
        fit beside the old one without evicting anything."""
        (new,) = self._new_runners(old.name, spec)
        self._outside.add(new)  # seen by placement and by shutdown while it starts
        try:
            await new.ensure_loading(explicit=True, may_evict=False)
        except PlacementRefused as refused:
            self._outside.discard(new)
            new.close()
            log.info(
                "no room beside the running worker; it stops first",
                model=old.name,
                reason=refused.reason,
            )
            return False
        except BaseException:
            new.close()
            if not new.holds_memory:
                self._outside.discard(new)
            raise
        if self._closing:  # shutdown came meanwhile: stop_all stops it where it is
            return True
        self._outside.discard(new)
        self._runners[old.name] = new
        self._outside.add(old)
        self._changes.notify()  # requests sent back by the old runner find the new one
        log.info("model changed by config reload", model=old.name, reload=True, beside=True)
        try:
            await old.retire("config reloaded")
        finally:
            self._outside.discard(old)
        return True

    async def _retire(self, runner: ModelRunner) -> None:
        self._outside.add(runner)
        try:
            await runner.retire("config reloaded")
        finally:
            self._outside.discard(runner)
            if self._runners.get(runner.name) is runner:
                del self._runners[runner.name]
            self._changes.notify()  # requests sent back by the runner look at the table again

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new leases and abandon loads in flight (their trees are stopped)."""
        self._closing = True
        for runner in self._holders():
            runner.close()
            if runner.load_task is not None:
                runner.load_task.cancel()

    async def stop_all(self) -> None:
        self.begin_shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        runners = list(self._holders())
        loads = [r.load_task for r in runners if r.load_task is not None]
        await asyncio.gather(*loads, return_exceptions=True)
        await asyncio.gather(
            *(runner.worker.stop("vllama shutting down") for runner in runners),
            *([self.spares.close()] if self.spares is not None else []),
            return_exceptions=True,
        )

    def kill_all_now(self) -> None:
        for runner in self._holders():
            runner.worker.kill_now()
        if self.spares is not None:
            self.spares.kill_now()
