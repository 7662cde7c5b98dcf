"""The worker guard on its own (vllama/engine/guard.py), without the daemon's group kill
(engine/process.py) behind it: that kill would hide a guard that misses part of its group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psutil
import pytest

from tests.component.fakes import eventually_blocking
from tests.processes import default_sigint, process_group
from vllama.engine import guard

# A session leader standing in for a worker: a grandchild in its own group (forked twice, so
# its parent is not the leader) and a child moved to a group of its own within the session.
# Prints "<grandchild> <other group's child>" and waits.
_SESSION = textwrap.dedent(
    """
    import os, subprocess, sys, time
    grandchild = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
         "print(p.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    other = subprocess.Popen(["sleep", "60"], process_group=0)
    print(grandchild.stdout.readline().strip(), other.pid, flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def _session() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    leader = subprocess.Popen(
        [sys.executable, "-c", _SESSION], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert leader.stdout is not None
    grandchild, other = (int(n) for n in leader.stdout.readline().split())
    try:
        yield leader, grandchild, other
    finally:
        for pgid in (leader.pid, other):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        leader.wait()


def test_group_members_are_the_process_group_not_the_children_or_the_session() -> None:
    with _session() as (leader, grandchild, other):
        members = guard.group_members(leader.pid)
        expected = {
            p.pid for p in psutil.process_iter() if _pgid(p.pid) == leader.pid and _live(p.pid)
        }
        assert set(members) == expected
        assert leader.pid in members and grandchild in members  # a grandchild is a member
        assert other not in members  # same session, another group


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_when_the_engine_exits_the_guard_stops_the_rest_of_its_group() -> None:
    # The engine (sh) leaves a process behind in the group and exits: vLLM's EngineCore
    # outliving its API server. Its parent is no longer the guard's child once sh is gone.
    engine = "sleep 60 >/dev/null & echo $!; exit 3"
    with process_group(
        [sys.executable, "-m", "vllama.engine.guard", str(os.getpid()), "--", "sh", "-c", engine],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        left = int(proc.stdout.readline())
        assert proc.wait(timeout=guard.GROUP_EXIT_WAIT + 10) == 3  # the engine's own status
        assert f"{guard.ENGINE_EXITED} 3" in proc.stdout.read()
        # Only the guard could have stopped it: nothing else here signals the group.
        eventually_blocking(lambda: not _live(left), within=2, what="the left process gone")


@pytest.mark.parametrize("daemon", ["stranger", "dead"])
def test_the_guard_starts_nothing_when_its_daemon_is_already_gone(daemon: str) -> None:
    """The daemon died before the guard armed its death signal: the guard is already an orphan,
    reparented, and its parent is not the daemon named on its command line."""
    if daemon == "dead":
        gone = subprocess.Popen(["true"])
        gone.wait()
        named = gone.pid
    else:
        named = 1  # init: alive, and not the guard's parent
    result = subprocess.run(
        [sys.executable, "-m", "vllama.engine.guard", str(named), "--", "echo", "started"],
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,  # a guard that did start would stop its whole group: not ours
    )
    assert result.returncode == 1
    assert "started" not in result.stdout


@pytest.mark.parametrize(
    ("engine", "status"), [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 137)]
)
def test_the_guard_exits_with_the_engines_status(engine: str, status: int) -> None:
    # A death by signal is 128 + the signal, as a shell reports it (an exit status cannot be
    # negative, as Popen's returncode for a signal is); a clean exit stays 0.
    result = subprocess.run(
        [sys.executable, "-m", "vllama.engine.guard", str(os.getpid()), "--", "sh", "-c", engine],
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )
    assert result.returncode == status


def test_the_guard_outlives_a_sigint() -> None:
    # ^C on a terminal is the daemon's to act on; the guard keeps its engine until told to stop.
    engine = ["sh", "-c", "echo ready; read line; exit 4"]
    with process_group(
        [sys.executable, "-m", "vllama.engine.guard", str(os.getpid()), "--", *engine],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background inherits SIGINT ignored, and
        # the guard would then survive it for that reason alone.
        preexec_fn=default_sigint,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGINT)
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 4  # the engine's own exit, not the guard's death
