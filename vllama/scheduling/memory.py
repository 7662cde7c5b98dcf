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
from dataclasses import asdict, dataclass, field, replace

import structlog

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec, ServerSettings
from vllama.engine.vllm_report import StartReport
from vllama.scheduling import footprints
from vllama.scheduling.devices import DeviceKind, Devices, cuda_visible_devices
from vllama.scheduling.footprints import Footprints
from vllama.scheduling.placement import DeviceState, LoadedModel, Request, Snapshot
from vllama.scheduling.sizing import (
    MAX_SHARE,
    Estimate,
    cuda_total,
    estimate,
    gpu_share,
    kv_target,
    reserved_for,
)

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
    free_before: dict[str, int] = field(default_factory=dict)  # measured just before the start


class MemoryPlanner:
    def __init__(
        self,
        settings: ServerSettings,
        devices: Devices,
        learned: Footprints | None = None,
    ) -> None:
        self._settings = settings
        self._devices = devices
        self._learned = learned if learned is not None else Footprints()
        self._gpu_kind = ""  # the GPUs' product name (and size), from the last snapshot
        self._measured: dict[str, int] = {}  # model -> bytes per device, from its last load
        self._totals: dict[str, int] = {}  # device -> NVML's total bytes, from the last snapshot
        self._cuda_totals: dict[str, int] = {}  # device -> the total vLLM's utilization is of
        self._extra: dict[str, int] = {}  # model -> bytes vLLM's memory refusal added to its share
        self.kind: DeviceKind = "gpu" if devices.gpu_count() else "cpu"
        self._reserved = settings.memory_reserved_cpu

    # -- what a model needs ------------------------------------------------------------------

    def estimate(self, spec: ModelSpec, facts: ModelFacts, name: str = "") -> Estimate:
        """The estimate, grown by what vLLM's refusal of this model's share said was missing.
        GPUs' sizes (vLLM's batch defaults follow them) come from the last snapshot."""
        gpu_total = min(self._cuda_totals.values()) if self._cuda_totals else None
        planned = estimate(spec, facts, self.kind, self._settings.kv_cache, gpu_total)
        known = self._learned.get(self._key(spec)) if self.kind == "gpu" else None
        if known is not None:  # what vLLM reported last time, not the estimate
            kv = kv_target(spec, facts, self._settings.kv_cache)
            graphs = known.graphs if known.graphs is not None else planned.graphs
            planned = replace(planned, share=footprints.share_for(known, kv), graphs=graphs)
        extra = self._extra.get(name, 0)
        return replace(planned, share=planned.share + extra) if extra else planned

    def _key(self, spec: ModelSpec) -> str:
        return footprints.key(spec.model, spec.args, spec.env, self._gpu_kind)

    def learn(self, name: str, spec: ModelSpec, share: Share, report: StartReport) -> None:
        """Keep what vLLM reported about a start in `share` for the model's next shares."""
        if self.kind != "gpu" or not share.devices:
            return
        told = vllm_args.flag_value(spec.args, vllm_args.GPU_SHARE) or vllm_args.flag_value(
            share.args, vllm_args.GPU_SHARE
        )
        try:
            utilization = float(told) if told is not None else 0.92  # vLLM's default
        except ValueError:
            return
        total = min(self._cuda_totals.get(d, 0) for d in share.devices)
        footprint = footprints.learn(report, utilization, total) if total else None
        if footprint is None:
            return
        self._extra.pop(name, None)  # the measurement holds what the refusal added
        self._learned.put(self._key(spec), footprint)
        log.info("model footprint learned from vLLM", model=name, **asdict(footprint))

    def grow(self, name: str, extra: int) -> None:
        """vLLM refused the model's share for want of `extra` bytes: its next shares hold them."""
        self._extra[name] = self._extra.get(name, 0) + extra
        self._measured.pop(name, None)

    def request(self, name: str, spec: ModelSpec, facts: ModelFacts) -> Request:
        planned = self.estimate(spec, facts, name)
        if self.kind == "gpu" and spec.ray is not None and self._totals:
            # Ray puts its workers on any of this host's GPUs (a placement group of GPU
            # bundles; CUDA_VISIBLE_DEVICES is not passed on), GPUs that vllama gave other models
            # included: a Ray model has this host's GPUs to itself, and they it.
            limit = self._settings.memory_limit_gpu
            whole = min(self._cuda_totals.values())  # all a GPU has free with nothing on it
            return Request(
                name=name,
                kind=self.kind,
                device_count=len(self._totals),
                need=min(limit, whole) if limit is not None else whole,
            )
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
        planned = self.estimate(spec, facts, name)
        if self.kind != "gpu" or not self._totals:
            return planned.need
        largest = max(self._totals.values())  # uniform on most hosts; the safe side if not
        operator_share = vllm_args.flag_value(spec.args, vllm_args.GPU_SHARE)
        if operator_share is not None:
            try:  # the operator's own utilization
                return math.ceil(float(operator_share) * largest) + planned.outside
            except ValueError:
                return planned.need
        utilization = gpu_share(planned.share, min(self._cuda_totals.values()))
        return reserved_for(utilization, largest, planned.outside)

    def residue(self, name: str, spec: ModelSpec, facts: ModelFacts) -> int:
        """Bytes per device a worker keeps in level-1 sleep: its context, NCCL and, unless
        offloaded, the CUDA-graph pool."""
        planned = self.estimate(spec, facts, name)
        if vllm_args.has_flag(spec.args, vllm_args.OFFLOAD_GRAPHS_IN_SLEEP):
            return planned.outside
        return planned.residue

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
        self._totals = {d.id: d.total for d in memory if d.kind == "gpu"}
        gpus = [d for d in memory if d.kind == "gpu"]
        if gpus:
            self._gpu_kind = f"{gpus[0].model or 'GPU'} {gpus[0].total}"
        self._cuda_totals = {
            d.id: cuda_total(d.total, d.reserved) for d in memory if d.kind == "gpu"
        }
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
        self,
        spec: ModelSpec,
        facts: ModelFacts,
        devices: tuple[str, ...],
        need: int,
        name: str = "",
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
        planned = self.estimate(spec, facts, name)
        args: tuple[str, ...] = ()
        if not vllm_args.has_flag(spec.args, vllm_args.GPU_SHARE):
            # Always a share, even with --kv-cache-memory-bytes: vLLM checks free memory against
            # its utilization (0.92 by default) at start, and a second model would fail that.
            total = min(self._cuda_totals[device] for device in devices)
            args = vllm_args.gpu_share_args(min(gpu_share(planned.share, total), MAX_SHARE))
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
