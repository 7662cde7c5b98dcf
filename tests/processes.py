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


def default_sigint() -> None:
    """`preexec_fn` for a program a test sends SIGINT: SIGINT at its default, as a terminal has
    it. A test run started in the background by a non-interactive shell inherits SIGINT
    ignored, and every child with it (a Python program's KeyboardInterrupt would never come)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
