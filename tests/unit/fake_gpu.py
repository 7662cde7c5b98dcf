"""GPUs that accept a worker only as vLLM 0.32 would, for placement tests that can fail.

The rules and their formulas, read from vLLM 0.32's code (see docs/GPU.md):
- the CUDA context (and NCCL buffers, for a worker spanning GPUs) is allocated first, outside
  the share (CUDA out of memory when there is no room even for that);
- `request_memory` (v1/worker/utils.py): free memory must be at least total x utilization
  (0.92 when none is given, also with `--kv-cache-memory-bytes`), else "Free memory on device
  ... is less than desired GPU memory utilization"; the total is CUDA's (`cudaMemGetInfo`),
  NVML's less the driver's reserve;
- the KV cache (`determine_available_memory`) is the share minus the weights, the non-torch
  memory made after the snapshot, the profile run's transient peak (the larger of a prefill of
  `max_num_batched_tokens` and the sampler over `max_num_seqs` x vocab, with vLLM's defaults by
  GPU size) and the CUDA-graph estimate (none with `--enforce-eager`), or exactly
  `--kv-cache-memory-bytes`; none left: "No available memory for the cache blocks";
- `_check_enough_kv_cache_memory` (v1/core/kv_cache_utils.py): the KV cache, less the null block,
  must hold one request of the max model length in 16-token blocks, unless `--max-model-len -1`
  fits the length to the cache; an MLA cache is whole on each tensor-parallel GPU;
- level-1 sleep frees the share but the CUDA-graph pool (kept unless
  `--sleep-mode-offload-cudagraph`) and keeps the context; waking allocates it again, failing
  without room.
The fake's own costs differ from vllama's estimates on purpose (a context of 600 MiB, not the
1 GiB vllama assumes; a smaller graph pool and sampler), as a real GPU's do.
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
NON_TORCH = 600 * MiB
GRAPHS = 900 * MiB
SAMPLER_BYTES = 20  # per row x vocab entry
BLOCK = 16
RESERVED = 470 * MiB  # an H100's: NVML's total less CUDA's


class EngineRefused(Exception):
    """What vLLM would print before exiting."""


@dataclass(frozen=True)
class FakeModel:
    weights: int
    kv_per_token: int = 0
    context: int = 4096
    vocab: int = 32_000
    hidden: int = 2048
    inner: int = 5632
    mla: bool = False  # the latent cache is whole on each tensor-parallel GPU

    def facts(self) -> ModelFacts:
        return ModelFacts(
            weight_bytes=self.weights,
            kv_bytes_per_token=self.kv_per_token or None,
            context_length=self.context,
            warm_up=("/v1/completions", (("prompt", "hi"), ("max_tokens", 1))),
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.inner,
            kv_replicated=self.mla,
        )

    def peak(self, cuda_total: int, args: Sequence[str]) -> int:
        """The profile run's transient peak, with vLLM's batch defaults for the GPU's size."""
        seqs, tokens = (1024, 8192) if cuda_total >= 70 * GiB else (256, 2048)
        seqs = vllm_args.int_flag(args, vllm_args.MAX_NUM_SEQS) or seqs
        tokens = vllm_args.int_flag(args, vllm_args.MAX_BATCHED_TOKENS) or tokens
        prefill = tokens * (4 * self.hidden + 3 * self.inner) * 2
        return max(prefill, seqs * self.vocab * SAMPLER_BYTES)


@dataclass
class _Process:
    visible: list[int]
    context: int  # per device, kept while asleep
    share: int  # per device, freed while asleep (but `kept`)
    kept: int = 0  # of the share, what level-1 sleep leaves on the GPU (the graph pool)
    asleep: bool = False
    max_model_len: int = 0


@dataclass
class FakeGpuHost:
    totals: tuple[int, ...]
    hide_pids: bool = False  # a container's PID namespace: NVML lists no pid of ours
    reserved: int = RESERVED  # per GPU: NVML's total less CUDA's
    report_reserved: bool = True  # NVML's v2 memory query answers (drivers since 510)
    surprise: int = 0  # non-torch memory beyond the usual, as an unusual attention backend takes
    processes: dict[int, _Process] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # what happened, in order
    reports: dict[int, list[str]] = field(default_factory=dict)  # pid -> vLLM's memory lines
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(10_000))

    def free(self, gpu: int) -> int:
        """Free memory, the same to NVML and CUDA (both leave the reserve out)."""
        used = sum(
            p.context + (p.kept if p.asleep else p.share)
            for p in self.processes.values()
            if gpu in p.visible
        )
        return self.totals[gpu] - self.reserved - used

    def cuda_total(self, gpu: int) -> int:
        return self.totals[gpu] - self.reserved

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
            requested = math.ceil(self.cuda_total(i) * utilization)
            if self.free(i) - context < requested:
                raise EngineRefused(
                    f"Free memory on device cuda:{i} ({gib(self.free(i) - context)}/"
                    f"{gib(self.cuda_total(i))} GiB) on startup is less than desired GPU "
                    f"memory utilization ({utilization}, {gib(requested)} GiB)"
                )
        shards = vllm_args.weight_shards(args)
        smallest = min(self.cuda_total(i) for i in visible)
        requested = math.ceil(smallest * utilization)
        weights = model.weights // shards
        graphs = 0 if vllm_args.has_flag(args, vllm_args.ENFORCE_EAGER) else GRAPHS
        non_kv = weights + NON_TORCH + self.surprise + model.peak(smallest, args) + graphs
        fixed_kv = vllm_args.kv_cache_bytes(args, env, on_cpu=False)
        kv = fixed_kv if fixed_kv is not None else requested - non_kv
        if kv <= 0:
            raise EngineRefused("No available memory for the cache blocks")
        per_token = max(model.kv_per_token // (1 if model.mla else shards), 1)
        usable = kv - BLOCK * per_token  # the null block
        length_text = vllm_args.flag_value(args, vllm_args.MAX_MODEL_LEN)
        if length_text == vllm_args.AUTO_FIT:
            length = min(model.context, usable // (BLOCK * per_token) * BLOCK)
            if length <= 0:
                raise EngineRefused("Cannot auto-fit max_model_len: not enough GPU memory")
        else:
            length = int(length_text) if length_text else model.context
            needed = math.ceil(length / BLOCK) * BLOCK * per_token
            if needed > usable:
                raise EngineRefused(
                    f"To serve at least one request with the model's max seq len ({length}), "
                    f"({gib(needed)} GiB KV cache is needed, which is larger than the "
                    f"available KV cache memory ({gib(usable)} GiB). Try increasing "
                    "`gpu_memory_utilization`"
                )
        share = non_kv + kv if fixed_kv is not None else requested
        kept = 0 if vllm_args.has_flag(args, vllm_args.OFFLOAD_GRAPHS_IN_SLEEP) else graphs
        pid = next(self._pids)
        self.processes[pid] = _Process(visible, context, share, kept, max_model_len=length)
        self.reports[pid] = [
            f"INFO Model loading took {gib(weights)} GiB memory and 3.1 seconds",
            f"INFO Estimated CUDA graph memory: {graphs / GiB:.2f} GiB total",
            f"INFO Available KV cache memory: {gib(kv)} GiB",
            f"INFO GPU KV cache size: {usable // per_token:,} tokens",
        ]
        return pid, length

    def stop(self, pid: int, name: str = "") -> None:
        self.log.append(f"stop {name}")
        self.processes.pop(pid, None)

    def sleep(self, pid: int) -> None:
        self.processes[pid].asleep = True

    def wake(self, pid: int) -> None:
        process = self.processes[pid]
        if any(self.free(i) < process.share - process.kept for i in process.visible):
            raise EngineRefused("CUDA error: out of memory (waking)")
        process.asleep = False

    def usage(self, pid: int) -> dict[str, int]:
        process = self.processes.get(pid)
        if process is None or self.hide_pids:
            return {}
        held = process.context + (process.kept if process.asleep else process.share)
        return {f"gpu:{i}": held for i in process.visible}


def gib(n: int) -> str:
    """As vLLM prints bytes (`format_gib`)."""
    return f"{round(n / GiB, 2)}"


class FakeGpuDevices(Devices):
    """The devices boundary over a FakeGpuHost, answered on the event loop (no thread hops)."""

    def __init__(self, host: FakeGpuHost) -> None:
        super().__init__(use_gpus=False)
        self.host = host
        self._count = len(host.totals)

    def snapshot(self) -> list[DeviceMemory]:
        devices = [DeviceMemory("cpu", "cpu", None, 64 * GiB, 64 * GiB)]
        for i, total in enumerate(self.host.totals):
            reserved = self.host.reserved if self.host.report_reserved else None
            devices.append(DeviceMemory(f"gpu:{i}", "gpu", i, total, self.host.free(i), reserved))
        return devices

    async def snapshot_async(self) -> list[DeviceMemory]:
        return self.snapshot()

    async def usage_by_tree_async(self, root: int) -> dict[str, int]:
        return {"cpu": 0, **self.host.usage(root)}
