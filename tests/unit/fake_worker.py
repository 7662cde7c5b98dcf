"""A worker with no process, for testing the scheduler's decisions on their own.

It keeps the real state machine (every change goes through `check_transition` and is reported to
the scheduler's listener, as `Worker._set_state` does) and lets the test decide when a start
finishes and whether it fails. Nothing here sleeps: a test opens `gate` when it wants the start
to complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from tests.unit.fake_gpu import EngineRefused, FakeGpuHost, FakeModel
from vllama.config.settings import ModelSpec
from vllama.engine.ray_cluster import Cluster
from vllama.engine.states import DOWN, RUNNING, FailureKind, WorkerState, check_transition
from vllama.engine.vllm_report import StartReport, start_report
from vllama.engine.worker import LoadError, start_outcome
from vllama.scheduling.runner import StateListener, WorkerLike
from vllama.scheduling.scheduler import Scheduler


class FakeWorker:
    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        on_state: StateListener,
        host: FakeGpuHost | None = None,
        model: FakeModel | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self._on_state = on_state
        self.host, self.model = host, model  # with a host, starts obey vLLM's memory rules
        self._pid: int | None = None
        self.state = WorkerState.STOPPED
        self.reason = "never started"
        self.failure: FailureKind | None = None
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        self.max_model_len: int | None = None
        self.cluster: Cluster | None = None
        self.last_error: LoadError | None = None
        self.gate = asyncio.Event()  # a start completes once this is set
        self.gate.set()
        self.sleep_gate = asyncio.Event()  # and a sleep, once this is
        self.sleep_gate.set()
        self.fail_starts = 0  # the next this many starts fail
        self.starts = 0
        self.stops = 0
        self.share: tuple[tuple[str, ...], dict[str, str]] = ((), {})
        self.shares: list[tuple[str, ...]] = []  # every start's share arguments, in order
        self.sleeps = self.wakes = 0

    def _set(self, target: WorkerState, reason: str, failure: FailureKind = "load_failed") -> None:
        check_transition(self.name, self.state, target)
        old, self.state, self.reason = self.state, target, reason
        self.failure = failure if target is WorkerState.FAILED else None
        self._on_state(self, old, target, reason)

    @property
    def is_ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def has_port(self) -> bool:
        return self.state in RUNNING

    @property
    def base_url(self) -> str:
        return f"http://fake/{self.name}"

    @property
    def pid(self) -> int | None:
        return self._pid  # None without a host: nothing to measure

    @property
    def memory_report(self) -> StartReport:
        """What the fake engine printed about its memory, as vLLM does."""
        lines = self.host.reports.get(self._pid, []) if self.host and self._pid else []
        return start_report(lines)

    def tail(self, lines: int = 20) -> list[str]:
        return [f"{self.name}: start {self.starts}"][-lines:] if lines else []

    async def start(
        self, share_args: Sequence[str] = (), share_env: Mapping[str, str] | None = None
    ) -> None:
        self._set(WorkerState.STARTING, "load requested")
        self.starts += 1
        self.share = (tuple(share_args), dict(share_env or {}))
        self.shares.append(tuple(share_args))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self._set(WorkerState.STOPPING, "load cancelled")
            self._set(WorkerState.STOPPED, "load cancelled")
            raise
        if self.fail_starts:
            self.fail_starts -= 1
            self.last_error = LoadError(self.name, "exited with code 1 during start", ["boom"])
            self._set(WorkerState.FAILED, self.last_error.reason, "exited")
            raise self.last_error
        self.max_model_len = 2048
        if self.host is not None and self.model is not None:
            try:
                # The engine sees what a real worker's argv and environment hold: the model's own
                # args and env, then the scheduler's.
                self._pid, self.max_model_len = self.host.start(
                    self.model,
                    (*self.spec.args, *share_args),
                    {**self.spec.env, **(share_env or {})},
                    self.name,
                )
            except EngineRefused as refused:
                failed = LoadError(self.name, f"exited: {refused}", [f"ValueError: {refused}"])
                self.last_error = start_outcome(failed)  # as the real worker classifies it
                self._set(WorkerState.FAILED, self.last_error.reason, "exited")
                raise self.last_error from None
        self.ready_at = time.monotonic()
        self._set(WorkerState.READY, "health check passed")

    async def stop(self, reason: str) -> None:
        if self.state in RUNNING:
            self.stops += 1
            self._set(WorkerState.STOPPING, reason)
            if self.host is not None and self._pid is not None:
                self.host.stop(self._pid, self.name)
            self._pid = None
            self._set(WorkerState.STOPPED, reason)
        elif self.state in DOWN:
            self._set(WorkerState.STOPPED, reason)

    def crash(
        self, reason: str = "worker exited with code 9", ended_at: float | None = None
    ) -> None:
        """What the real worker's watcher does when its process dies while READY (`ended_at`:
        when its engine ended, if earlier than now)."""
        self.ended_at = ended_at
        self.last_error = LoadError(self.name, reason, ["killed"])
        self._set(WorkerState.FAILED, reason, "exited")

    async def sleep(self) -> bool:
        self.sleeps += 1
        await self.sleep_gate.wait()
        if self.host is not None and self._pid is not None:
            self.host.sleep(self._pid)
        self._set(WorkerState.SLEEPING, "idle for keep_alive (sleep mode)")
        return True

    async def wake(self, warm_up: tuple[str, Mapping[str, object]] | None = None) -> None:
        self.wakes += 1
        self.warm_up = warm_up
        if self.host is not None and self._pid is not None:
            try:
                self.host.wake(self._pid)
            except EngineRefused as refused:
                self.last_error = LoadError(self.name, str(refused), [])
                self._set(WorkerState.FAILED, str(refused), "wake_failed")
                raise self.last_error from None
        self._set(WorkerState.READY, "woken up")

    async def confirm_health(self) -> None:
        return None

    def enter_backoff(self, reason: str) -> None:
        self._set(WorkerState.BACKOFF, reason)

    def enter_fatal(self, reason: str) -> None:
        self._set(WorkerState.FATAL, reason)

    def kill_now(self) -> None:
        return None


class FakeWorkers:
    """The factory the scheduler calls, remembering every worker it made by model name; with a
    host, each model's engine obeys vLLM's memory rules on it (`models` by model name)."""

    def __init__(
        self, host: FakeGpuHost | None = None, models: Mapping[str, FakeModel] | None = None
    ) -> None:
        self.made: dict[str, FakeWorker] = {}  # the latest worker of each model
        self.every: list[FakeWorker] = []  # every worker made, in order
        self.host, self.models = host, dict(models or {})
        self.gate_new: asyncio.Event | None = None  # set: workers made from now on start on it

    def __call__(self, name: str, spec: ModelSpec, on_state: StateListener) -> WorkerLike:
        worker = FakeWorker(name, spec, on_state, self.host, self.models.get(name))
        if self.gate_new is not None:
            worker.gate = self.gate_new
        self.made[name] = worker
        self.every.append(worker)
        return worker


async def settle(turns: int = 50) -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def state(scheduler: Scheduler, name: str) -> WorkerState:
    status = scheduler.model_status(name)
    assert status is not None
    return status.state
