"""Reading weights ahead (vllama/engine/page_cache.py): what it reads, what it leaves alone, and
that the pages are in the page cache afterwards (mincore over a mapping of the file)."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

import pytest

from vllama.engine import page_cache
from vllama.engine.page_cache import CHUNK, NICE, read_ahead, warm

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)


def resident_fraction(file: Path) -> float:
    """Of the file's pages, the share in the page cache now (mincore(2))."""
    size = file.stat().st_size
    with file.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        pages = (size + PAGE - 1) // PAGE
        vector = (ctypes.c_ubyte * pages)()
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        resident = sum(byte & 1 for byte in vector)
        del address  # the buffer export must go before the mapping closes
    return resident / pages


def written(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    with path.open("rb") as f:
        os.fsync(f.fileno())  # a dirty page cannot be dropped
    return path


def evicted(file: Path) -> Path:
    with file.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if resident_fraction(file) > 0.5:
        pytest.skip("this file system keeps the file's pages (tmpfs?): nothing to read ahead")
    return file


def test_every_weight_file_is_read_into_the_page_cache(tmp_path: Path) -> None:
    files = [written(tmp_path / f"model-0000{n}.safetensors", 3 * CHUNK + 123) for n in (1, 2)]
    for file in files:
        evicted(file)
    warmed = warm([str(f) for f in files], available=1 << 40)
    assert warmed.read == 2 * (3 * CHUNK + 123) and not warmed.skipped
    assert [resident_fraction(f) for f in files] == [1.0, 1.0]


def test_weights_larger_than_half_the_available_memory_are_left_alone(tmp_path: Path) -> None:
    file = evicted(written(tmp_path / "model.safetensors", 1 << 20))
    warmed = warm([str(file)], available=(1 << 21) - 1)
    assert warmed.read == 0 and "available" in warmed.skipped
    assert resident_fraction(file) < 0.5


def test_missing_files_and_a_stop_end_the_reading(tmp_path: Path) -> None:
    assert warm([str(tmp_path / "gone.safetensors")]).skipped == "no weight files on disk"
    file = written(tmp_path / "model.safetensors", 2 * CHUNK)
    stop = threading.Event()
    stop.set()
    assert warm([str(file)], stop, available=1 << 40).read == 0


async def test_the_reading_thread_yields_to_everything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    priorities: list[int] = []
    real_warm = page_cache.warm

    def spied(files: list[str], stop: threading.Event) -> page_cache.Warmed:
        priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_warm(files, stop, available=1 << 40)

    monkeypatch.setattr(page_cache, "warm", spied)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    file = written(tmp_path / "model.safetensors", CHUNK + 1)
    warmed = await read_ahead([str(file)], threading.Event())
    assert warmed.read == CHUNK + 1
    assert priorities == [NICE]  # its own thread, at the lowest priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # not the loop's
