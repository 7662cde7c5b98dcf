"""Loading one model: wake it, or back off after failures, make room, start it, measure it.

Loads run one at a time (`Fleet.changes`, which stops and sleeps take too): two vLLM servers
starting together on one GPU mis-measure each
other's memory, and each placement decision must see the memory the previous load really took.
Making room is `placement.decide` over a snapshot, then the evictions it names, with no `await`
between the decision and the unloads: the victims are idle as decided, and unloading closes their
admission before any request can start on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine.spares import SparePool
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError
from vllama.scheduling.events import Events, LoadFailed, ModelLoaded, ModelWoken
from vllama.scheduling.fleet import Fleet, ModelSlot
from vllama.scheduling.memory import MemoryPlanner, Share
from vllama.scheduling.placement import Place, Refuse, decide
from vllama.scheduling.restarts import RestartPolicy, is_crash_loop, restart_delay, restart_kind

# An extra replica that found no room is not looked at again for this long (its check measures
# the devices, and busy models make requests all the time).
EXTRA_REPLICA_RETRY = 10.0

log = structlog.get_logger("vllama.scheduler")

# What the catalog knows about a model's files (weights, the parsers chosen for it); reading them
# is its effect to schedule (the registry reads files in a thread).
FactsSource = Callable[[ModelSpec], Awaitable[ModelFacts]]


class Loader:
    def __init__(
        self,
        fleet: Fleet,
        settings: ServerSettings,
        memory: MemoryPlanner,
        restarts: RestartPolicy,
        events: Events,
        facts: FactsSource,
        spares: SparePool | None = None,
    ) -> None:
        self._fleet = fleet
        self._settings = settings
        self._memory = memory
        self._restarts = restarts
        self._events = events
        self._facts = facts
        self._spares = spares

    async def load(self, slot: ModelSlot, explicit: bool) -> None:
        """Make `slot`'s worker READY; `LoadError` says why it could not be."""
        worker = slot.worker
        attempted = False
        try:
            for pending in (slot.sleep_task, slot.stop_task):  # a sleep or unload finishes first
                if pending is not None:
                    await pending
            if worker.state is WorkerState.SLEEPING:
                await self._wake(slot)
                return
            restart_after = worker.reason if worker.state is WorkerState.FAILED else None
            await self._crash_loop_guard(slot, explicit)
            async with self._fleet.changes:
                if worker.is_ready:  # it was draining for another load, which has finished
                    return
                facts = await self._facts(slot.spec)
                share = await self._make_room(slot, facts)
                slot.keep_alive = slot.default_keep_alive  # a new worker starts from the default
                started = time.monotonic()
                args, env = (*facts.engine_args, *share.args), share.env
                if slot.spec.sleep_when_idle:
                    args = (*args, *vllm_args.SLEEP_MODE_ARGS)
                    env = {**env, **vllm_args.SLEEP_MODE_ENV}
                # Its memory is spoken for from here: placement counts a starting model.
                slot.devices, slot.footprint = share.devices, share.need
                attempted = True
                free_before = await self._memory.free_now(share.devices)
                try:
                    await worker.start(args, env)
                except BaseException:
                    slot.devices, slot.footprint = (), 0
                    raise
                measured = await self._memory.measure(
                    slot.name, worker.pid, share.devices, free_before
                )
                slot.footprint = measured or share.need
                slot.reserved = slot.waiting  # before the lock goes to the next load
            seconds = time.monotonic() - started
            log.info("model loaded", model=slot.name, seconds=round(seconds, 2))
            if slot.idle:  # a preload: nobody will release it
                self._fleet.arm_expiry(slot)
            after = restart_kind(restart_after) if restart_after is not None else None
            self._events.emit(ModelLoaded(slot.name, seconds, after))
        except LoadError as error:
            if attempted:  # a refusal is not a failed load, and not worth a line per request
                log.error("model load failed", model=slot.name, reason=error.reason)
                self._events.emit(LoadFailed(slot.name))
            else:
                log.debug("model load refused", model=slot.name, reason=error.reason)
            raise

    async def _wake(self, slot: ModelSlot) -> None:
        """A sleeping worker takes its GPU memory back where its process lives: make room there
        first, as for a load."""
        async with self._fleet.changes:
            facts = await self._facts(slot.spec)
            share = await self._make_room(slot, facts, on=slot.devices)
            warm_up = (facts.warm_up[0], dict(facts.warm_up[1])) if facts.warm_up else None
            started = time.monotonic()
            await slot.worker.wake(warm_up)
            slot.footprint = share.need
            slot.reserved = slot.waiting
        self._events.emit(ModelWoken(slot.name, time.monotonic() - started))

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
            raise LoadError(
                slot.name,
                reason,
                last.tail if last else worker.tail(),
                retry_after=self._fleet.retry_after(slot),
            )
        delay = restart_delay(slot.fast_failures, self._restarts)
        if delay and worker.state is WorkerState.FAILED:
            worker.enter_backoff(f"restart in {delay:g}s after {slot.fast_failures} failure(s)")
            await asyncio.sleep(delay)

    async def _make_room(
        self, slot: ModelSlot, facts: ModelFacts, on: tuple[str, ...] | None = None
    ) -> Share:
        """Decide where the model goes (on the devices `on`, if given), evicting idle models
        or waiting for busy ones."""
        request = replace(self._memory.request(slot.name, slot.spec, facts), on=on)
        deadline = time.monotonic() + self._settings.drain_wait
        held: list[ModelSlot] = []
        try:
            while True:
                spares = self._spares
                spare_bytes = spares.held_bytes_beside(slot.spec) if spares is not None else 0
                snapshot = await self._memory.snapshot(
                    lambda: self._fleet.loaded_models(slot), spare_bytes=spare_bytes
                )
                decision = decide(snapshot, request)  # no await from here to the unloads
                roomy = isinstance(decision, Place) and not decision.evict
                if spares is not None and spare_bytes and request.kind == "cpu" and not roomy:
                    # Spares go before any model does (all but the one this load will take).
                    if await spares.drop_idle(keep_for=slot.spec):
                        continue
                if isinstance(decision, Refuse):
                    raise LoadError(slot.name, decision.reason, [])
                if slot.extra and (not isinstance(decision, Place) or decision.evict):
                    slot.extra_refused_until = time.monotonic() + EXTRA_REPLICA_RETRY
                    raise LoadError(slot.name, "no room for an extra replica without evicting", [])
                if isinstance(decision, Place):
                    reason = f"evicted to make room for {slot.name}"
                    stopping = [
                        self._fleet.unload(v, reason, "memory", in_load=True)
                        for v in decision.evict
                    ]
                    for task in stopping:
                        if task is not None:
                            await task
                    if decision.evict:
                        await self._memory.wait_for_memory(decision.devices, request.need)
                    return self._memory.share(slot.spec, facts, decision.devices, request.need)
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
                    other = self._fleet.slots.get(name)
                    if other is not None and not other.draining:
                        other.draining = True
                        held.append(other)
                await self._fleet.changed(min(remaining, 1.0))
        finally:
            for other in held:
                other.draining = False
            if held:
                self._fleet.notify()  # their queued requests may go on (or load them again)
