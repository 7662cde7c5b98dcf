"""Reading a model's weight files into the page cache while its load waits and its engine imports.

A vLLM start spends its first seconds (on these machines, most of them) importing, profiling and
waiting for room; only then does it read the weights. Read cold from disk, a 16 GB model takes
tens of seconds more at a few hundred MB/s. Reading the files ahead, in a thread that starts with
the load, overlaps that read with everything before it: by the time vLLM maps the files, their
pages are in memory. Read, not `posix_fadvise(WILLNEED)`: the advice is asynchronous with no end
to wait on, and measured here it had read a fraction of an 800 MB file three seconds later.

The page cache is memory the kernel takes back when it needs it, so this never holds memory;
still, weights larger than half of what the host has available are not read (they would push
out other models' pages, and would not all stay cached until vLLM reads them).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil

CHUNK = 8 << 20  # bytes per read: large enough that syscalls cost nothing next to the copy
# Reading ahead is a bet on the future and must not slow the start it is for: measured on a busy
# 2-core machine, a load (whose engine imports run while the weights are read) came out no faster
# end to end though vLLM's weight loading was 5-7 s shorter, while swaps gained. Its thread runs
# at the lowest CPU priority (and so, where the I/O scheduler derives one, the lowest I/O
# priority), in a pool of its own: an unprivileged thread cannot raise its priority again.
NICE = 19


@dataclass(frozen=True)
class Warmed:
    read: int  # bytes read (0 when skipped)
    seconds: float
    skipped: str = ""  # why nothing was read, when nothing was


_pool: ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)  # this thread only
    except OSError:
        pass  # a seccomp filter that refuses it: the read goes on at the daemon's priority


async def read_ahead(files: Sequence[str], stop: threading.Event) -> Warmed:
    """`warm` in the reading thread (one read at a time: they share the disk anyway)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, "vllama-read-ahead", initializer=_lower_priority)
    return await asyncio.get_running_loop().run_in_executor(_pool, warm, files, stop)


def warm(
    files: Sequence[str], stop: threading.Event | None = None, available: int | None = None
) -> Warmed:
    """Blocking: read every byte of `files` once (the pages stay cached); stops early when
    `stop` is set. `available`: the host's available memory (measured when None)."""
    started = time.monotonic()
    stop = stop or threading.Event()
    total = sum(_size(name) for name in files)
    if total == 0:
        return Warmed(0, 0.0, "no weight files on disk")
    if available is None:
        available = psutil.virtual_memory().available
    if total > available // 2:
        return Warmed(0, 0.0, f"{total} bytes of weights, {available} bytes available")
    view = memoryview(bytearray(CHUNK))
    done = 0
    for name in files:
        if stop.is_set():
            break
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger readahead
            while not stop.is_set() and (n := os.readv(fd, [view])) > 0:
                done += n
        except OSError:
            pass  # a file that cannot be read is vLLM's error to report, not ours
        finally:
            os.close(fd)
    return Warmed(done, time.monotonic() - started)


def _size(name: str) -> int:
    try:
        return os.stat(name).st_size
    except OSError:
        return 0
