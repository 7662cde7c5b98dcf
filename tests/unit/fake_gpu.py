"""GPUs that accept a worker only as vLLM 0.32 would, for placement tests that can fail.

The rules and their formulas, read from vLLM 0.32's code (see docs/GPU.md):
- the CUDA context (and NCCL buffers, for a worker spanning GPUs) is allocated first, outside
  the share (CUDA out of memory when there is no room even for that);
- `request_memory` (v1/worker/utils.py): free memory must be at least total x utilization
  (0.92 when none is given, also with `--kv-cache-memory-bytes`), else "Free memory on device
  ... is less than desired GPU memory utilization";
- the KV cache is the share minus weights and the profiled activations (or exactly
  `--kv-cache-memory-bytes`); none left: "No available memory for the cache blocks";
- `_check_enough_kv_cache_memory` (v1/core/kv_cache_utils.py): the KV cache must hold one request
  of the max model length, unless `--max-model-len -1` fits the length to the cache;
- level-1 sleep frees the share and keeps the context; waking allocates it again, failing
  without room.
The fake's own costs differ from vllama's estimates on purpose (a context of 600 MiB, not the
1 GiB vllama assumes), as a real GPU's do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.scheduling.devices import DeviceMemory, Devices

MiB, GiB = 1 << 20, 1 << 30
CONTEXT = 600 * MiB
NCCL = 400 * MiB
ACTIVATIONS = 768 * MiB


class EngineRefused(Exception):
    """What vLLM would print before exiting."""


@dataclass(frozen=True)
class FakeModel:
    weights: int
    kv_per_token: int = 0
    context: int = 4096

    def facts(self) -> ModelFacts:
        return ModelFacts(
            weight_bytes=self.weights,
            kv_bytes_per_token=self.kv_per_token or None,
            context_length=self.context,
            warm_up=("/v1/completions", (("prompt", "hi"), ("max_tokens", 1))),
        )


@dataclass
class _Process:
    visible: list[int]
    context: int  # per device, kept while asleep
    share: int  # per device, freed while asleep
    asleep: bool = False
    max_model_len: int = 0


@dataclass
class FakeGpuHost:
    totals: tuple[int, ...]
    hide_pids: bool = False  # a container's PID namespace: NVML lists no pid of ours
    processes: dict[int, _Process] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # what happened, in order
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(10_000))

    def free(self, gpu: int) -> int:
        used = sum(
            p.context + (0 if p.asleep else p.share)
            for p in self.processes.values()
            if gpu in p.visible
        )
        return self.totals[gpu] - used

    def start(
        self, model: FakeModel, args: Sequence[str], env: Mapping[str, str], name: str = ""
    ) -> tuple[int, int]:
        """Start an engine; (its pid, the max model length it serves), or EngineRefused."""
        self.log.append(f"start {name}")
        visible = [int(i) for i in env.get("CUDA_VISIBLE_DEVICES", "0").split(",") if i]
        if len(visible) < vllm_args.gpus_per_worker(args):
            raise EngineRefused("world size is larger than the number of visible GPUs")
        context = CONTEXT + (NCCL if len(visible) > 1 else 0)
        if any(self.free(i) < context for i in visible):
            raise EngineRefused("CUDA error: out of memory (creating the context)")
        share_text = vllm_args.flag_value(args, vllm_args.GPU_SHARE)
        utilization = float(share_text) if share_text is not None else 0.92
        for i in visible:
            requested = math.ceil(self.totals[i] * utilization)
            if self.free(i) - context < requested:
                raise EngineRefused(
                    f"Free memory on device cuda:{i} ({(self.free(i) - context) / GiB:.2f}/"
                    f"{self.totals[i] / GiB:.2f} GiB) on startup is less than desired GPU "
                    f"memory utilization ({utilization}, {requested / GiB:.2f} GiB)"
                )
        shards = vllm_args.weight_shards(args)
        requested = math.ceil(min(self.totals[i] for i in visible) * utilization)
        weights = model.weights // shards
        fixed_kv = vllm_args.kv_cache_bytes(args, env, on_cpu=False)
        kv = fixed_kv if fixed_kv is not None else requested - weights - ACTIVATIONS
        if kv <= 0:
            raise EngineRefused("No available memory for the cache blocks")
        per_token = max(model.kv_per_token // shards, 1)
        length_text = vllm_args.flag_value(args, vllm_args.MAX_MODEL_LEN)
        if length_text == vllm_args.AUTO_FIT:
            length = min(model.context, kv // per_token)
            if length <= 0:
                raise EngineRefused("Cannot auto-fit max_model_len: not enough GPU memory")
        else:
            length = int(length_text) if length_text else model.context
            if per_token * length > kv:
                raise EngineRefused(
                    f"To serve at least one request with the model's max seq len ({length}), "
                    f"({per_token * length / GiB:.2f} GiB KV cache is needed, which is larger "
                    f"than the available KV cache memory ({kv / GiB:.2f} GiB)"
                )
        share = weights + ACTIVATIONS + kv if fixed_kv is not None else requested
        pid = next(self._pids)
        self.processes[pid] = _Process(visible, context, share, max_model_len=length)
        return pid, length

    def stop(self, pid: int, name: str = "") -> None:
        self.log.append(f"stop {name}")
        self.processes.pop(pid, None)

    def sleep(self, pid: int) -> None:
        self.processes[pid].asleep = True

    def wake(self, pid: int) -> None:
        process = self.processes[pid]
        if any(self.free(i) < process.share for i in process.visible):
            raise EngineRefused("CUDA error: out of memory (waking)")
        process.asleep = False

    def usage(self, pid: int) -> dict[str, int]:
        process = self.processes.get(pid)
        if process is None or self.hide_pids:
            return {}
        held = process.context + (0 if process.asleep else process.share)
        return {f"gpu:{i}": held for i in process.visible}


class FakeGpuDevices(Devices):
    """The devices boundary over a FakeGpuHost, answered on the event loop (no thread hops)."""

    def __init__(self, host: FakeGpuHost) -> None:
        super().__init__(use_gpus=False)
        self.host = host
        self._count = len(host.totals)

    def snapshot(self) -> list[DeviceMemory]:
        devices = [DeviceMemory("cpu", "cpu", None, 64 * GiB, 64 * GiB)]
        for i, total in enumerate(self.host.totals):
            devices.append(DeviceMemory(f"gpu:{i}", "gpu", i, total, self.host.free(i)))
        return devices

    async def snapshot_async(self) -> list[DeviceMemory]:
        return self.snapshot()

    async def usage_by_tree_async(self, root: int) -> dict[str, int]:
        return {"cpu": 0, **self.host.usage(root)}
