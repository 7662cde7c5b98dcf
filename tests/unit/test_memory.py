"""Shares and estimates (vllama/scheduling/sizing.py, memory.py) with vLLM's rules in numbers."""

from __future__ import annotations

from tests.component.fakes import FakeNvml
from vllama.catalog.facts import ModelFacts
from vllama.config.settings import ModelSpec, load_config
from vllama.scheduling.devices import Devices
from vllama.scheduling.memory import MemoryPlanner
from vllama.scheduling.sizing import ACTIVATIONS, GPU_CONTEXT, MIN_CONTEXT, NCCL_BUFFERS, estimate

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TWO_GIB = ModelFacts(weight_bytes=2 * GiB)
# Llama-3.1-8B: 16 GB of bf16 weights, 32 layers x 8 KV heads x 128 dims: 128 KiB per token.
LLAMA_8B = ModelFacts(weight_bytes=16 * 10**9, kv_bytes_per_token=131072, context_length=131072)


def planner(gpus: tuple[int, ...] = (), **server: object) -> MemoryPlanner:
    settings = load_config(file_data={"server": dict(server)}).server
    devices = Devices(nvml=FakeNvml(*gpus)) if gpus else Devices(use_gpus=False)
    return MemoryPlanner(settings, devices)


def test_cpu_workers_get_a_bounded_kv_cache_unless_they_set_one() -> None:
    cpu = planner(kv_cache="3GiB")
    assert cpu.kind == "cpu"
    plain = ModelSpec(model="/m")
    assert cpu.share(plain, TWO_GIB, ("cpu",), GiB).env == {"VLLM_CPU_KVCACHE_SPACE": "3"}
    assert cpu.need("m", plain, TWO_GIB) == 2 * GiB + 3 * GiB + 2 * GiB  # weights, KV, processes
    own_env = ModelSpec(model="/m", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert cpu.share(own_env, TWO_GIB, ("cpu",), GiB).env == {}
    assert cpu.need("m", own_env, TWO_GIB) == 2 * GiB + 1 * GiB + 2 * GiB
    own_flag = ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "2G"))
    assert cpu.share(own_flag, TWO_GIB, ("cpu",), GiB).env == {}


async def test_gpu_workers_are_pinned_told_their_share_and_fit_their_context() -> None:
    gpu = planner(gpus=(80 * GiB, 80 * GiB), kv_cache="4GiB")
    assert gpu.kind == "gpu"
    await gpu.snapshot(lambda: ())  # every placement decision takes one first
    placed = gpu.share(ModelSpec(model="/m"), TWO_GIB, ("gpu:1",), 20 * GiB)
    assert placed.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
    # 2 GiB weights + 1 GiB activations + 4 GiB KV = 7 GiB of 80: 0.0875, rounded down.
    assert placed.args == ("--gpu-memory-utilization", "0.087", "--max-model-len", "-1")
    own = ModelSpec(model="/m", args=("--gpu-memory-utilization=0.5", "--max-model-len", "4096"))
    assert gpu.share(own, TWO_GIB, ("gpu:0",), 20 * GiB).args == ()
    # A fixed KV cache still gets a share: vLLM checks free memory against it at start.
    fixed = ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "3G"))
    args = gpu.share(fixed, TWO_GIB, ("gpu:0",), 20 * GiB).args
    assert args[:2] == ("--gpu-memory-utilization", "0.075")  # (2 + 1 + 3) / 80


def test_gpu_estimates_keep_the_cuda_context_outside_the_share() -> None:
    plain = estimate(ModelSpec(model="/m"), TWO_GIB, "gpu", 6 * GiB)
    assert (plain.share, plain.outside) == (2 * GiB + ACTIVATIONS + 6 * GiB, GPU_CONTEXT)
    assert plain.need == plain.share + plain.outside and plain.auto_fit
    own = estimate(ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "3G")), TWO_GIB, "gpu", 0)
    assert own.share == 2 * GiB + ACTIVATIONS + 3 * GiB
    split = estimate(ModelSpec(model="/m", args=("-tp", "2", "-pp", "2")), TWO_GIB, "gpu", 4 * GiB)
    assert split.devices == 4 and split.outside == GPU_CONTEXT + NCCL_BUFFERS
    assert split.share == GiB // 2 + ACTIVATIONS + GiB  # weights and KV split four ways


def test_a_worker_spanning_gpus_keeps_room_for_nccl_outside_its_share() -> None:
    # docs/GPU.md: 1 GiB of CUDA context per GPU, and 512 MiB more for NCCL across GPUs.
    one = estimate(ModelSpec(model="/m"), TWO_GIB, "gpu", 0)
    two = estimate(ModelSpec(model="/m", args=("-tp", "2")), TWO_GIB, "gpu", 0)
    assert (one.outside, two.outside) == (1024 * MiB, 1536 * MiB)


def test_the_kv_cache_holds_the_context_the_operator_fixed_or_a_useful_minimum() -> None:
    fixed = ModelSpec(model="/m", args=("--max-model-len", "32768"))
    planned = estimate(fixed, LLAMA_8B, "gpu", 4 * GiB)
    assert planned.share == 16 * 10**9 + ACTIVATIONS + 32768 * 131072 and not planned.auto_fit
    auto = estimate(ModelSpec(model="/m"), LLAMA_8B, "gpu", 0)
    assert auto.share == 16 * 10**9 + ACTIVATIONS + MIN_CONTEXT * 131072 and auto.auto_fit
    assert MIN_CONTEXT * 131072 == 8192 * 128 * KiB  # docs/GPU.md: 8,192 tokens of Llama's KV


async def test_a_gpu_share_stays_between_one_percent_and_95_percent() -> None:
    """vLLM needs room outside its share on the card (CUDA context, other processes): never more
    than 0.95 of it, even for a model the estimate says is bigger; never under 0.01, which the
    three decimals the flag is written with would round down to 0.000."""
    gpu = planner(gpus=(8 * GiB,), kv_cache="4GiB")
    await gpu.snapshot(lambda: ())
    big = gpu.share(ModelSpec(model="/m"), LLAMA_8B, ("gpu:0",), 8 * GiB)
    assert big.args[:2] == ("--gpu-memory-utilization", "0.950")
    tiny = planner(gpus=(8000 * GiB,), kv_cache="1GiB")  # about 2 GiB of 8000
    await tiny.snapshot(lambda: ())
    small = tiny.share(ModelSpec(model="/m"), ModelFacts(weight_bytes=1), ("gpu:0",), GiB)
    assert small.args[:2] == ("--gpu-memory-utilization", "0.010")
