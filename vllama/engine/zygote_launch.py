"""The executable a warm spare's engine runs where Python's multiprocessing `spawn` would run a
fresh interpreter (engine/zygote.py): it hands its open files, environment and working directory
to the spare's zygote, which forks a copy that has the engine imported already, then stands in for
that copy (its pid is the one the engine waits on and signals) until it exits, and exits the same
way. If the zygote refuses (or is gone), it runs the real interpreter with the same arguments,
which is the plain spawn.

`python -I -S zygote_launch.py SOCKET PYTHON ARGS...`: standard library only, no site packages, so
that it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

# Forwarded to the zygote's child: what multiprocessing (terminate) and a supervisor send.
_FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def _open_fds() -> list[int]:
    """The descriptors this process was started with: those the spawning process passed (and the
    standard ones)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        fds.append(int(name))
    return sorted(fds)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"


def _exit_like(code: int) -> None:
    if code < 0:  # killed by a signal: die of the same one, so the waiting parent sees it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF if code >= 0 else 1)


def main(argv: list[str]) -> None:
    path, python, *args = argv
    fds = _open_fds()
    request = json.dumps({"args": args, "env": dict(os.environ), "cwd": _cwd(), "fds": fds})
    pid = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.connect(path)
            socket.send_fds(conn, [request.encode()], fds)
            reply = json.loads(conn.recv(65536) or b"{}")
            pid = int(reply.get("pid", 0))
            if pid:
                for fd in fds:  # the child holds them now (a pipe's end must close when it exits)
                    if fd > 2:
                        os.close(fd)
                for number in _FORWARDED:
                    signal.signal(number, lambda signum, _: _forward(pid, signum))
                while True:
                    message = conn.recv(65536)
                    if not message:  # the zygote is gone (its spare exited): no status to report
                        os._exit(1)
                    _exit_like(int(json.loads(message)["exit"]))
    except OSError:
        if pid:
            os._exit(1)
    os.execv(python, [python, *args])


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
