"""The test run's audit hook: a connection to anything but loopback, or a write outside the run's
allowed folders, is recorded (one line each, in the file `VLLAMA_TEST_AUDIT_LOG` names) and the
connection refused. Installed in the pytest process by tests/conftest.py and in every Python
process it starts by this folder's sitecustomize.py (the folder is on their PYTHONPATH).

Python's audit events see what Python code does: C libraries that open sockets or files
themselves (gRPC in Ray, a Rust downloader) pass unseen, which is why `make test` is also run in
a network namespace cut to loopback (ai/STATUS.md). Standard library only: it runs before
anything else is imported.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Any

LOG_VARIABLE = "VLLAMA_TEST_AUDIT_LOG"
ROOTS_VARIABLE = "VLLAMA_TEST_WRITABLE"  # os.pathsep-separated folders a test may write below
# This host's own interface addresses, space-separated: a connection to one stays on the machine
# (Ray names its node by the first interface's address).
OWN_VARIABLE = "VLLAMA_TEST_OWN_ADDRESSES"

_NETWORK = frozenset(
    {"socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname"}
)
_WRITES = frozenset({"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_LOCAL_NAMES = frozenset({"", "localhost", "localhost.localdomain", "ip6-localhost"})


class Outside(PermissionError):
    """A connection a test must not make."""


def is_local_host(host: object, own: frozenset[str] = frozenset()) -> bool:
    """A name or address that stays on this machine: loopback, or 0.0.0.0/:: (a bind's)."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host.lower() in _LOCAL_NAMES or host in own:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def is_writable(path: str, roots: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    if f"{os.sep}__pycache__{os.sep}" in real:  # Python's own bytecode cache
        return True
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def violation(
    event: str, args: tuple[Any, ...], roots: tuple[str, ...], own: frozenset[str] = frozenset()
) -> str | None:
    """What is wrong with this audit event, or None."""
    if event in _NETWORK:
        if event == "socket.connect" or event == "socket.sendto":
            sock, address = args[0], args[-1]
            if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
                return None  # a unix socket: on this machine
            host = address[0] if isinstance(address, tuple) else address
        else:
            host = args[0]
        return None if is_local_host(host, own) else f"{event} {host!r}"
    if event not in _WRITES:
        return None
    if event == "open":
        path, mode, flags = args
        if not isinstance(path, str | bytes) or isinstance(path, int):
            return None
        if mode is not None:
            if not any(c in mode for c in "wax+"):
                return None
        elif not flags & _WRITE_FLAGS:
            return None
        paths = [path]
    elif event == "os.rename":  # (src, dst, src_dir_fd, dst_dir_fd)
        paths = [_at(args[0], args[2]), _at(args[1], args[3])]
    elif event == "os.symlink":  # (src, dst, dir_fd)
        paths = [_at(args[1], args[2])]
    else:  # os.mkdir (path, mode, dir_fd), os.remove and os.rmdir (path, dir_fd)
        paths = [_at(args[0], args[-1])]
    for path in paths:
        if path is None or isinstance(path, int):
            continue
        text = os.fsdecode(path)
        if event == "os.mkdir" and os.path.isdir(text):
            continue  # it exists: the call changes nothing (os.makedirs(..., exist_ok=True))
        if not is_writable(text, roots):
            return f"{event} {text!r}"
    return None


def _at(path: Any, dir_fd: Any) -> Any:
    """The path an `*at` call names; None for one relative to a directory descriptor (as
    shutil.rmtree removes a tree's entries), which is not this check's to resolve."""
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(os.fsdecode(path)):
        return None
    return path


def install(log: str, roots: tuple[str, ...], own: frozenset[str] = frozenset()) -> None:
    """Record (and, for connections, refuse) what leaves the run, from now on in this process."""
    roots = tuple(os.path.realpath(root) for root in roots)
    pid = os.getpid()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _NETWORK and event not in _WRITES:
            return
        try:
            wrong = violation(event, args, roots, own)
        except Exception:  # a shape of arguments not foreseen: not this hook's business
            return
        if wrong is None:
            return
        line = f"{pid} {' '.join(sys.argv)[:200]!r}: {wrong}\n"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode(errors="replace"))
        finally:
            os.close(fd)
        if event in _NETWORK:
            raise Outside(f"test run: no connections past loopback ({wrong})")

    sys.addaudithook(hook)


def install_from_environment() -> None:
    log = os.environ.get(LOG_VARIABLE)
    if log:
        roots = tuple(filter(None, os.environ.get(ROOTS_VARIABLE, "").split(os.pathsep)))
        install(log, roots, frozenset(os.environ.get(OWN_VARIABLE, "").split()))
