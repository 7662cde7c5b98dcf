"""What a model's worker takes per device, estimated before its first load: pure.

On a GPU, vLLM 0.32 is told a share (`--gpu-memory-utilization`, a fraction of the total that
`cudaMemGetInfo` reports, which is smaller than NVML's by the driver's reserve). Before it measures,
it creates the CUDA context and NCCL's buffers: those are outside the share. Inside it go, in the
order vLLM takes them (`v1/worker/gpu_worker.py` `determine_available_memory`): the weights, the
non-torch memory allocated after its snapshot (cuBLAS and attention workspaces), the profile run's
transient peak (a prefill of `max_num_batched_tokens`, then the sampler over `max_num_seqs` rows of
the vocabulary), the CUDA-graph pool it estimates (on by default), and the KV cache, which gets the
rest. The KV cache must hold one request of the max model length plus the block pool's null block,
unless `--max-model-len -1` lets vLLM fit the length to the cache. So a share here is all of that
with a KV cache for at least `MIN_CONTEXT` tokens (or the length the operator fixed), and placement
reserves the share, counted against NVML's total, plus what lies outside it. On the CPU engine,
the KV cache is `VLLM_CPU_KVCACHE_SPACE` and the rest is the Python processes with torch loaded.

These are estimates, on the safe side; once a model has run, what vLLM reported replaces them
(`vllama/scheduling/footprints.py`). Docs: docs/GPU.md (with the worked example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec
from vllama.scheduling.devices import DeviceKind

MiB = 1 << 20
GiB = 1 << 30
GPU_CONTEXT = 1 * GiB  # CUDA context and allocator slack per process and GPU, outside the share
NCCL_BUFFERS = 512 * MiB  # per GPU, for a worker spanning several
NON_TORCH = (
    768 * MiB
)  # cuBLAS(Lt) and attention workspaces made after vLLM's snapshot: in the share
CUDA_GRAPHS = 1536 * MiB  # the decode graphs' pool, which vLLM estimates and takes from the share
SAMPLER_BYTES = 24  # per row x vocab entry: fp32 logits, sorted values and int64 indices, probs
ACTIVATIONS_MIN = 512 * MiB  # the profile run's peak when the config does not say enough
CPU_PROCESSES = 2 * GiB  # the CPU engine's three Python processes with torch (~1.9 GB measured)
MIN_CONTEXT = 8192  # tokens of KV cache a GPU share holds at least, when the config says
BLOCK_SIZE = 16  # vLLM's KV block on CUDA: lengths round up to it, and one block is the null block
# NVML's total less `cudaMemGetInfo`'s, when NVML does not report its reserve: 0.6 % on an H100,
# 1.1 % on an A100 80 GB; 2 % is the safe side.
CUDA_RESERVE_GUESS = 0.02
SHARE_STEP = 10_000  # utilizations are passed with four decimals
MAX_SHARE = 0.95  # the most vllama ever tells vLLM


@dataclass(frozen=True)
class Batch:
    """vLLM's default batch limits for an online server (`engine/arg_utils.py`), by GPU size."""

    max_num_seqs: int
    max_num_batched_tokens: int


def default_batch(gpu_total: int | None) -> Batch:
    """Without a GPU's size, the largest defaults: the profile run's peak grows with them."""
    if gpu_total is None or gpu_total >= 160 * GiB:
        return Batch(1024, 16384)
    if gpu_total >= 70 * GiB:
        return Batch(1024, 8192)
    return Batch(256, 2048)


@dataclass(frozen=True)
class Estimate:
    devices: int  # how many devices one worker spans
    share: int  # bytes per device inside what vLLM is told it may use
    outside: int  # bytes per device it takes beyond that
    auto_fit: bool = False  # pass `--max-model-len -1`: vLLM fits the context to its KV cache
    graphs: int = 0  # of the share, the CUDA-graph pool: it stays on the GPU in level-1 sleep

    @property
    def need(self) -> int:
        """What placement reserves per device, before the share is counted against NVML."""
        return self.share + self.outside

    @property
    def residue(self) -> int:
        """What a worker in level-1 sleep keeps per device: context, NCCL, the graph pool."""
        return self.outside + self.graphs


def profile_peak(facts: ModelFacts, batch: Batch) -> int:
    """The profile run's transient peak: the larger of a prefill's activations and the sampler's
    sort over `max_num_seqs` rows (vLLM runs them one after the other)."""
    vocab, hidden, inner = facts.vocab_size, facts.hidden_size, facts.intermediate_size
    sampler = batch.max_num_seqs * vocab * SAMPLER_BYTES if vocab else 0
    # Per token: a few hidden-sized tensors (residual, norm, attention in and out) and the MLP's
    # gate, up and activated halves, at 2 bytes.
    prefill = batch.max_num_batched_tokens * (6 * hidden + 3 * inner) * 2 if hidden and inner else 0
    return max(sampler, prefill, ACTIVATIONS_MIN)


def kv_for_length(per_token: int, length: int) -> int:
    """The KV cache one request of `length` tokens needs, in whole blocks, plus the null block
    vLLM's block pool holds back (`kv_cache_utils.py` checks against usable blocks)."""
    return (math.ceil(length / BLOCK_SIZE) + 1) * BLOCK_SIZE * per_token


def estimate(
    spec: ModelSpec,
    facts: ModelFacts,
    kind: DeviceKind,
    kv_default: int,
    gpu_total: int | None = None,
) -> Estimate:
    """A worker's memory per device before it has been measured (`gpu_total`: the GPU's size,
    which sets vLLM's default batch limits; unknown, the largest)."""
    args, env = spec.args, spec.env
    if kind == "cpu":
        space = vllm_args.kv_cache_bytes(args, env, on_cpu=True)
        return Estimate(1, facts.weight_bytes + (space or kv_default), CPU_PROCESSES)
    shards = vllm_args.weight_shards(args)
    gpus = vllm_args.gpus_per_worker(args)
    outside = GPU_CONTEXT + (NCCL_BUFFERS if gpus > 1 else 0)
    if spec.ray is not None:  # Ray places the workers; this host counts one (the driver's node)
        gpus = 1
    defaults = default_batch(gpu_total)
    batch = Batch(
        vllm_args.int_flag(args, vllm_args.MAX_NUM_SEQS) or defaults.max_num_seqs,
        vllm_args.int_flag(args, vllm_args.MAX_BATCHED_TOKENS) or defaults.max_num_batched_tokens,
    )
    graphs = 0 if vllm_args.has_flag(args, vllm_args.ENFORCE_EAGER) else CUDA_GRAPHS
    if graphs and env.get(vllm_args.GRAPH_ESTIMATE_ENV) == "0":
        # vLLM captures them all the same, beyond the share it no longer takes them from.
        outside, graphs = outside + graphs, 0
    kv = kv_target(spec, facts, kv_default)
    share = facts.weight_bytes // shards + NON_TORCH + profile_peak(facts, batch) + graphs + kv
    return Estimate(gpus, share, outside, not vllm_args.sets_context(args), graphs)


def kv_target(spec: ModelSpec, facts: ModelFacts, kv_default: int) -> int:
    """The KV cache a GPU share holds per GPU: `--kv-cache-memory-bytes`; else one request of
    the length the operator fixed; else the larger of `kv_default` and `MIN_CONTEXT` tokens."""
    args = spec.args
    kv = vllm_args.kv_cache_bytes(args, spec.env, on_cpu=False)
    if kv is not None:
        return kv
    # MLA's latent cache is one per token whatever the tensor parallelism: each GPU holds all
    # of it. Other caches split by KV heads across tensor-parallel ranks.
    split = 1 if facts.kv_replicated else vllm_args.weight_shards(args)
    per_token = (facts.kv_bytes_per_token or 0) // split
    fixed_len = vllm_args.max_model_len(args)
    if fixed_len is not None and per_token:
        return kv_for_length(per_token, fixed_len)
    context = min(facts.context_length or MIN_CONTEXT, MIN_CONTEXT)
    return max(kv_default // split, kv_for_length(per_token, context))


def cuda_total(nvml_total: int, reserved: int | None) -> int:
    """The total vLLM multiplies its utilization by (`cudaMemGetInfo`): NVML's less the driver's
    reserve, guessed on the safe (small) side when NVML does not say."""
    if reserved is None:
        return math.floor(nvml_total * (1 - CUDA_RESERVE_GUESS))
    return nvml_total - reserved


def gpu_share(share: int, cuda_total_bytes: int) -> float:
    """The utilization that gives vLLM at least `share` bytes of a GPU whose CUDA total is at
    least `cuda_total_bytes`: rounded up, to four decimals (over 1 when it cannot fit)."""
    return max(math.ceil(share * SHARE_STEP / cuda_total_bytes), 1) / SHARE_STEP


def reserved_for(utilization: float, nvml_total: int, outside: int) -> int:
    """What placement reserves for a worker told `utilization`: vLLM's request is at most that
    fraction of NVML's total (CUDA's total is smaller), plus what lies outside it."""
    return math.ceil(utilization * nvml_total) + outside
