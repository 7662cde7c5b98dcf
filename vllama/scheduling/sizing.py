"""What a model's worker takes per device, estimated before its first load: pure.

On a GPU, vLLM is told a share (`--gpu-memory-utilization`, a fraction of the whole GPU) that must
hold the weights, the activations of the largest batch and the KV cache; its CUDA context and
NCCL buffers are allocated before vLLM measures, outside that share. vLLM refuses to start when
the share is larger than the GPU's free memory, and when the KV cache cannot hold one request of
the model's full context, unless `--max-model-len -1` lets it fit the context to the cache. So a
share here is: weights + activations + a KV cache for at least `MIN_CONTEXT` tokens (or the
length the operator fixed), and vLLM fits the context to it; placement reserves the share plus
what lies outside it. On the CPU engine, the KV cache is `VLLM_CPU_KVCACHE_SPACE` and the rest is
the Python processes with torch loaded.

Docs: docs/GPU.md (with the worked example these numbers come from).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec
from vllama.scheduling.devices import DeviceKind

MiB = 1 << 20
GiB = 1 << 30
GPU_CONTEXT = 1 * GiB  # CUDA context and allocator slack per process and GPU, outside the share
NCCL_BUFFERS = 512 * MiB  # per GPU, for a worker spanning several
ACTIVATIONS = 1 * GiB  # the largest batch's activations and sampler buffers, inside the share
CPU_PROCESSES = 2 * GiB  # the CPU engine's three Python processes with torch (~1.9 GB measured)
MIN_CONTEXT = 8192  # tokens of KV cache a GPU share holds at least, when the config says


@dataclass(frozen=True)
class Estimate:
    devices: int  # how many devices one worker spans
    share: int  # bytes per device inside what vLLM is told it may use
    outside: int  # bytes per device it takes beyond that
    auto_fit: bool = False  # pass `--max-model-len -1`: vLLM fits the context to its KV cache

    @property
    def need(self) -> int:
        """What placement reserves per device."""
        return self.share + self.outside


def estimate(spec: ModelSpec, facts: ModelFacts, kind: DeviceKind, kv_default: int) -> Estimate:
    """A worker's memory per device before it has been measured."""
    args, env = spec.args, spec.env
    if kind == "cpu":
        space = vllm_args.kv_cache_bytes(args, env, on_cpu=True)
        return Estimate(1, facts.weight_bytes + (space or kv_default), CPU_PROCESSES)
    shards = vllm_args.weight_shards(args)
    gpus = vllm_args.gpus_per_worker(args)
    outside = GPU_CONTEXT + (NCCL_BUFFERS if gpus > 1 else 0)
    if spec.ray is not None:  # Ray places the workers; this host counts one (the driver's node)
        gpus = 1
    fixed_len = vllm_args.max_model_len(args)
    kv = vllm_args.kv_cache_bytes(args, env, on_cpu=False)
    if kv is None:
        per_token = facts.kv_bytes_per_token
        if fixed_len is not None and per_token:
            kv = per_token * fixed_len  # one request of the fixed length must fit
        else:
            context = min(facts.context_length or MIN_CONTEXT, MIN_CONTEXT)
            kv = max(kv_default, (per_token or 0) * context)
    share = facts.weight_bytes // shards + ACTIVATIONS + kv // shards
    return Estimate(gpus, share, outside, auto_fit=not vllm_args.sets_context(args))


def gpu_share(estimate: Estimate, total: int) -> float:
    """The utilization for a share on a GPU of `total` bytes (the caller rounds it down)."""
    return min(max(estimate.share / total, 0.01), 0.95)
