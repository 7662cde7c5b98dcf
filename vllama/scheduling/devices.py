"""Memory measurement: host RAM through psutil, GPUs through NVML. The only effects of placement.

Kept thin on purpose: the real calls are the few `psutil`/`nvml*` lines below, and NVML comes in
through the `Nvml` protocol so tests pass a fake. Everything here is synchronous and quick but
blocking (NVML takes a driver lock); the `*_async` variants run it in a thread so the event loop
never waits on the driver.

NVML numbers GPUs in PCI bus order; CUDA, by default, fastest first. A worker must run with
`CUDA_DEVICE_ORDER=PCI_BUS_ID` for `cuda_visible_devices()` to name the GPUs measured here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import psutil
import structlog

log = structlog.get_logger("vllama.devices")


DeviceKind = Literal["cpu", "gpu"]


class DeviceError(Exception):
    """An NVML query failed after NVML had started (a GPU lost, a driver reloaded)."""


@dataclass(frozen=True)
class DeviceMemory:
    id: str  # "cpu", "gpu:0", "gpu:1", ...
    kind: DeviceKind
    index: int | None  # NVML index of a GPU; None for the host
    total: int  # bytes
    free: int  # bytes measured free now (host: "available", which counts reclaimable cache)
    # NVML's total less CUDA's (the driver's reserve, NVML v2); None where NVML does not say.
    reserved: int | None = None
    model: str = ""  # the GPU's product name (NVML), "" where unknown


class NvmlMemoryInfo(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def free(self) -> int: ...
    @property
    def used(self) -> int: ...


class NvmlProcessInfo(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def usedGpuMemory(self) -> int | None: ...  # None where the driver cannot tell


class Nvml(Protocol):
    """The part of `pynvml` vllama uses; the module itself satisfies it."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> NvmlMemoryInfo: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Sequence[NvmlProcessInfo]: ...


class Devices:
    def __init__(self, nvml: Nvml | None = None, use_gpus: bool = True) -> None:
        self._nvml: Nvml | None = None
        self._count = 0
        if not use_gpus:
            return
        try:
            lib = nvml if nvml is not None else _import_pynvml()
            lib.nvmlInit()
        except Exception as exc:
            # No library, no driver, no device: a CPU-only host, not an error.
            log.info("no GPUs: NVML unavailable", error=str(exc) or type(exc).__name__)
            return
        try:
            count = int(lib.nvmlDeviceGetCount())
        except Exception as exc:
            log.warning("no GPUs: NVML cannot count devices", error=str(exc))
            with contextlib.suppress(Exception):
                lib.nvmlShutdown()
            return
        self._nvml = lib
        self._count = count
        log.info("NVML ready", gpus=count)

    def gpu_count(self) -> int:
        return self._count

    def snapshot(self) -> list[DeviceMemory]:
        """Host memory first, then each GPU by NVML index."""
        host = psutil.virtual_memory()
        devices = [DeviceMemory("cpu", "cpu", None, host.total, host.available)]
        for index, nvml, handle in self._gpus():
            with _nvml_errors(index):
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                total, free = int(info.total), int(info.free)
            reserved = _reserved(nvml, handle)
            name = _product(nvml, handle)
            devices.append(DeviceMemory(f"gpu:{index}", "gpu", index, total, free, reserved, name))
        return devices

    def usage_by_pids(self, pids: Collection[int]) -> dict[str, int]:
        """Bytes used by these processes on every device ("cpu" and each GPU, zeros included).

        Pass a worker's whole process tree: vLLM's memory sits in its engine processes, not in
        the API server. Host memory is RSS, so pages shared between the tree's processes count
        once per process: an over-estimate, which is the safe side for placement. NVML reports
        host PIDs; in a container with its own PID namespace they do not match.
        """
        wanted = set(pids)
        usage = {"cpu": 0}
        for index, nvml, handle in self._gpus():
            with _nvml_errors(index):
                processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                usage[f"gpu:{index}"] = sum(
                    p.usedGpuMemory or 0 for p in processes if p.pid in wanted
                )
        for pid in wanted:
            try:
                usage["cpu"] += psutil.Process(pid).memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # gone since the caller listed it, or not ours to read
        return usage

    def usage_by_tree(self, root: int) -> dict[str, int]:
        """`usage_by_pids` for a process and all its descendants (a worker's tree)."""
        try:
            parent = psutil.Process(root)
            pids = [root, *(child.pid for child in parent.children(recursive=True))]
        except psutil.Error:
            pids = []
        return self.usage_by_pids(pids)

    async def snapshot_async(self) -> list[DeviceMemory]:
        return await asyncio.to_thread(self.snapshot)

    async def usage_by_pids_async(self, pids: Collection[int]) -> dict[str, int]:
        return await asyncio.to_thread(self.usage_by_pids, frozenset(pids))

    async def usage_by_tree_async(self, root: int) -> dict[str, int]:
        return await asyncio.to_thread(self.usage_by_tree, root)

    async def worker_usage(
        self, pid: int | None, devices: Sequence[str], footprint: int
    ) -> dict[str, int]:
        """A worker tree's memory per device, measured; a GPU it runs on where NVML sees none of
        its pids (a container) counts `footprint`, what its load took."""
        usage = await self.usage_by_tree_async(pid) if pid else {}
        for device in devices:
            if device != "cpu" and not usage.get(device):
                usage[device] = footprint
        return usage

    def close(self) -> None:
        """Shut NVML down; later snapshots see the host only. Call once queries have finished."""
        nvml, self._nvml, self._count = self._nvml, None, 0
        if nvml is None:
            return
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            log.warning("NVML shutdown failed", error=str(exc))

    def _gpus(self) -> Iterator[tuple[int, Nvml, Any]]:
        nvml = self._nvml
        if nvml is None:
            return
        for index in range(self._count):
            with _nvml_errors(index):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            yield index, nvml, handle


def cuda_visible_devices(indices: Sequence[int]) -> str:
    """`CUDA_VISIBLE_DEVICES` for these NVML indices (see the module note on device order)."""
    return ",".join(str(i) for i in indices)


def _import_pynvml() -> Nvml:
    import pynvml

    return cast(Nvml, pynvml)


def _reserved(nvml: Nvml, handle: Any) -> int | None:
    """The driver's reserve from NVML's v2 memory query (`cudaMemGetInfo`'s total leaves it
    out; vLLM multiplies its utilization by that total). None on drivers without it."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is None:
        return None
    try:
        info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)  # type: ignore[call-arg]
        return int(info.reserved)  # type: ignore[attr-defined]
    except Exception:
        return None


def _product(nvml: Nvml, handle: Any) -> str:
    """The GPU's name ("NVIDIA H100 80GB HBM3"): footprints learned on one kind hold for it."""
    get_name = getattr(nvml, "nvmlDeviceGetName", None)
    if get_name is None:
        return ""
    try:
        name = get_name(handle)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return ""


@contextlib.contextmanager
def _nvml_errors(index: int) -> Iterator[None]:
    # Callers catch one vllama error rather than import pynvml for its exception classes.
    try:
        yield
    except Exception as exc:
        raise DeviceError(f"NVML query for gpu:{index} failed: {exc}") from exc
