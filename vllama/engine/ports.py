"""Ports for workers: taken from a configured range, checked free before use."""

from __future__ import annotations

import socket
from pathlib import Path


class NoFreePort(RuntimeError):
    pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # uvicorn (vLLM's server) binds with SO_REUSEADDR, so a port in TIME_WAIT is usable by it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class PortAllocator:
    def __init__(self, low: int, high: int, host: str = "127.0.0.1") -> None:
        self._low = low
        self._high = high
        self._host = host
        self._taken: set[int] = set()
        self._next = low

    def acquire(self) -> int:
        # Round-robin from the last port handed out, so a port just released (whose old process
        # may still be closing) is the last to be reused.
        span = self._high - self._low + 1
        for offset in range(span):
            port = self._low + (self._next - self._low + offset) % span
            if port in self._taken or not port_is_free(self._host, port):
                continue
            self._taken.add(port)
            self._next = port + 1 if port < self._high else self._low
            return port
        raise NoFreePort(f"no free port in {self._low}-{self._high} on {self._host}")

    def release(self, port: int) -> None:
        self._taken.discard(port)


EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_range(path: str = EPHEMERAL_RANGE_FILE) -> tuple[int, int] | None:
    """The ports the kernel hands out to outgoing connections (Linux), or None if unknown."""
    try:
        low, high = (int(part) for part in Path(path).read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def ephemeral_overlap(
    low: int, high: int, ephemeral: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The part of the worker port range the kernel may give any outgoing connection: a worker
    then finds its port taken at random (it is started again on the next one, at a cost)."""
    if ephemeral is None:
        return None
    start, end = max(low, ephemeral[0]), min(high, ephemeral[1])
    return (start, end) if start <= end else None
