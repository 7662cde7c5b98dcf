"""The first process of every worker: it starts vLLM and makes sure vLLM's whole process group dies
with it, and with the daemon.

`python -m vllama.engine.guard DAEMON_PID -- ARGV...`, as the leader of the worker's own session.
- It asks Linux for SIGTERM when its parent (the daemon) dies (PR_SET_PDEATHSIG), and exits at
  once if the daemon is already gone.
- It runs ARGV (vLLM's server) in its process group, with its output.
- On SIGTERM (the daemon stopping it, or the daemon's death) it passes SIGTERM on to vLLM, and
  after a grace period SIGKILLs whatever of the group is left.
- When vLLM exits, it says so at once on its output (`ENGINE_EXITED`: the daemon times a crash
  from there, not from the guard's own exit), kills the rest of the group (vLLM's EngineCore and
  workers can outlive their API server, vLLM #55510), then exits with vLLM's status.
Stdlib only, and small: it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE = 15.0  # seconds vLLM gets after SIGTERM before the group is SIGKILLed
GROUP_EXIT_WAIT = 5.0  # seconds the rest of the group gets after vLLM exits, before SIGKILL
ENGINE_EXITED = "vllama-guard: the engine exited with code"  # + the code, on the guard's output


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`, from /proc (no psutil: this must start fast)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def kill_others(sig: int) -> None:
    me = os.getpid()
    for pid in group_members(os.getpgrp()):
        if pid != me:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m vllama.engine.guard DAEMON_PID -- ARGV...", file=sys.stderr)
        return 2
    daemon, command = int(argv[0]), argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != daemon:  # the daemon died before the death signal was armed
        return 1
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    # The daemon decides when to stop; ^C on a terminal reaches the daemon. A handler, not
    # SIG_IGN, which vLLM would inherit across exec.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    child = subprocess.Popen(command)  # same process group and session: one group to kill
    deadline: float | None = None
    while child.poll() is None:
        if stopping and deadline is None:
            deadline = time.monotonic() + GRACE
        if deadline is not None and time.monotonic() > deadline:
            kill_others(signal.SIGKILL)
        try:
            child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
    # vLLM's API server is gone: its engine must not outlive it.
    print(f"{ENGINE_EXITED} {child.returncode}", flush=True)
    kill_others(signal.SIGTERM)
    end = time.monotonic() + GROUP_EXIT_WAIT
    while time.monotonic() < end and [p for p in group_members(os.getpgrp()) if p != os.getpid()]:
        time.sleep(0.05)
    kill_others(signal.SIGKILL)
    code = child.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
