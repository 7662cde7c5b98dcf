"""The facts about vLLM's command line that vllama relies on (vllama/config/vllm_args.py)."""

from __future__ import annotations

import pytest

from vllama.config import vllm_args

G = 1 << 30


def test_tensor_parallel_size_forms() -> None:
    assert vllm_args.tensor_parallel_size(()) == 1
    assert vllm_args.tensor_parallel_size(("--tensor-parallel-size", "4")) == 4
    assert vllm_args.tensor_parallel_size(("-tp", "2")) == 2
    assert vllm_args.tensor_parallel_size(("--tensor-parallel-size=8",)) == 8
    assert vllm_args.tensor_parallel_size(("--tensor_parallel_size", "3")) == 3
    assert vllm_args.tensor_parallel_size(("-tp", "2", "--tensor-parallel-size", "4")) == 4
    assert vllm_args.tensor_parallel_size(("-tp", "many")) == 1  # vLLM refuses it itself


def test_flags_are_found_in_every_spelling_vllm_accepts() -> None:
    assert vllm_args.has_flag(["--kv_cache_memory_bytes=1G"], vllm_args.KV_CACHE_BYTES)
    assert vllm_args.has_flag(["--gpu-memory-utilization", "0.5"], vllm_args.GPU_SHARE)
    assert not vllm_args.has_flag(["--gpu-memory-utilizationx"], vllm_args.GPU_SHARE)
    assert vllm_args.sets_memory_share(["--kv-cache-memory-bytes", "1G"])
    assert not vllm_args.sets_memory_share(["--enforce-eager"])
    assert vllm_args.enables_tools(["--enable_auto_tool_choice"])
    assert (
        vllm_args.flag_value(["--max-model-len", "1", "--max_model_len=2"], "--max-model-len")
        == "2"
    )
    assert vllm_args.flag_value(["--max-model-len"], "--max-model-len") is None


@pytest.mark.parametrize("arg", ["--port=1", "--served_model_name", "--model", "--host", "--uds"])
def test_arguments_vllama_owns_are_refused(arg: str) -> None:
    with pytest.raises(ValueError, match="set by vllama itself"):
        vllm_args.check_user_args([arg])


def test_worker_arguments_start_with_what_vllama_owns() -> None:
    assert vllm_args.server_args("/m", "tiny", "127.0.0.1", 41000) == [
        "--model", "/m", "--served-model-name", "tiny", "--host", "127.0.0.1",
        "--port", "41000", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    assert vllm_args.gpu_share_args(0.25) == ("--gpu-memory-utilization", "0.2500")
    assert vllm_args.cpu_kv_cache_env(G + 1) == {"VLLM_CPU_KVCACHE_SPACE": "2"}


@pytest.mark.parametrize(
    ("args", "env", "on_cpu", "expected"),
    [
        (["--kv-cache-memory-bytes", "1073741824"], {}, False, G),
        (["--kv-cache-memory-bytes=4G"], {}, False, 4 * G),
        (["--kv_cache_memory_bytes", "4GiB"], {}, False, 4 * G),
        (["--kv-cache-memory-bytes", "512M"], {}, False, 512 << 20),
        (["--kv-cache-memory-bytes", "2g"], {}, False, 2 * 10**9),
        (["--kv-cache-memory-bytes", "1.5k"], {}, False, 1500),
        (["--kv-cache-memory-bytes", "1", "--kv-cache-memory-bytes", "2K"], {}, False, 2048),
        (["--kv-cache-memory-bytes", "1.5G"], {}, False, None),
        (["--kv-cache-memory-bytes", "lots"], {}, False, None),
        (["--kv-cache-memory-bytes"], {}, False, None),
        ([], {}, False, None),
        ([], {"VLLM_CPU_KVCACHE_SPACE": "4"}, False, None),
        ([], {"VLLM_CPU_KVCACHE_SPACE": "2"}, True, 2 * G),
        (["--kv-cache-memory-bytes=1G"], {"VLLM_CPU_KVCACHE_SPACE": "3"}, True, 3 * G),
        (["--kv-cache-memory-bytes=1G"], {}, True, G),
        ([], {"VLLM_CPU_KVCACHE_SPACE": ""}, True, None),
        ([], {}, True, None),
    ],
)
def test_kv_cache_bytes_follow_vllms_rules(
    args: list[str], env: dict[str, str], on_cpu: bool, expected: int | None
) -> None:
    assert vllm_args.kv_cache_bytes(args, env, on_cpu) == expected


def test_lora_arguments_for_a_workers_adapters() -> None:
    assert vllm_args.lora_args({}, 8) == ()
    args = vllm_args.lora_args({"b": "/p/b", "a": "/p=a,x"}, 12)
    assert args[:6] == (
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--max-loras",
        "2",
        "--lora-modules",
    )
    assert args[6:] == (
        '{"name": "a", "path": "/p=a,x"}',  # JSON keeps `=` and `,` in paths intact
        '{"name": "b", "path": "/p/b"}',
    )
    assert vllm_args.lora_args({"a": "/a"}, 1000)[2] == "512"
