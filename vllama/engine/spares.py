"""Warm spares: engine processes started ahead of need, which a load takes over instead of
starting a cold one (engine/spare.py is the process side).

A spare has imported the engine and initialised no device, so it can become any model whose
environment differs from the spare's only in variables read after import (`unfit_variable`). The
pool keeps `warm_spares` of them; a load that takes one asks for a new one once the load is over
(`refill`), so the spare's imports never compete with the start they would speed up. Idle spares
count in the CPU budget (`held_bytes`), and are the first thing dropped when a CPU model needs the
room (`drop_idle`), except the one that load will take (`held_bytes_beside`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil
import structlog

from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine.argv import build_env, guarded
from vllama.engine.import_time import unfit_variable
from vllama.engine.leftovers import Leftovers
from vllama.engine.process import WorkerProcess
from vllama.engine.spare import READY, UNFIT, parse_command

log = structlog.get_logger("vllama.spares")

LineSink = Callable[[str], None]

_START_FAILURES_TO_GIVE_UP = 3


def spare_argv(command: Sequence[str]) -> list[str] | None:
    """The spare's own command line for this engine command, None if a spare cannot run it."""
    try:
        parse_command(list(command))
    except ValueError:
        return None
    return [sys.executable, "-m", "vllama.engine.spare", "--", *command]


@dataclass
class Spare:
    process: WorkerProcess
    env: dict[str, str]
    rss: int = 0  # bytes, measured once it is ready


class SparePool:
    def __init__(
        self,
        settings: ServerSettings,
        env: Mapping[str, str],
        leftovers: Leftovers | None = None,
    ) -> None:
        """`env`: the environment every worker starts from (a spare's own)."""
        self._target = settings.warm_spares
        self._command = list(settings.engine_command)
        self._tail_lines = settings.log_tail_lines
        self._ready_timeout = settings.load_stall_timeout
        self._env = dict(env)
        self._leftovers = leftovers
        self._idle: list[Spare] = []
        self._unassigned: set[WorkerProcess] = set()  # every spare process not yet a worker
        self._starting: set[asyncio.Task[None]] = set()
        self._failures = 0
        self._closed = False
        argv = spare_argv(self._command)
        self._argv = argv or []
        self.off_reason: str | None = None if argv else "engine_command is not `python -m ...`"
        if self._target == 0:
            self.off_reason = "warm_spares = 0"

    @property
    def idle_count(self) -> int:
        return len(self._alive())

    @property
    def held_bytes(self) -> int:
        """Host memory the idle spares hold (their last measurement)."""
        return sum(spare.rss for spare in self._alive())

    def held_bytes_beside(self, spec: ModelSpec) -> int:
        """Host memory the idle spares hold beside `spec`'s load: the spare that load would take
        becomes the model's own process, which the model's estimate already counts."""
        taken = self._fitting(build_env(self._env, spec))
        return sum(spare.rss for spare in self._alive() if spare is not taken)

    def _fitting(self, env: Mapping[str, str]) -> Spare | None:
        """The idle spare a process with `env` would take, if any."""
        return next((s for s in self._alive() if unfit_variable(s.env, env) is None), None)

    def _alive(self) -> list[Spare]:
        """The idle spares, without any that died (killed by hand, by the OOM killer)."""
        dead = [spare for spare in self._idle if spare.process.returncode is not None]
        for spare in dead:
            self._idle.remove(spare)
            self._unassigned.discard(spare.process)
            log.warning("a warm spare exited while idle", pid=spare.process.pid)
        return self._idle

    def refill(self) -> None:
        """Start spares until `warm_spares` are idle or starting."""
        if self._closed or self.off_reason is not None:
            return
        while len(self._alive()) + len(self._starting) < self._target:
            task = asyncio.create_task(self._start_one(), name="warm-spare")
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def launch(
        self, argv: Sequence[str], env: dict[str, str], on_line: LineSink | None
    ) -> WorkerProcess:
        """The model's engine process: an idle spare given `argv`, else a cold start."""
        spare = self._take(argv, env)
        if spare is None:
            return await WorkerProcess.spawn(guarded(argv), env, self._tail_lines, on_line)
        self._unassigned.discard(spare.process)
        spare.process.adopt(on_line)
        order = {"argv": list(argv[len(self._command) :]), "env": env}
        await spare.process.send(json.dumps(order).encode() + b"\n")
        log.info("warm spare takes the model", pid=spare.process.pid)
        return spare.process

    def _take(self, argv: Sequence[str], env: Mapping[str, str]) -> Spare | None:
        if list(argv[: len(self._command)]) != self._command:
            return None
        spare = self._fitting(env)
        if spare is not None:
            self._idle.remove(spare)
        elif self._idle:  # every idle spare was imported under another value of this
            variable = unfit_variable(self._idle[0].env, env)
            log.info("warm spare unfit for this model; a cold start", variable=variable)
        return spare

    async def drop_idle(self, keep_for: ModelSpec | None = None) -> int:
        """Stop idle spares (a CPU model needs the room), all but the one a load of `keep_for`
        would take; the bytes they held."""
        kept = self._fitting(build_env(self._env, keep_for)) if keep_for is not None else None
        dropped = [spare for spare in self._idle if spare is not kept]
        self._idle = [kept] if kept is not None else []
        for spare in dropped:
            await self._stop(spare.process)
        if dropped:
            log.info("warm spares stopped", count=len(dropped))
        return sum(spare.rss for spare in dropped)

    def kill_now(self) -> None:
        """SIGKILL every spare at once (the second-signal path)."""
        for process in self._unassigned:
            process.kill_now()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await self.drop_idle()
        for process in list(self._unassigned):  # none is expected: a start always owns its own
            await self._stop(process)

    async def _start_one(self) -> None:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def watch(line: str) -> None:
            if line.startswith((READY, UNFIT)) and not ready.done():
                ready.set_result(line)

        spawning = asyncio.ensure_future(
            WorkerProcess.spawn(
                guarded(self._argv), self._env, self._tail_lines, watch, takes_input=True
            )
        )
        try:
            process = await asyncio.shield(spawning)
        except asyncio.CancelledError:  # the pool closes: what was spawned is stopped, too
            with contextlib.suppress(Exception):
                await self._stop(await spawning)
            raise
        self._unassigned.add(process)
        try:
            if self._leftovers is not None:
                await asyncio.to_thread(self._leftovers.record, process.pgid)
            line = await asyncio.wait_for(_first(ready, process), self._ready_timeout)
            rss = await asyncio.to_thread(tree_memory, process.pid) if line.startswith(READY) else 0
        except BaseException:  # timed out, or the pool closes: never an unowned process
            await self._stop(process)
            raise
        if line.startswith(READY):
            self._failures = 0
            self._idle.append(Spare(process, dict(self._env), rss))
            log.info("warm spare ready", pid=process.pid, bytes=rss)
            return
        await self._stop(process)
        if line.startswith(UNFIT):
            self.off_reason = line.removeprefix(UNFIT).strip()
            log.warning("warm spares off", reason=self.off_reason)
            return
        self._failures += 1
        log.warning("warm spare exited before it was ready", tail=process.tail(20))
        if self._failures >= _START_FAILURES_TO_GIVE_UP:
            self.off_reason = f"{self._failures} spares in a row exited before they were ready"
            log.warning("warm spares off", reason=self.off_reason)

    async def _stop(self, process: WorkerProcess) -> None:
        self._unassigned.discard(process)
        report = await process.stop(grace=5.0)
        if self._leftovers is not None and not report.survivors:
            await asyncio.to_thread(self._leftovers.forget, process.pgid)


async def _first(ready: asyncio.Future[str], process: WorkerProcess) -> str:
    """The spare's READY/UNFIT line, or "" if it exits first."""
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    return ready.result() if ready.done() else ""


def tree_memory(pid: int) -> int:
    """Bytes the process tree holds: each process's proportional share (PSS) where the system
    reports it, since a spare's zygote is a fork of it and shares most of its pages (the sum of
    their RSS would count those twice); RSS elsewhere."""
    total = 0
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(pid)
        for proc in [leader, *leader.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += _proportional(proc)
    return total


def _proportional(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return int(proc.memory_info().rss)
