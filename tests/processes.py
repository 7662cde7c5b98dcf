"""Programs a test runs in a process group of their own, so that nothing they start outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def process_group(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`argv` started as the leader of a new session: its own process group, which the terminal's
    ^C does not reach. On the way out, however the test went, the group is killed whole: the
    program and whatever it started."""
    proc: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL to `proc`'s whole group (a group already gone is no error), and `proc` reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
