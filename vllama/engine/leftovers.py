"""Workers a previous daemon left behind, found and stopped before a new one serves.

A daemon killed with SIGKILL cannot stop its workers; each worker's guard (engine/guard.py) then
stops its group through Linux's parent-death signal. Where even that cannot happen (the guard was
killed as well, a container was torn down oddly), this file of the daemon's worker process groups
and their start times lets the next daemon on the same port stop them first.

Start times are the kernel's, in clock ticks since boot (`/proc/<pid>/stat`), with the boot's
id: they never jump when the wall clock is stepped (NTP, an operator's `date -s`), where a
comparison with `time.time()` skipped the reap after a step back of more than a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import psutil
import structlog

from vllama.engine.process import group_members

log = structlog.get_logger("vllama.leftovers")


class Leftovers:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._groups: dict[int, int] = {}  # pgid -> its leader's start, in ticks since boot

    def record(self, pgid: int) -> None:
        """Blocking: a worker group started."""
        started = start_ticks(pgid)
        if started is not None:
            self._groups[pgid] = started
        self._save()

    def forget(self, pgid: int) -> None:
        """Blocking: a worker group is gone."""
        if self._groups.pop(pgid, None) is not None:
            self._save()

    def reap(self, wait: float = 10.0) -> list[int]:
        """Blocking, at start-up: stop every group a previous daemon recorded; the pids stopped."""
        try:
            saved = json.loads(self.path.read_text())
            recorded, boot = saved["groups"], saved["boot_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        now = ticks_since_boot()
        if boot != boot_id():  # a reboot since: every number is a stranger's
            recorded = []
        stopped: list[int] = []
        for entry in recorded:
            try:
                pgid, since = int(entry["pgid"]), int(entry["started"])
            except (KeyError, TypeError, ValueError):
                continue
            # Linux reuses a number only once no process group holds it: a live process under
            # it that is not the recorded leader means the group had emptied, and what is in
            # that group now is a stranger's.
            leader = start_ticks(pgid)
            if leader is not None and leader != since:
                continue
            # Members of the recorded group, started after its leader and before this daemon:
            # never a stranger that reused the number.
            members = [pid for pid in group_members(pgid) if _started_between(pid, since, now)]
            if members:
                log.warning("stopping workers a previous vllama left", pgid=pgid, pids=members)
                _stop(pgid, members, wait)
                stopped += members
        self._groups = {}
        self._save()
        return stopped

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        groups = [{"pgid": pgid, "started": since} for pgid, since in self._groups.items()]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump({"boot_id": boot_id(), "groups": groups}, handle)
        os.replace(tmp, self.path)


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after it.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def ticks_since_boot() -> int:
    """Now, on the clock `start_ticks` counts in (it never jumps: suspend time included)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started_between(pid: int, since: int, before: int) -> bool:
    started = start_ticks(pid)
    return started is not None and since <= started <= before


def _stop(pgid: int, members: list[int], wait: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(psutil.pid_exists(pid) and _alive(pid) for pid in members):
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
