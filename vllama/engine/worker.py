"""One model's vLLM server: its state machine, start with readiness and stall detection, stop.

The worker decides nothing about *when* to load or unload (that is the scheduler's job); it only
does what it is told and reports, through its state, what happened to the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import ClassVar

import aiohttp
import structlog

from vllama.config import replicas, vllm_args
from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine import ray_cluster
from vllama.engine.argv import build_argv, build_env, guarded
from vllama.engine.guard import ENGINE_EXITED
from vllama.engine.leftovers import Leftovers
from vllama.engine.ports import NoFreePort, PortAllocator
from vllama.engine.process import StopReport, WorkerProcess
from vllama.engine.states import DOWN, RUNNING, FailureKind, WorkerState, check_transition
from vllama.engine.vllm_report import MEMORY_REFUSALS, StartReport, is_report_line, start_report

log = structlog.get_logger("vllama.worker")

WORKER_HOST = "127.0.0.1"
ERROR_TAIL_LINES = 20
# The bind error in the worker's output, compared without case: uvicorn says "address already
# in use", vLLM's own bind (`create_server_socket`) raises "[Errno 98] Address already in use".
PORT_TAKEN = "address already in use"
_READY_POLL = 0.25
_HEALTH_TIMEOUT = 10.0
_HEALTH_FAILURES_TO_FAIL = 3  # a busy 2-core host can answer /health slowly; a 503 fails at once


class LoadError(Exception):
    """A model could not be made ready; carries the reason and the worker's last output lines.

    Raised as it is when a start failed; the subclasses say other outcomes apart (placement
    refused, a crash loop, vLLM refusing its memory share), each with its own bounded `code`.
    """

    code: ClassVar[str] = "start_failed"

    def __init__(
        self, model: str, reason: str, tail: list[str], retry_after: float | None = None
    ) -> None:
        super().__init__(f"model {model!r} failed to load: {reason}")
        self.model = model
        self.reason = reason
        self.tail = tail
        self.retry_after = retry_after  # seconds until vllama tries it again on its own

    def detail(self) -> str:
        if not self.tail:
            return str(self)
        return f"{self}; last worker output:\n" + "\n".join(self.tail)


class PortTaken(LoadError):
    """Another process serves on the worker's port: the start is retried on the next port."""

    code = "port_taken"


class MemoryRefused(LoadError):
    """vLLM refused to start in the memory it was given (its own words are in the tail)."""

    code = "memory_refused"


def start_outcome(error: LoadError, refusals: Sequence[str] = ()) -> LoadError:
    """A failed start as what it was: a memory refusal when vLLM's output says so (in its tail,
    or among `refusals`, the refusal lines kept while it started: the API server's own traceback
    after the engine core's can push them out of the tail)."""
    if type(error) is not LoadError:
        return error
    if any(marker in line for line in error.tail for marker in MEMORY_REFUSALS):
        return MemoryRefused(error.model, error.reason, error.tail, error.retry_after)
    if refusals:
        tail = [*refusals, *error.tail]
        return MemoryRefused(error.model, error.reason, tail, error.retry_after)
    return error


StateListener = Callable[["Worker", WorkerState, WorkerState, str], None]


# Starts a worker's engine process from its argv and environment (a cold spawn, or a warm spare
# taking over: engine/spares.py); output lines go to the callback.
Launch = Callable[[Sequence[str], dict[str, str], Callable[[str], None]], Awaitable[WorkerProcess]]


class Worker:
    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        settings: ServerSettings,
        http: aiohttp.ClientSession,
        ports: PortAllocator,
        on_state: StateListener | None = None,
        leftovers: Leftovers | None = None,
        launch: Launch | None = None,
    ) -> None:
        self.name = name
        self._launch = launch or self._cold
        self._leftovers = leftovers  # where running groups are recorded, for a next daemon
        self.spec = spec
        self._settings = settings
        self._http = http
        self._ports = ports
        self._on_state = on_state
        self.state = WorkerState.STOPPED
        self.reason = "never started"
        self.failure: FailureKind | None = None  # why it is FAILED, while it is
        self.port: int | None = None
        self.process: WorkerProcess | None = None
        self._last_process: WorkerProcess | None = None  # kept after a stop, for its output tail
        self.last_error: LoadError | None = None
        self.ready_at: float | None = None
        # When its engine ended (monotonic), while FAILED: the guard's word, which comes up to
        # GROUP_EXIT_WAIT seconds before the guard itself exits.
        self.ended_at: float | None = None
        self._engine_exited_at: float | None = None
        self.max_model_len: int | None = None  # the context vLLM serves, read once it is ready
        self.cluster: ray_cluster.Cluster | None = None  # where a multi-node model runs (Ray)
        self._watch: asyncio.Task[None] | None = None
        self._share: tuple[tuple[str, ...], dict[str, str]] = ((), {})
        self._output_log = OutputLog(name)
        self._report_lines: list[str] = []  # what the last start said about its memory
        self._refusal_lines: list[str] = []  # and vLLM's refusal of it, if it refused

    # -- state -------------------------------------------------------------------------------

    def _set_state(
        self, target: WorkerState, reason: str, failure: FailureKind | None = None
    ) -> None:
        """The one place the state changes; a move to FAILED says why as a bounded kind."""
        check_transition(self.name, self.state, target)
        previous, self.state, self.reason = self.state, target, reason
        self.failure = failure if target is WorkerState.FAILED else None
        log.info("worker state", model=self.name, old=previous.value, new=target.value, why=reason)
        if self._on_state is not None:
            self._on_state(self, previous, target, reason)

    @property
    def is_ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def has_port(self) -> bool:
        return self.port is not None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"worker {self.name!r} has no port")
        return f"http://{WORKER_HOST}:{self.port}"

    def tail(self, lines: int = ERROR_TAIL_LINES) -> list[str]:
        source = self.process or self._last_process
        return source.tail(lines) if source is not None else []

    def _on_output(self, line: str) -> None:
        if line.startswith(ENGINE_EXITED):
            self._engine_exited_at = time.monotonic()
        if self.state is WorkerState.STARTING:
            if is_report_line(line):
                self._report_lines.append(line)
            elif any(marker in line for marker in MEMORY_REFUSALS):
                self._refusal_lines.append(line)
        self._output_log.line(line)

    @property
    def memory_report(self) -> StartReport:
        """What vLLM reported about its memory during the last start (weights, KV cache,
        CUDA graphs), kept apart from the tail, which a long start-up log would outrun."""
        return start_report(self._report_lines)

    # -- start -------------------------------------------------------------------------------

    async def start(
        self, share_args: Sequence[str] = (), share_env: Mapping[str, str] | None = None
    ) -> None:
        """Spawn the server and wait for `GET /health` = 200.

        On failure the process tree is stopped, the state is FAILED and `LoadError` is raised.
        If the caller is cancelled (shutdown), the tree is stopped and the state is STOPPED.
        """
        if self._watch is not None:  # a failure's cleanup may still be running: wait for it
            await asyncio.shield(self._watch)
            self._watch = None
        self._set_state(WorkerState.STARTING, "load requested")
        self.last_error = None
        self.ready_at = self.ended_at = self._engine_exited_at = None
        self._share = (tuple(share_args), dict(share_env or {}))
        self._report_lines, self._refusal_lines = [], []
        try:
            await self._spawn_and_wait()
        except LoadError as failed:
            error = start_outcome(failed, self._refusal_lines)
            self.last_error = error
            exited = self.process is not None and self.process.returncode is not None
            await self._release_process()
            self._set_state(WorkerState.FAILED, error.reason, "exited" if exited else "load_failed")
            if error is failed:
                raise
            raise error from None
        except asyncio.CancelledError:
            self._set_state(WorkerState.STOPPING, "load cancelled")
            await asyncio.shield(self._release_process())
            self._set_state(WorkerState.STOPPED, "load cancelled")
            raise
        self.ready_at = time.monotonic()
        self.max_model_len = await self._served_context_length()
        self._set_state(WorkerState.READY, "health check passed")
        self._watch = asyncio.create_task(self._watch_ready(), name=f"watch-{self.name}")

    async def _spawn_and_wait(self) -> None:
        if self.spec.ray is not None:  # a multi-node model: its cluster first
            env = build_env(os.environ, self.spec, self._share[1])
            need = vllm_args.gpus_per_worker(self.spec.args)
            python = self._settings.engine_command[0]
            try:
                self.cluster = await ray_cluster.check(self.spec.ray, need, python, env)
            except ray_cluster.ClusterUnfit as exc:
                raise LoadError(self.name, str(exc), []) from None
        try:
            await self._spawn_on_a_port()
        except LoadError as error:
            if not isinstance(error, PortTaken) and not any(
                PORT_TAKEN in ln.lower() for ln in error.tail
            ):
                raise
            # Between the free-port check and vLLM's bind (seconds later) another process
            # took the port: once more, on the next port.
            log.warning("worker port taken before the worker bound it; retrying", port=self.port)
            await self._release_process()
            await self._spawn_on_a_port()

    async def _spawn_on_a_port(self) -> None:
        try:
            self.port = self._ports.acquire()
        except NoFreePort as exc:
            raise LoadError(self.name, str(exc), []) from None
        command = self._settings.engine_command
        extra_args, extra_env = self._share
        # A replica (`name#2`) serves its model's name: requests name the model, not the replica.
        served = replicas.model_of(self.name)
        argv = build_argv(command, served, self.spec, WORKER_HOST, self.port, extra_args)
        env = build_env(os.environ, self.spec, extra_env)
        log.info("worker spawn", model=self.name, port=self.port, argv=argv)
        try:
            self.process = await self._launch(argv, env, self._on_output)
        except OSError as exc:
            raise LoadError(self.name, f"could not start {argv[0]!r}: {exc}", []) from None
        if self._leftovers is not None:
            await asyncio.to_thread(self._leftovers.record, self.process.pgid)
        await self._wait_ready(self.process)

    async def _cold(
        self, argv: Sequence[str], env: dict[str, str], on_line: Callable[[str], None]
    ) -> WorkerProcess:
        return await WorkerProcess.spawn(guarded(argv), env, self._settings.log_tail_lines, on_line)

    async def _wait_ready(self, process: WorkerProcess) -> None:
        stall = self._settings.load_stall_timeout
        while True:
            if process.returncode is not None:
                raise LoadError(
                    self.name,
                    f"worker exited with code {process.returncode} during start",
                    process.tail(ERROR_TAIL_LINES),
                )
            if await self._probe() == 200:
                assert self.port is not None
                if process.listens_on(self.port):
                    return
                # Another process holds the port: this start can never serve on it (vLLM was
                # seen to carry on, listening on nothing, until the stall timeout).
                raise PortTaken(
                    self.name, f"another process answers on port {self.port}", process.tail(5)
                )
            silent_for = time.monotonic() - process.last_output_at
            if silent_for > stall:
                raise LoadError(
                    self.name,
                    f"worker showed no progress for {stall:g}s during start (stalled) and was "
                    "stopped",
                    process.tail(ERROR_TAIL_LINES),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), _READY_POLL)

    async def _probe(self) -> int | None:
        """`GET /health`'s status, or None when the server does not answer."""
        try:
            async with self._http.get(
                f"{self.base_url}/health", timeout=aiohttp.ClientTimeout(total=_HEALTH_TIMEOUT)
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _served_context_length(self) -> int | None:
        try:
            async with self._http.get(
                f"{self.base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=_HEALTH_TIMEOUT)
            ) as response:
                cards = (await response.json())["data"]
            return int(cards[0]["max_model_len"])
        except (aiohttp.ClientError, TimeoutError, ValueError, LookupError, TypeError):
            return None

    # -- while ready -------------------------------------------------------------------------

    async def _watch_ready(self) -> None:
        """Notice an exit or a dead engine while READY; then clean up and mark FAILED."""
        process = self.process
        assert process is not None
        failures = 0
        reason = ""
        kind: FailureKind = "unhealthy"
        while not reason:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(process.wait()), self._settings.health_interval
                )
            if process.returncode is not None:
                reason = f"worker exited with code {process.returncode}"
                kind = "exited"
                break
            status = await self._probe()
            if status == 200:
                failures = 0
            elif status is not None and status >= 500:
                reason = f"health check answered {status} (engine dead)"
            else:
                failures += 1
                if failures >= _HEALTH_FAILURES_TO_FAIL:
                    reason = f"health check failed {failures} times in a row"
        if self.state not in RUNNING:
            return
        self.last_error = LoadError(self.name, reason, process.tail(ERROR_TAIL_LINES))
        self.ended_at = self._engine_exited_at or time.monotonic()
        self._set_state(WorkerState.FAILED, reason, kind)
        await self._release_process()

    async def confirm_health(self) -> None:
        """Called when a READY worker refused a connection: settle whether it is dead.

        Returns once the worker is READY and healthy again, or FAILED with its tree cleaned up
        (so the next lease starts it anew).
        """
        process = self.process
        if not self.is_ready or process is None:
            return
        if process.returncode is None and await self._probe() == 200:
            return  # alive and answering: the connection was only stale
        with contextlib.suppress(TimeoutError):  # dying: give the exit a moment to land
            await asyncio.wait_for(asyncio.shield(process.wait()), 1.0)
        if self._watch is not None:  # it exited or is failing: the watcher settles it
            await asyncio.shield(self._watch)

    # -- stop --------------------------------------------------------------------------------

    async def stop(self, reason: str) -> StopReport | None:
        """Stop the worker and confirm its process tree is gone. Idempotent."""
        if self.state in RUNNING:
            # STOPPING first, before any await: nothing may see this worker ready any more.
            self._set_state(WorkerState.STOPPING, reason)
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
                self._watch = None
            report = await self._release_process()
            self._set_state(WorkerState.STOPPED, reason)
            return report
        if self._watch is not None:  # a failure's cleanup may still be running: let it finish
            await self._watch
            self._watch = None
        if self.state in DOWN:
            self._set_state(WorkerState.STOPPED, reason)
        return None

    # -- sleep mode (GPU) --------------------------------------------------------------------

    async def sleep(self) -> bool:
        """Level-1 sleep: weights to host RAM, GPU memory freed. Only call when idle."""
        if not self.is_ready or not await self._post("/sleep?level=1"):
            return False
        self._set_state(WorkerState.SLEEPING, "idle for keep_alive (sleep mode)")
        return True

    async def wake(self, warm_up: tuple[str, Mapping[str, object]] | None = None) -> None:
        """Wake and warm up with one small request (`warm_up`: a path and body the model
        serves) before any request reaches the engine.

        vLLM has crashed or hung when a request reached a sleeping or half-woken engine, so
        traffic is held (the scheduler treats SLEEPING as not ready) until this returns.
        """
        if self.state is not WorkerState.SLEEPING:
            return
        woke = await self._post("/wake_up")
        if woke and warm_up is not None:
            path, body = warm_up
            woke = await self._post(path, {"model": replicas.model_of(self.name), **body})
        if woke:
            self._set_state(WorkerState.READY, "woken up")
            return
        self.last_error = LoadError(self.name, "failed to wake from sleep mode", self.tail())
        self._set_state(WorkerState.FAILED, "failed to wake from sleep mode", "wake_failed")
        await self._release_process()
        raise self.last_error

    async def _post(self, path: str, body: dict[str, object] | None = None) -> bool:
        try:
            async with self._http.post(
                f"{self.base_url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=120)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def enter_backoff(self, reason: str) -> None:
        self._set_state(WorkerState.BACKOFF, reason)

    def enter_fatal(self, reason: str) -> None:
        self._set_state(WorkerState.FATAL, reason)

    def kill_now(self) -> None:
        if self.process is not None:
            self.process.kill_now()

    async def _release_process(self) -> StopReport | None:
        process, self.process = self.process, None
        report = None
        if process is not None:
            report = await process.stop(self._settings.stop_timeout)
            self._output_log.end()  # its output is over (stop waited for the reader)
            if report.survivors:
                log.error("worker tree survived stop", model=self.name, pids=report.survivors)
            else:
                log.info(
                    "worker tree gone",
                    model=self.name,
                    returncode=report.returncode,
                    escalated=report.escalated,
                )
            self._last_process = process
            if self._leftovers is not None and not report.survivors:
                await asyncio.to_thread(self._leftovers.forget, process.pgid)
        if self.port is not None:
            self._ports.release(self.port)
            self.port = None
        return report


# A worker's output lines in the daemon's log, tagged with the model and rate-limited.
OUTPUT_BURST = 200  # a vLLM start prints ~100 lines
OUTPUT_RATE = 20.0  # lines per second after the burst


# nanobind (the bindings of vLLM's xgrammar, among others) reports every object it leaked when
# the engine's interpreter exits: some 60 lines, one per object, after every stop. They stay in
# the worker's tail (`vllama logs`); the daemon's log gets one line that counts them. C-level
# writes, so never behind vLLM's "(EngineCore_DP0 pid=N)" prefix, but it is allowed for.
NANOBIND_REPORT = re.compile(
    r"^(?:\(\S+ pid=\d+\) )?"
    r"(?:nanobind: | - leaked | - \.\.\. skipped remainder|See https://nanobind\.readthedocs\.io/)"
)


class OutputLog:
    """A token bucket (a burst of `OUTPUT_BURST`, then `OUTPUT_RATE` lines per second) keeps a
    chatty or crash-looping engine from flooding journald; suppressed lines are counted, and every
    line stays in the tail the worker keeps for errors and `vllama logs`. nanobind's leak report
    at the engine's exit is counted, not logged (`NANOBIND_REPORT`). `end` (the worker's output
    is over) says what was counted and not said yet."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._tokens = float(OUTPUT_BURST)
        self._at = time.monotonic()
        self._suppressed = 0
        self._nanobind = 0

    def line(self, line: str) -> None:
        if NANOBIND_REPORT.match(line):
            self._nanobind += 1
            return
        self._report_nanobind()
        now = time.monotonic()
        self._tokens = min(OUTPUT_BURST, self._tokens + (now - self._at) * OUTPUT_RATE)
        self._at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        self._report_suppressed()
        log.info("worker output", model=self._model, line=line)

    def end(self) -> None:
        self._report_nanobind()
        self._report_suppressed()

    def _report_suppressed(self) -> None:
        if self._suppressed:
            log.warning("worker output suppressed", model=self._model, lines=self._suppressed)
            self._suppressed = 0

    def _report_nanobind(self) -> None:
        if self._nanobind:
            log.info(
                "worker output suppressed",
                model=self._model,
                lines=self._nanobind,
                why="nanobind leak report at exit (in `vllama logs`)",
            )
            self._nanobind = 0
