from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil
import pytest

from vllama.scheduling.devices import DeviceError, DeviceMemory, Devices, cuda_visible_devices

G = 1 << 30
ME = os.getpid()
OTHER = 4_000_001  # above any Linux pid_max: never a live process


@dataclass
class MemoryInfo:
    total: int
    free: int
    used: int


@dataclass
class ProcessInfo:
    pid: int
    usedGpuMemory: int | None


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """Two 80 GiB GPUs; the test process holds memory on both (unknown amount on gpu:1)."""

    fail_init: bool = False
    fail_queries: bool = False
    calls: list[str] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    free: tuple[int, ...] = (70 * G, 30 * G)
    processes: tuple[tuple[ProcessInfo, ...], ...] = (
        (ProcessInfo(ME, 2 * G), ProcessInfo(OTHER, 5 * G)),
        (ProcessInfo(ME, None), ProcessInfo(ME, 3 * G), ProcessInfo(OTHER, 40 * G)),
    )

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.free)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> MemoryInfo:
        self.threads.add(threading.get_ident())
        if self.fail_queries:
            raise NVMLError("GPU is lost")
        return MemoryInfo(80 * G, self.free[handle], 80 * G - self.free[handle])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> Sequence[ProcessInfo]:
        self.threads.add(threading.get_ident())
        return self.processes[handle]


def test_snapshot_lists_the_host_first_then_each_gpu() -> None:
    devices = Devices(FakeNvml())
    assert devices.gpu_count() == 2
    cpu, gpu0, gpu1 = devices.snapshot()
    assert cpu.id == "cpu" and cpu.kind == "cpu" and cpu.index is None
    assert cpu.total == psutil.virtual_memory().total
    assert 0 < cpu.free <= cpu.total
    assert gpu0 == DeviceMemory("gpu:0", "gpu", 0, 80 * G, 70 * G)
    assert gpu1 == DeviceMemory("gpu:1", "gpu", 1, 80 * G, 30 * G)


def test_usage_by_pids_sums_per_device() -> None:
    devices = Devices(FakeNvml())
    before = psutil.Process(ME).memory_info().rss
    usage = devices.usage_by_pids([ME, OTHER + 1])  # a pid that does not exist is skipped
    after = psutil.Process(ME).memory_info().rss
    assert usage["gpu:0"] == 2 * G
    assert usage["gpu:1"] == 3 * G  # None (not reported) counts as 0
    assert min(before, after) * 0.9 <= usage["cpu"] <= max(before, after) * 1.1
    assert set(usage) == {"cpu", "gpu:0", "gpu:1"}


def test_usage_of_no_pids_is_zero_everywhere() -> None:
    assert Devices(FakeNvml()).usage_by_pids([]) == {"cpu": 0, "gpu:0": 0, "gpu:1": 0}


def test_failing_init_means_cpu_only() -> None:
    nvml = FakeNvml(fail_init=True)
    devices = Devices(nvml)
    assert devices.gpu_count() == 0
    assert [d.id for d in devices.snapshot()] == ["cpu"]
    assert set(devices.usage_by_pids([ME])) == {"cpu"}
    devices.close()
    assert nvml.calls == ["init"]  # never initialised, so never shut down


def test_use_gpus_false_never_touches_nvml() -> None:
    nvml = FakeNvml()
    devices = Devices(nvml, use_gpus=False)
    assert devices.gpu_count() == 0
    assert [d.id for d in devices.snapshot()] == ["cpu"]
    assert nvml.calls == []


def test_real_pynvml_without_a_driver_does_not_raise() -> None:
    devices = Devices()
    try:
        snapshot = devices.snapshot()
        assert snapshot[0].id == "cpu"
        assert len(snapshot) == 1 + devices.gpu_count()
    finally:
        devices.close()


def test_close_shuts_nvml_down_once() -> None:
    nvml = FakeNvml()
    devices = Devices(nvml)
    devices.close()
    devices.close()
    assert nvml.calls == ["init", "shutdown"]
    assert devices.gpu_count() == 0
    assert [d.id for d in devices.snapshot()] == ["cpu"]


def test_query_failure_after_init_raises_device_error() -> None:
    devices = Devices(FakeNvml(fail_queries=True))
    with pytest.raises(DeviceError, match="gpu:0"):
        devices.snapshot()


async def test_async_variants_run_off_the_event_loop_thread() -> None:
    nvml = FakeNvml()
    devices = Devices(nvml)
    snapshot = await devices.snapshot_async()
    assert [d.id for d in snapshot] == ["cpu", "gpu:0", "gpu:1"]
    usage = await devices.usage_by_pids_async({ME})
    assert usage["gpu:0"] == 2 * G
    assert nvml.threads and threading.get_ident() not in nvml.threads


def test_cuda_visible_devices() -> None:
    assert cuda_visible_devices([0, 2]) == "0,2"
    assert cuda_visible_devices([3]) == "3"
    assert cuda_visible_devices([]) == ""
