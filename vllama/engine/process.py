"""The effects boundary for one worker process group: spawn, read output, stop, confirm it is gone.

A worker runs in its own session, so its process group holds the API server and everything vLLM
forks (EngineCore, its workers). Every stop is a bounded escalation on the group: SIGTERM, wait,
SIGKILL, then confirm that no member of the group or of the last tree snapshot is alive. "The
parent was reaped" is not "the tree is gone": vLLM's engine can outlive its API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

OUTPUT_LINE_LIMIT = 1 << 20  # vLLM prints long config dumps on one line
_POLL = 0.05


@dataclass(frozen=True)
class StopReport:
    returncode: int | None
    escalated: bool  # SIGKILL was needed
    survivors: tuple[int, ...]  # pids still alive after everything (should be empty)


class WorkerProcess:
    """A spawned worker's process group, its output tail and its exit."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        tail_lines: int,
        on_line: Callable[[str], None] | None,
    ) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.pgid = proc.pid  # start_new_session makes the leader's pid the group id
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._on_line = on_line
        self.last_output_at = time.monotonic()
        self._known: dict[int, psutil.Process] = {}
        self._remember(proc.pid)
        self._reader = asyncio.create_task(self._read_output(), name=f"worker-output-{proc.pid}")

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        env: dict[str, str],
        tail_lines: int = 200,
        on_line: Callable[[str], None] | None = None,
        takes_input: bool = False,
    ) -> WorkerProcess:
        """`takes_input`: stdin is a pipe (a warm spare reads its order there), else null."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.PIPE if takes_input else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=OUTPUT_LINE_LIMIT,
        )
        return cls(proc, tail_lines, on_line)

    def adopt(self, on_line: Callable[[str], None] | None) -> None:
        """A warm spare becomes a model's worker: its output from here on is the model's."""
        self._on_line = on_line
        self._tail.clear()
        self.last_output_at = time.monotonic()

    async def send(self, line: bytes) -> None:
        """One line on stdin, then end of input (a spare's order)."""
        stdin = self._proc.stdin
        if stdin is None:
            raise RuntimeError("this process was not started to take input")
        stdin.write(line)
        await stdin.drain()
        stdin.close()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def tail(self, lines: int | None = None) -> list[str]:
        kept = list(self._tail)
        if lines is None:
            return kept
        return kept[-lines:] if lines > 0 else []

    async def wait(self) -> int:
        return await self._proc.wait()

    async def _read_output(self) -> None:
        assert self._proc.stdout is not None
        stream = self._proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: keep what fits, drop the rest
                raw = await stream.read(OUTPUT_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self.last_output_at = time.monotonic()
            if not line:
                continue
            self._tail.append(line)
            if self._on_line is not None:
                self._on_line(line)

    def snapshot_tree(self) -> None:
        """Remember the leader's current descendants, so a stop can check them after reparenting."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self._remember(child.pid)

    def _remember(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._known.setdefault(pid, psutil.Process(pid))

    def alive_members(self) -> list[int]:
        """Pids of this worker still alive: its process group plus any remembered descendant."""
        alive = set(group_members(self.pgid))
        for pid, proc in self._known.items():
            with contextlib.suppress(psutil.Error):
                # is_running() compares create times, so a recycled pid is not mistaken for ours.
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
        return sorted(alive)

    def _tree(self) -> list[psutil.Process]:
        try:
            leader = psutil.Process(self.pid)
            return [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return []

    def listens_on(self, port: int) -> bool:
        """Whether this worker's own tree holds the listening socket on `port`.

        A health answer on the port proves nothing by itself: between the free-port check and
        the worker's bind (vLLM binds after ~20 s of loading) another process may take the port.
        """
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                        return True
        return False

    def _signal_all(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        # Descendants that left the group (setsid) still get the signal.
        for pid in self.alive_members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    async def stop(self, grace: float, kill_wait: float = 5.0) -> StopReport:
        """SIGTERM the group, wait up to `grace`, SIGKILL what is left, reap, confirm it's gone."""
        self.snapshot_tree()
        escalated = False
        if self.alive_members():
            self._signal_all(signal.SIGTERM)
            if not await self._wait_gone(grace):
                escalated = True
                self._signal_all(signal.SIGKILL)
                await self._wait_gone(kill_wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), kill_wait)
        with contextlib.suppress(TimeoutError):
            # Shielded: a reader still behind on a loaded host goes on to the output's end (an
            # engine prints its last lines as it exits) instead of being cancelled here.
            await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
        return StopReport(self._proc.returncode, escalated, tuple(self.alive_members()))

    def kill_now(self) -> None:
        """SIGKILL the whole tree without waiting (the second-signal path)."""
        self.snapshot_tree()
        self._signal_all(signal.SIGKILL)

    async def _wait_gone(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            if self._proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._proc.wait()), _POLL)
            else:
                await asyncio.sleep(_POLL)
            if not self.alive_members():
                return True
            if time.monotonic() >= deadline:
                return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members
