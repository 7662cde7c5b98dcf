"""The executable a warm spare's engine runs where Python's multiprocessing `spawn` would run a
fresh interpreter (engine/zygote.py): it hands its open files, environment and working directory
to the spare's zygote, which forks a copy that has the engine imported already, then stands in for
that copy (its pid is the one the engine waits on and signals) until it exits, and exits the same
way. It asks each zygote of the spare in turn (every `*.sock` in FOLDER, in name order); if all
refuse (or are gone), it says why on stderr and runs the real interpreter with the same arguments,
which is the plain spawn.

`python -I -S zygote_launch.py FOLDER PYTHON ARGS...`: standard library only, no site packages, so
that it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading

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
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set, nor blocked
            signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF if code >= 0 else 1)


def _read_exit(conn: socket.socket, status: list[int]) -> None:
    """In a thread: the child's exit status, once the zygote reports it (1 if the zygote is gone:
    its spare exited, and no status will come)."""
    try:
        message = conn.recv(65536)
    except OSError:
        message = b""
    status.append(int(json.loads(message)["exit"]) if message else 1)


def _ask(path: str, request: bytes, fds: list[int]) -> tuple[socket.socket, int] | str:
    """One zygote's answer: (the connection, the child's pid) if it forked, else why it refused
    ("" where that is not worth saying, or where it is gone or not started yet)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
        socket.send_fds(conn, [request], fds)
        answer = json.loads(conn.recv(65536) or b"{}")
    except OSError:
        conn.close()
        return ""
    pid = int(answer.get("pid", 0))
    if pid:
        return conn, pid
    conn.close()
    return str(answer.get("refused", "")) if answer.get("say") else ""


def _sockets(folder: str) -> list[str]:
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".sock"))
    except OSError:
        return []
    return [os.path.join(folder, name) for name in names]


def main(argv: list[str]) -> None:
    folder, python, *args = argv
    fds = _open_fds()
    request = json.dumps({"args": args, "env": dict(os.environ), "cwd": _cwd(), "fds": fds})
    # Held until the child is known: a signal then reaches it (`_forward`) rather than only this.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    forked: tuple[socket.socket, int] | None = None
    reasons = []
    for path in _sockets(folder):
        answer = _ask(path, request.encode(), fds)
        if isinstance(answer, tuple):
            forked = answer
            break
        if answer:
            reasons.append(answer)
    if forked is None:
        if reasons:
            why = "; ".join(reasons)
            print(f"vllama zygote: a plain spawn, not a fork: {why}", file=sys.stderr, flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        os.execv(python, [python, *args])
    conn, pid = forked
    for fd in fds:  # the child holds them now (a pipe's end must close when it exits)
        if fd > 2:
            os.close(fd)
    status: list[int] = []
    threading.Thread(target=_read_exit, args=(conn, status), daemon=True).start()
    _forward(pid, status)
    _exit_like(status[0])  # here: only the main thread may set a signal's disposition


def _forward(pid: int, status: list[int]) -> None:
    """Pass on what the spawning process sends (multiprocessing's terminate and kill). A signal
    sent to the whole process group reaches the child, which is in it, directly: passing it on as
    well would deliver it twice, and vLLM's engine core deadlocked in its SIGTERM handler when a
    second SIGTERM arrived during the first's shutdown."""
    parent = os.getppid()
    while not status:
        info = signal.sigtimedwait(_FORWARDED, 0.05)
        if info is not None and info.si_pid == parent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, info.si_signo)


if __name__ == "__main__":
    main(sys.argv[1:])
