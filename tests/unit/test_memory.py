"""Shares and estimates (vllama/scheduling/sizing.py, memory.py) with vLLM's rules in numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.component.fakes import FakeNvml
from vllama.catalog.facts import ModelFacts, profile_shapes
from vllama.config.settings import ConfigError, ModelSpec, load_config
from vllama.engine.vllm_report import (
    GROW_STEP,
    StartReport,
    is_report_line,
    refusal,
    start_report,
)
from vllama.scheduling.devices import Devices
from vllama.scheduling.footprints import Footprint, Footprints, key, learn, share_for
from vllama.scheduling.memory import MemoryPlanner
from vllama.scheduling.sizing import (
    ACTIVATIONS_MIN,
    BLOCK_SIZE,
    CUDA_GRAPHS,
    GPU_CONTEXT,
    MIN_CONTEXT,
    NCCL_BUFFERS,
    NON_TORCH,
    default_batch,
    estimate,
    profile_peak,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TWO_GIB = ModelFacts(weight_bytes=2 * GiB)
# Llama-3.1-8B: 16 GB of bf16 weights, 32 layers x 8 KV heads x 128 dims: 128 KiB per token.
LLAMA_8B = ModelFacts(
    weight_bytes=16 * 10**9,
    kv_bytes_per_token=131072,
    context_length=131072,
    vocab_size=128_256,
    hidden_size=4096,
    intermediate_size=14_336,
)
# Beside the weights and KV, a share holds non-torch memory, the profile run's peak (a floor for
# a model whose config says nothing) and the CUDA-graph pool.
OVERHEAD = NON_TORCH + ACTIVATIONS_MIN + CUDA_GRAPHS


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
    # 2 GiB weights + 2.75 GiB overhead + 4 GiB KV = 8.75 GiB of CUDA's total, which NVML (not
    # saying its reserve) puts at 98 % of its 80 GiB: 0.11161, rounded up.
    assert placed.args == ("--gpu-memory-utilization", "0.1117", "--max-model-len", "-1")
    own = ModelSpec(model="/m", args=("--gpu-memory-utilization=0.5", "--max-model-len", "4096"))
    assert gpu.share(own, TWO_GIB, ("gpu:0",), 20 * GiB).args == ()
    # A fixed KV cache still gets a share: vLLM checks free memory against it at start.
    fixed = ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "3G"))
    args = gpu.share(fixed, TWO_GIB, ("gpu:0",), 20 * GiB).args
    assert args[:2] == ("--gpu-memory-utilization", "0.0989")  # (2 + 2.75 + 3) / 78.4


def test_gpu_estimates_keep_the_cuda_context_outside_the_share() -> None:
    plain = estimate(ModelSpec(model="/m"), TWO_GIB, "gpu", 6 * GiB)
    assert (plain.share, plain.outside) == (2 * GiB + OVERHEAD + 6 * GiB, GPU_CONTEXT)
    assert plain.need == plain.share + plain.outside and plain.auto_fit
    own = estimate(ModelSpec(model="/m", args=("--kv-cache-memory-bytes", "3G")), TWO_GIB, "gpu", 0)
    assert own.share == 2 * GiB + OVERHEAD + 3 * GiB
    split = estimate(ModelSpec(model="/m", args=("-tp", "2", "-pp", "2")), TWO_GIB, "gpu", 4 * GiB)
    assert split.devices == 4 and split.outside == GPU_CONTEXT + NCCL_BUFFERS
    assert split.share == GiB // 2 + OVERHEAD + GiB  # weights and KV split four ways


def test_a_worker_spanning_gpus_keeps_room_for_nccl_outside_its_share() -> None:
    # docs/GPU.md: 1 GiB of CUDA context per GPU, and 512 MiB more for NCCL across GPUs.
    one = estimate(ModelSpec(model="/m"), TWO_GIB, "gpu", 0)
    two = estimate(ModelSpec(model="/m", args=("-tp", "2")), TWO_GIB, "gpu", 0)
    assert (one.outside, two.outside) == (1024 * MiB, 1536 * MiB)


def test_the_kv_cache_holds_the_context_the_operator_fixed_or_a_useful_minimum() -> None:
    fixed = ModelSpec(model="/m", args=("--max-model-len", "32768"))
    planned = estimate(fixed, LLAMA_8B, "gpu", 4 * GiB)
    # One request of 32,768 tokens in 16-token blocks, and the null block vLLM holds back.
    kv = (32768 // BLOCK_SIZE + 1) * BLOCK_SIZE * 131072
    peak = profile_peak(LLAMA_8B, default_batch(None))
    overhead = NON_TORCH + peak + CUDA_GRAPHS
    assert planned.share == 16 * 10**9 + overhead + kv and not planned.auto_fit
    auto = estimate(ModelSpec(model="/m"), LLAMA_8B, "gpu", 0)
    kv = (MIN_CONTEXT // BLOCK_SIZE + 1) * BLOCK_SIZE * 131072
    assert auto.share == 16 * 10**9 + overhead + kv and auto.auto_fit


def test_the_profile_runs_peak_follows_vllms_batch_defaults() -> None:
    # vLLM's sampler sorts max_num_seqs x vocab: 1,024 x 128,256 on an H100 for Llama 3, more
    # than its 8,192-token prefill; a smaller GPU's defaults are 256 rows and 2,048 tokens.
    h100 = profile_peak(LLAMA_8B, default_batch(79 * GiB))
    assert h100 == 1024 * 128_256 * 24 > 8192 * (6 * 4096 + 3 * 14_336) * 2
    assert profile_peak(LLAMA_8B, default_batch(24 * GiB)) == 256 * 128_256 * 24
    fewer = estimate(ModelSpec(model="/m", args=("--max-num-seqs", "64")), LLAMA_8B, "gpu", 0)
    assert fewer.share < estimate(ModelSpec(model="/m"), LLAMA_8B, "gpu", 0).share
    eager = estimate(ModelSpec(model="/m", args=("--enforce-eager",)), LLAMA_8B, "gpu", 0)
    assert eager.graphs == 0 and eager.residue == GPU_CONTEXT


def test_what_vllm_says_about_its_memory_is_read_into_numbers() -> None:
    # Lines as vLLM 0.32 prints them (format strings in gpu_model_runner.py, gpu_worker.py,
    # kv_cache_utils.py), with the engine core's prefix.
    lines = [
        "(EngineCore pid=9) INFO 12-07 10:00:01 [gpu_model_runner.py:5150] Model loading took "
        "14.99 GiB memory and 4.210000 seconds",
        "(EngineCore pid=9) INFO 12-07 10:00:09 [gpu_model_runner.py:6475] Estimated CUDA graph "
        "memory: 0.85 GiB total",
        "(EngineCore pid=9) INFO 12-07 10:00:09 [gpu_worker.py:760] Available KV cache memory: "
        "52.31 GiB",
        "(EngineCore pid=9) INFO 12-07 10:00:09 [kv_cache_utils.py:2326] GPU KV cache size: "
        "428,512 tokens, Maximum concurrency for 131,072 tokens per request: 3.27x",
    ]
    assert all(is_report_line(line) for line in lines)
    report = start_report(["INFO something else", *lines])
    assert report == StartReport(
        weights=math.ceil(14.99 * GiB),
        kv_bytes=math.ceil(52.31 * GiB),
        kv_tokens=428_512,
        graphs=math.ceil(0.85 * GiB),
    )
    # The share less the KV cache is what the model took besides it.
    learned = learn(report, 0.9, 80 * GiB)
    assert learned is not None and learned.non_kv == math.ceil(72 * GiB) - learned.kv_bytes
    assert learned.kv_bytes == report.kv_bytes
    assert share_for(learned, 4 * GiB) > learned.non_kv + 4 * GiB


def test_vllms_memory_refusals_say_what_was_missing() -> None:
    short = refusal(
        [
            "Traceback (most recent call last):",
            "ValueError: To serve at least one request with the model's max seq len (131072), "
            "(16.0 GiB KV cache is needed, which is larger than the available KV cache memory "
            "(3.12 GiB). Based on the available memory, the estimated maximum model length is "
            "25536. Try increasing `gpu_memory_utilization` ...",
        ]
    )
    assert short is not None and short.missing >= math.ceil((16.0 - 3.12) * GiB)
    free = refusal(
        [
            "ValueError: Free memory on device cuda:0 (30.1/79.19 GiB) on startup is less than "
            "desired GPU memory utilization (0.5, 39.6 GiB). Decrease GPU memory utilization ..."
        ]
    )
    assert free is not None and free.missing == 0  # the share was right; the GPU was not free
    blind = refusal(["ValueError: No available memory for the cache blocks. Try increasing"])
    assert blind is not None and blind.missing == GROW_STEP
    assert refusal(["RuntimeError: something else"]) is None


def test_the_profile_runs_shapes_come_from_config_json() -> None:
    llama = {"vocab_size": 128_256, "hidden_size": 4096, "intermediate_size": 14_336}
    assert profile_shapes(llama) == {**llama, "kv_replicated": False}
    deepseek = {"text_config": {"vocab_size": 129_280, "kv_lora_rank": 512}}
    shapes = profile_shapes(deepseek)
    assert shapes["vocab_size"] == 129_280 and shapes["kv_replicated"]
    assert profile_shapes({})["hidden_size"] == 0  # unknown: the estimate's floors apply


async def test_a_reserved_host_budget_counts_whatever_is_measured_free() -> None:
    # More than this host has free: only a reservation, never a measurement, makes it all free.
    tib = 1 << 40
    reserved = planner(memory_reserved_cpu="1TiB", memory_recovery_timeout=0)
    host = (await reserved.snapshot(lambda: (), spare_bytes=GiB)).devices[0]
    assert (host.id, host.budget, host.free) == ("cpu", tib - GiB, tib)  # spares still count
    assert await reserved.wait_for_memory(("cpu",), tib)
    measured = planner(memory_recovery_timeout=0)
    host = (await measured.snapshot(lambda: ())).devices[0]
    assert host.free < tib and host.budget < tib
    assert not await measured.wait_for_memory(("cpu",), tib)


def test_a_reserved_host_budget_and_a_host_limit_are_one_or_the_other() -> None:
    server = {"memory_limit_cpu": "8GiB", "memory_reserved_cpu": "8GiB"}
    with pytest.raises(ConfigError, match="memory_reserved_cpu"):
        load_config(file_data={"server": server})


async def test_a_gpu_share_stays_between_one_step_and_95_percent() -> None:
    """vLLM needs room outside its share on the card (CUDA context, other processes): never more
    than 0.95 of it, even for a model the estimate says is bigger; never under one step of the
    four decimals the flag is written with (rounding down would ask for 0.0000)."""
    gpu = planner(gpus=(8 * GiB,), kv_cache="4GiB")
    await gpu.snapshot(lambda: ())
    big = gpu.share(ModelSpec(model="/m"), LLAMA_8B, ("gpu:0",), 8 * GiB)
    assert big.args[:2] == ("--gpu-memory-utilization", "0.9500")
    tiny = planner(gpus=(8_000_000 * GiB,), kv_cache="1GiB")  # about 2 GiB of 8,000,000
    await tiny.snapshot(lambda: ())
    small = tiny.share(ModelSpec(model="/m"), ModelFacts(weight_bytes=1), ("gpu:0",), GiB)
    assert small.args[:2] == ("--gpu-memory-utilization", "0.0001")


def test_a_footprint_is_kept_per_environment_but_not_per_credential_or_log_level() -> None:
    args = ("--max-model-len", "8192")
    plain = key("/m", args, {}, "H100 80")
    alloc = key("/m", args, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, "H100 80")
    backend = key("/m", args, {"VLLM_ATTENTION_BACKEND": "FLASHINFER"}, "H100 80")
    assert len({plain, alloc, backend}) == 3
    # Neither a token nor a log level changes what vLLM takes, and a token is no state to keep.
    noise = {"HF_TOKEN": "hf_secret", "VLLM_LOGGING_LEVEL": "DEBUG", "S3_ACCESS_KEY_ID": "x"}
    assert key("/m", args, noise, "H100 80") == plain
    assert "hf_secret" not in key("/m", args, {**noise, "VLLM_USE_V1": "1"}, "H100 80")
    # A name that only looks like one stays: it tunes vLLM's kernels.
    tuned = {"VLLM_MULTI_STREAM_GEMM_TOKEN_THRESHOLD": "512"}
    assert key("/m", args, tuned, "H100 80") != plain


async def test_a_footprint_learned_under_one_environment_is_not_used_under_another() -> None:
    gpu = planner(gpus=(80 * GiB,), kv_cache="4GiB")
    await gpu.snapshot(lambda: ())
    first = ModelSpec(model="/m", env={"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"})
    other = ModelSpec(model="/m", env={"VLLM_ATTENTION_BACKEND": "FLASHINFER"})
    estimated = gpu.estimate(other, LLAMA_8B)
    share = gpu.share(first, LLAMA_8B, ("gpu:0",), 40 * GiB)
    # vLLM said it took far less than estimated: 30 GiB of KV in a share of about 50 GiB.
    report = StartReport(weights=15 * GiB, kv_bytes=30 * GiB, kv_tokens=245_760)
    gpu.learn("m", first, share, report)
    assert gpu.estimate(first, LLAMA_8B).share != estimated.share  # learned
    assert gpu.estimate(other, LLAMA_8B) == estimated  # another environment: the estimate


def test_footprints_kept_before_the_environment_counted_load_and_are_shed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "footprints.json"
    footprint = Footprint(non_kv=20 * GiB, kv_bytes=30 * GiB, kv_tokens=245_760, graphs=None)
    entry = {"non_kv": 20 * GiB, "kv_bytes": 30 * GiB, "kv_tokens": 245_760, "graphs": None}
    old = "\x1f".join(("/m", "--max-model-len 8192", "H100 80"))  # model, args, GPU kind
    path.write_text(json.dumps({old: entry}))
    known = Footprints(path)  # loads, without the entry it cannot place
    new = key("/m", ("--max-model-len", "8192"), {}, "H100 80")
    assert known.get(new) is None and known.get(old) is None
    known.put(new, footprint)
    assert list(json.loads(path.read_text())) == [new]
    assert Footprints(path).get(new) == footprint


def test_a_footprint_key_keeps_no_argument_or_variable_in_clear() -> None:
    # The key is written to the state file: a secret in a model's arguments must not be.
    kept = key("m", ["--api-key", "s3cret"], {"PYTORCH_CUDA_ALLOC_CONF": "x"}, "H100")
    assert "s3cret" not in kept and "PYTORCH_CUDA_ALLOC_CONF" not in kept
    assert kept != key("m", ["--api-key", "other"], {}, "H100")
