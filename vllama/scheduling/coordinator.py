"""Placement: the one place where device memory changes hands.

The `Coordinator` alone holds the load lock, the memory plan and the warm spares. Every change of
what holds device memory (a start, a wake, a sleep, a stop) takes the lock, so none happens while
vLLM profiles memory during a start (vLLM #56830): memory freed under it makes vLLM size its KV
cache wrong or assert. Evictions a start decides run inside that start's hold.

It acts on the world through narrow effects only: the runner's worker (start, stop, sleep, wake)
and the memory planner's measurements (snapshot, measure, wait for memory); what to do is
`placement.decide` over a frozen snapshot. Making room is that decision and then the evictions it
names, with no `await` between them: the victims are idle as decided, and unloading closes their
admission before any request can start on them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

import structlog

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine.page_cache import Warmed
from vllama.engine.spares import SparePool
from vllama.engine.vllm_report import refusal
from vllama.engine.worker import MemoryRefused
from vllama.scheduling.errors import PlacementRefused
from vllama.scheduling.events import Events, ModelWoken
from vllama.scheduling.memory import MemoryPlanner, Share
from vllama.scheduling.placement import LoadedModel, Place, Refuse, decide, format_bytes
from vllama.scheduling.runner import Changes, ModelRunner

# An extra replica that found no room is not looked at again for this long (its check measures
# the devices, and busy models make requests all the time).
EXTRA_REPLICA_RETRY = 10.0

log = structlog.get_logger("vllama.scheduler")

# What the catalog knows about a model's files (weights, the parsers chosen for it); reading them
# is its effect to schedule (the registry reads files in a thread).
FactsSource = Callable[[ModelSpec], Awaitable[ModelFacts]]
# Reads weight files into the page cache until done or the event is set
# (`engine.page_cache.read_ahead`).
ReadAhead = Callable[[Sequence[str], threading.Event], Awaitable[Warmed]]


class Coordinator:
    def __init__(
        self,
        settings: ServerSettings,
        memory: MemoryPlanner,
        facts: FactsSource,
        events: Events,
        changes: Changes,
        runners: Callable[[], Iterable[ModelRunner]],
        spares: SparePool | None = None,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        self._settings = settings
        self._memory = memory
        self._facts = facts
        self._events = events
        self._changes = changes
        self._runners = runners  # every runner whose worker may hold memory
        self._spares = spares
        self._lock = asyncio.Lock()
        self._named: dict[str, ModelRunner] = {}  # the last snapshot's names for its models
        self._read_ahead = read_ahead
        self._reading: set[asyncio.Task[None]] = set()

    # -- the effects, one at a time ----------------------------------------------------------

    async def start(self, runner: ModelRunner, may_evict: bool = True) -> None:
        """Place the runner's model (evicting idle models, waiting for busy ones; with
        `may_evict` False, only where it fits as things are), start its worker and measure what
        it took. `PlacementRefused` when it has no room; the worker's `LoadError` when its start
        fails."""
        # Read before the lock, so that a load queued behind another reads its weights ahead
        # while it waits (and while the models it evicts still serve).
        facts = await self._facts(runner.spec)
        done_reading = self._read_weights_ahead(runner.name, facts)
        try:
            await self._start_locked(runner, facts, may_evict)
        finally:
            done_reading.set()  # vLLM has read them by now, or will not

    async def _start_locked(self, runner: ModelRunner, facts: ModelFacts, may_evict: bool) -> None:
        worker = runner.worker
        async with self._lock:
            if worker.is_ready:  # it was draining for another load, which has finished
                return
            try:
                share = await self._start_placed(runner, facts, may_evict)
            except MemoryRefused as refused:
                # vLLM said what its share lacked: one start again with that much more, where
                # there is room (else a refusal naming the numbers), never the same share again.
                said = refusal(refused.tail)
                if said is None:
                    raise
                self._memory.grow(runner.name, said.missing)
                log.warning(
                    "vLLM refused its memory share; placing it again",
                    model=runner.name,
                    missing=said.missing,
                    vllm=said.line,
                )
                try:
                    share = await self._start_placed(runner, facts, may_evict)
                except PlacementRefused as no_room:
                    raise PlacementRefused(
                        runner.name,
                        f"vLLM refused the share it was given ({said.line}); a share "
                        f"{format_bytes(said.missing)} larger does not fit: {no_room.reason}",
                        refused.tail,
                    ) from None
            self._memory.learn(runner.name, runner.spec, share, worker.memory_report)
            measured = 0
            if runner.spec.ray is None:  # a Ray model keeps the whole host's GPUs it was given
                measured = await self._memory.measure(
                    runner.name, worker.pid, share.devices, share.free_before
                )
            runner.ready(measured or share.need)  # before the lock goes to the next load

    def _read_weights_ahead(self, name: str, facts: ModelFacts) -> threading.Event:
        """Start reading the model's weight files into the page cache in a thread (a cold
        read is the part of a start that the imports and the wait for room can hide); the
        event stops it."""
        stop = threading.Event()
        if self._read_ahead is None or not facts.weight_files:
            return stop
        read_ahead = self._read_ahead

        async def read() -> None:
            try:
                warmed = await read_ahead(facts.weight_files, stop)
            except Exception as exc:  # the start goes on: vLLM reads the files itself
                log.warning("weights not read ahead", model=name, error=repr(exc))
                return
            log.info(
                "weights read ahead" if warmed.read else "weights not read ahead",
                model=name,
                bytes=warmed.read,
                seconds=round(warmed.seconds, 2),
                **({"why": warmed.skipped} if warmed.skipped else {}),
            )

        task = asyncio.create_task(read())
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)
        return stop

    async def _start_placed(self, runner: ModelRunner, facts: ModelFacts, may_evict: bool) -> Share:
        """Make room, start the worker there; the share it started in."""
        share = await self._make_room(runner, facts, may_evict=may_evict)
        args, env = (*facts.engine_args, *share.args), share.env
        if runner.spec.sleep_when_idle:
            args = (*args, *vllm_args.SLEEP_MODE_ARGS)
            env = {**env, **vllm_args.SLEEP_MODE_ENV}
        runner.placed(share.devices, share.need)
        share = replace(share, free_before=await self._memory.free_now(share.devices))
        try:
            await runner.worker.start(args, env)
        except BaseException:
            runner.unplaced()
            raise
        return share

    async def wake(self, runner: ModelRunner) -> None:
        """A sleeping worker takes its GPU memory back where its process lives: make room there
        first, as for a start."""
        async with self._lock:
            facts = await self._facts(runner.spec)
            share = await self._make_room(runner, facts, on=runner.devices)
            warm_up = (facts.warm_up[0], dict(facts.warm_up[1])) if facts.warm_up else None
            started = time.monotonic()
            await runner.worker.wake(warm_up)
            runner.ready(share.need)
        self._events.emit(ModelWoken(runner.name, time.monotonic() - started))

    async def sleep(self, runner: ModelRunner) -> bool:
        """Level-1 sleep, or a stop when the engine refuses it; True when it sleeps."""
        async with self._lock:
            facts = await self._facts(runner.spec)
            if await runner.worker.sleep():
                # The share is freed; the CUDA context, NCCL and the graph pool stay.
                runner.asleep(self._memory.residue(runner.name, runner.spec, facts))
                return True
            log.warning("sleep refused; stopping instead", model=runner.name)
            await runner.worker.stop("keep_alive expired (sleep failed)")
            return False

    async def stop(self, runner: ModelRunner, reason: str, in_load: bool) -> None:
        """`in_load`: an eviction decided by a start, which already holds the lock."""
        if in_load:
            await runner.worker.stop(reason)
            return
        async with self._lock:
            await runner.worker.stop(reason)

    # -- making room -------------------------------------------------------------------------

    def _loaded(self, placing: ModelRunner) -> tuple[LoadedModel, ...]:
        """The models holding memory now, as placement sees them (all but `placing`), each
        under a name that `_holding` finds it by until the next snapshot. A worker being
        replaced by a reload is named apart from its successor: placement takes an entry with
        the request's own name for the model itself."""
        self._named = {}
        for runner in self._runners():
            if runner is placing or not runner.holds_memory:
                continue
            name = runner.name
            if name == placing.name or name in self._named:
                name = f"{runner.name} (being replaced)"
            self._named[name] = runner
        return tuple(replace(r.as_loaded(), name=name) for name, r in self._named.items())

    def _holding(self, name: str) -> ModelRunner | None:
        """The runner a name in the last snapshot stands for."""
        return self._named.get(name)

    async def _make_room(
        self,
        runner: ModelRunner,
        facts: ModelFacts,
        on: tuple[str, ...] | None = None,
        may_evict: bool = True,
    ) -> Share:
        """Decide where the model goes (on the devices `on`, if given), evicting idle models
        or waiting for busy ones (neither for an extra replica, or when not `may_evict`)."""
        deadline = time.monotonic() + self._settings.drain_wait
        held: list[ModelRunner] = []
        try:
            while True:
                spares = self._spares
                spare_bytes = spares.held_bytes_beside(runner.spec) if spares is not None else 0
                snapshot = await self._memory.snapshot(
                    lambda: self._loaded(runner), spare_bytes=spare_bytes
                )
                # Sized after the snapshot: a share is a fraction of the GPUs' totals it measured.
                request = replace(self._memory.request(runner.name, runner.spec, facts), on=on)
                decision = decide(snapshot, request)  # no await from here to the unloads
                roomy = isinstance(decision, Place) and not decision.evict
                if spares is not None and spare_bytes and request.kind == "cpu" and not roomy:
                    # Spares go before any model does (all but the one this load will take).
                    if await spares.drop_idle(keep_for=runner.spec):
                        continue
                if isinstance(decision, Refuse):
                    reason = decision.reason
                    if runner.spec.ray is not None and request.kind == "gpu":
                        reason += (
                            "; a Ray model has this host's GPUs to itself (Ray places its "
                            "workers on any of them, beside other models it cannot see)"
                        )
                    raise PlacementRefused(runner.name, reason, [])
                if runner.extra and (not isinstance(decision, Place) or decision.evict):
                    runner.refuse_extra(time.monotonic() + EXTRA_REPLICA_RETRY)
                    raise PlacementRefused(
                        runner.name, "no room for an extra replica without evicting", []
                    )
                if not may_evict and (not isinstance(decision, Place) or decision.evict):
                    raise PlacementRefused(runner.name, "no room without evicting", [])
                if isinstance(decision, Place):
                    return await self._evict_and_share(runner, facts, decision, request.need)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PlacementRefused(
                        runner.name,
                        f"does not fit while {', '.join(decision.blocking)} are busy; waited "
                        f"{self._settings.drain_wait:g}s (drain_wait) for them to finish",
                        [],
                    )
                log.info(
                    "load waits for busy models", model=runner.name, blocking=decision.blocking
                )
                for name in decision.blocking:
                    other = self._holding(name)
                    if other is not None and other.hold():
                        held.append(other)
                await self._changes.wait(min(remaining, 1.0))
        finally:
            for other in held:
                other.release()
            if held:
                self._changes.notify()  # their queued requests may go on (or load them again)

    async def _evict_and_share(
        self, runner: ModelRunner, facts: ModelFacts, decision: Place, need: int
    ) -> Share:
        reason = f"evicted to make room for {runner.name}"
        victims = [self._holding(name) for name in decision.evict]
        stopping = [v.unload(reason, "memory", in_load=True) for v in victims if v is not None]
        for task in stopping:
            if task is not None:
                await task
        if decision.evict:
            await self._memory.wait_for_memory(decision.devices, need)
        return self._memory.share(runner.spec, facts, decision.devices, need, runner.name)
