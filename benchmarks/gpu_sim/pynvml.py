"""A simulated GPU behind pynvml's names, for running benchmarks/gpu_check.py where there is none.

Only for the check's dry run (`gpu_check.py --simulate`): this folder goes first on the path of
the check, the daemon and the stand-in, so all three read one GPU whose memory lives in a JSON file
(`GPU_SIM_STATE`): its total, the driver's reserve, and the bytes each live process holds, which
the stand-in (`gpu_standin.py`'s simulated backend) adds and removes. Dead processes hold nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

nvmlMemory_v2 = 0x02000028
GiB = 1 << 30


class NVMLError(Exception):
    pass


@dataclass
class _Memory:
    total: int
    free: int
    used: int
    reserved: int = 0


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int


def _path() -> str:
    path = os.environ.get("GPU_SIM_STATE")
    if not path:
        raise NVMLError("GPU_SIM_STATE is not set")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def state(write: bool = False) -> Iterator[dict[str, Any]]:
    """The simulated GPU's state, locked; saved again when `write`."""
    path = _path()
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path) as handle:
            data: dict[str, Any] = json.load(handle)
        data["alloc"] = {p: n for p, n in data["alloc"].items() if _alive(int(p))}
        yield data
        if write:
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, path)


def create(path: str, total: int, reserved: int) -> None:
    with open(path, "w") as handle:
        json.dump({"total": total, "reserved": reserved, "alloc": {}}, handle)


def nvmlInit() -> None:
    _path()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if index != 0:
        raise NVMLError(f"no GPU {index}")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return "Simulated GPU"


def nvmlDeviceGetMemoryInfo(handle: int, version: int | None = None) -> _Memory:
    with state() as data:
        used = sum(data["alloc"].values())
        total, reserved = data["total"], data["reserved"]
    # As NVML does: v1's used counts the reserve; both leave it out of free.
    if version == nvmlMemory_v2:
        return _Memory(total, total - reserved - used, used, reserved)
    return _Memory(total, total - reserved - used, used + reserved)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[_Process]:
    with state() as data:
        return [_Process(int(pid), n) for pid, n in data["alloc"].items() if n > 0]
