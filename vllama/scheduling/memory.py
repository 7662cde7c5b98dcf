"""Memory planning for loads: estimates, measured footprints, placement arguments, recovery.

Glue between the scheduler (which models run), the pure policy in `placement` (who fits where,
who is evicted) and the measuring boundary in `devices` (NVML, /proc). Nothing here blocks the
event loop: measurements run in a thread.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec, ServerSettings
from vllama.scheduling.devices import DeviceKind, Devices, cuda_visible_devices
from vllama.scheduling.placement import DeviceState, LoadedModel, Request, Snapshot
from vllama.scheduling.sizing import Estimate, estimate, gpu_share

log = structlog.get_logger("vllama.memory")


_RECOVERY_POLL = 0.25


@dataclass(frozen=True)
class Share:
    """What a worker gets on its devices: where it runs, the bytes it may use on each, and the
    arguments and environment that tell vLLM so."""

    devices: tuple[str, ...]
    need: int  # bytes per device
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


class MemoryPlanner:
    def __init__(
        self,
        settings: ServerSettings,
        devices: Devices,
    ) -> None:
        self._settings = settings
        self._devices = devices
        self._measured: dict[str, int] = {}  # model -> bytes per device, from its last load
        self._totals: dict[str, int] = {}  # device -> total bytes, from the last snapshot
        self.kind: DeviceKind = "gpu" if devices.gpu_count() else "cpu"
        self._reserved = settings.memory_reserved_cpu

    # -- what a model needs ------------------------------------------------------------------

    def estimate(self, spec: ModelSpec, facts: ModelFacts) -> Estimate:
        return estimate(spec, facts, self.kind, self._settings.kv_cache)

    def request(self, name: str, spec: ModelSpec, facts: ModelFacts) -> Request:
        planned = self.estimate(spec, facts)
        return Request(
            name=name,
            kind=self.kind,
            device_count=planned.devices,
            need=self.need(name, spec, facts),
        )

    def need(self, name: str, spec: ModelSpec, facts: ModelFacts) -> int:
        """Bytes per device: the last measured footprint, else the estimate."""
        if name in self._measured:
            return self._measured[name]
        planned = self.estimate(spec, facts)
        operator_share = vllm_args.flag_value(spec.args, vllm_args.GPU_SHARE)
        if self.kind == "gpu" and operator_share is not None and self._totals:
            try:  # the operator's own utilization, of the largest GPU (uniform on most hosts)
                share = math.ceil(float(operator_share) * max(self._totals.values()))
            except ValueError:
                share = planned.share
            return share + planned.outside
        return planned.need

    async def free_now(self, devices: tuple[str, ...]) -> dict[str, int]:
        """Free bytes on these devices now (before a load, for `measure`)."""
        return {d.id: d.free for d in await self._devices.snapshot_async() if d.id in devices}

    async def measure(
        self, name: str, pid: int | None, devices: tuple[str, ...], free_before: dict[str, int]
    ) -> int:
        """A ready worker's memory per device, remembered for its next load.

        NVML's per-process figures, when it can see the worker's processes; in a container
        with its own PID namespace it cannot, and then the drop in free memory across the load
        is the measurement (loads on a device are serialized, so nothing else moved it).
        0 means unknown, never "uses nothing".
        """
        if pid is None:
            return 0
        usage = await self._devices.usage_by_tree_async(pid)
        per_device = max((usage.get(device, 0) for device in devices), default=0)
        if per_device == 0 and self.kind == "gpu":
            after = await self.free_now(devices)
            drops = [free_before[d] - after[d] for d in devices if d in free_before and d in after]
            per_device = max(drops, default=0)
            if per_device > 0:
                log.info(
                    "memory measured by free-memory drop (NVML sees no worker pids)", model=name
                )
        if per_device > 0:
            self._measured[name] = per_device
            log.info("model footprint measured", model=name, bytes=per_device, devices=devices)
        return per_device

    # -- devices -----------------------------------------------------------------------------

    async def snapshot(
        self, loaded: Callable[[], tuple[LoadedModel, ...]], spare_bytes: int = 0
    ) -> Snapshot:
        """Devices measured now, and the loaded models as they are once that measurement is in
        (`loaded` is called after the only await, so the caller can act on the snapshot before
        any request changes it). `spare_bytes`: host memory warm spares hold, out of the CPU
        budget."""
        memory = await self._devices.snapshot_async()
        self._totals = {device.id: device.total for device in memory}
        states = []
        for device in memory:
            limit = (
                self._settings.memory_limit_gpu
                if device.kind == "gpu"
                else self._settings.memory_limit_cpu
            )
            budget = min(limit, device.total) if limit is not None else device.total
            free = device.free
            if device.kind == "cpu" and self._reserved is not None:
                # Set aside for vllama: what others use now does not count against it.
                budget = free = self._reserved
            if device.kind == "cpu":
                budget = max(budget - spare_bytes, 0)
            states.append(DeviceState(id=device.id, kind=device.kind, budget=budget, free=free))
        return Snapshot(
            devices=tuple(states), loaded=loaded(), max_loaded=self._settings.max_loaded_models
        )

    def share(
        self, spec: ModelSpec, facts: ModelFacts, devices: tuple[str, ...], need: int
    ) -> Share:
        """Pin the worker to its devices and tell vLLM its share of each GPU, sized against the
        totals of the last `snapshot` (every placement decision takes one), and let it fit the
        context to the KV cache that leaves unless the operator fixed a length."""
        if self.kind == "cpu":
            return Share(devices, need, env=self._cpu_kv_env(spec))
        indices = [int(device.split(":", 1)[1]) for device in devices]
        # PCI bus order is NVML's order; CUDA's default ("fastest first") may differ, and then
        # CUDA_VISIBLE_DEVICES would name other GPUs than the ones measured.
        env = {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": cuda_visible_devices(indices),
        }
        planned = self.estimate(spec, facts)
        args: tuple[str, ...] = ()
        if not vllm_args.has_flag(spec.args, vllm_args.GPU_SHARE):
            # Always a share, even with --kv-cache-memory-bytes: vLLM checks free memory against
            # its utilization (0.92 by default) at start, and a second model would fail that.
            total = min(self._totals[device] for device in devices)
            args = vllm_args.gpu_share_args(gpu_share(planned, total))
        if planned.auto_fit:
            args = (*args, *vllm_args.auto_fit_args())
        return Share(devices, need, args, env)

    def _cpu_kv_env(self, spec: ModelSpec) -> dict[str, str]:
        """The CPU KV cache size, unless the model sets its own."""
        if self.kind != "cpu" or vllm_args.CPU_KV_CACHE_ENV in spec.env:
            return {}
        if vllm_args.has_flag(spec.args, vllm_args.KV_CACHE_BYTES):
            return {}
        return vllm_args.cpu_kv_cache_env(self._settings.kv_cache)

    async def wait_for_memory(self, devices: tuple[str, ...], need: int) -> bool:
        """After evictions: wait until `need` bytes are measured free on each device.

        A stopped tree releases GPU memory asynchronously; starting before it is back makes vLLM
        mis-measure (vLLM #55827). Gives up after `memory_recovery_timeout` (False), and the
        start then proceeds: the budget, not the measurement, is the contract.
        """
        deadline = time.monotonic() + self._settings.memory_recovery_timeout
        measured = [d for d in devices if d != "cpu" or self._reserved is None]
        while True:
            memory = {d.id: d for d in await self._devices.snapshot_async()}
            if all(memory[d].free >= need for d in measured if d in memory):
                return True
            if time.monotonic() >= deadline:
                log.warning("memory not back in time", devices=devices, need=need)
                return False
            await asyncio.sleep(_RECOVERY_POLL)
