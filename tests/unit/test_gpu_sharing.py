"""Several models on shared GPUs, against engines that obey vLLM 0.32's start-up rules
(tests/unit/fake_gpu.py): shares and context lengths vLLM accepts, loads and stops serialized,
containers, sleep mode, multi-GPU workers. Each test fails where real vLLM would refuse."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.fake_gpu import CONTEXT, EngineRefused, FakeGpuDevices, FakeGpuHost, FakeModel
from tests.unit.fake_worker import FakeWorkers, settle, state
from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec, load_config
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError
from vllama.scheduling.scheduler import Scheduler

GiB = 1 << 30
S = WorkerState
# The issue's worked example, with the models' real figures: bf16 weights, KV per token
# (layers x KV heads x head dim x 2 x 2 bytes), full context.
QWEN_7B = FakeModel(weights=15_231_233_024, kv_per_token=28 * 4 * 128 * 2 * 2, context=32_768)
LLAMA_8B = FakeModel(weights=16_060_522_496, kv_per_token=32 * 8 * 128 * 2 * 2, context=131_072)
SMALL = FakeModel(weights=2 * GiB, kv_per_token=32 * 1024, context=8192)


def gpu_host(
    specs: dict[str, dict[str, Any]],
    models: dict[str, FakeModel],
    gpus: tuple[int, ...] = (80 * GiB,),
    hide_pids: bool = False,
    **server: Any,
) -> tuple[Scheduler, FakeWorkers, FakeGpuHost]:
    fake = FakeGpuHost(gpus, hide_pids=hide_pids)
    workers = FakeWorkers(fake, models)

    async def facts(spec: ModelSpec) -> ModelFacts:
        return models[spec.model.removeprefix("org/")].facts()

    tables = {name: {"model": f"org/{name}", **spec} for name, spec in specs.items()}
    config = load_config(file_data={"server": {"restart_backoff": 0, **server}, "models": tables})
    return Scheduler(config, workers, FakeGpuDevices(fake), facts=facts), workers, fake


async def use(scheduler: Scheduler, name: str, **kwargs: Any) -> None:
    async with scheduler.lease(name, **kwargs):
        pass


async def test_the_worked_example_a_second_model_on_an_h100() -> None:
    # vllama used to give Llama-3.1-8B 0.249 of the GPU beside Qwen2.5-7B and no length: ~3 GiB
    # of KV cache for a 131,072-token context that needs 16 GiB. vLLM refuses that start:
    fake = FakeGpuHost((80 * GiB,))
    fake.start(QWEN_7B, vllm_args.gpu_share_args(0.240), {})
    with pytest.raises(EngineRefused, match="max seq len \\(131072\\)"):
        fake.start(LLAMA_8B, vllm_args.gpu_share_args(0.249), {})
    # Now: a share that holds weights, activations and a KV cache, and vLLM fits the context.
    models = {"qwen": QWEN_7B, "llama": LLAMA_8B}
    scheduler, workers, _ = gpu_host({"qwen": {}, "llama": {}}, models)
    await use(scheduler, "qwen")
    await use(scheduler, "llama")
    assert (state(scheduler, "qwen"), state(scheduler, "llama")) == (S.READY, S.READY)
    args = workers.made["llama"].share[0]
    assert args[-2:] == ("--max-model-len", "-1")
    llama = scheduler.model_status("llama")
    assert llama is not None and llama.context_length is not None
    assert 8192 <= llama.context_length < 131_072  # what vLLM fitted, reported by /api/ps
    assert scheduler.model_status("qwen").context_length == 32_768  # type: ignore[union-attr]


async def test_a_fixed_kv_cache_still_gets_a_share_so_a_second_instance_starts() -> None:
    # With --kv-cache-memory-bytes and no utilization, vLLM checks free memory against 0.92 of
    # the GPU: the second instance on a GPU would fail.
    fake = FakeGpuHost((80 * GiB,))
    args = ("--kv-cache-memory-bytes", "2G")
    mid = FakeModel(weights=10 * GiB, kv_per_token=1024, context=4096)
    fake.start(mid, args, {})
    with pytest.raises(EngineRefused, match="less than desired GPU memory utilization"):
        fake.start(mid, args, {})
    specs = {name: {"args": list(args)} for name in ("a", "b")}
    scheduler, workers, _ = gpu_host(specs, {"a": mid, "b": mid})
    await use(scheduler, "a")
    await use(scheduler, "b")
    assert (state(scheduler, "a"), state(scheduler, "b")) == (S.READY, S.READY)
    assert "--gpu-memory-utilization" in workers.made["b"].share[0]


async def test_a_context_the_gpu_cannot_hold_is_refused_before_any_start() -> None:
    specs = {"llama": {"args": ["--max-model-len", "131072"]}}
    scheduler, workers, _ = gpu_host(specs, {"llama": LLAMA_8B}, gpus=(24 * GiB,))
    with pytest.raises(LoadError, match=r"needs .* GiB per device"):
        await use(scheduler, "llama")
    assert workers.made["llama"].starts == 0  # not three failed starts and FATAL


def test_shares_are_rounded_down() -> None:
    assert vllm_args.gpu_share_args(0.2499999) == ("--gpu-memory-utilization", "0.249")
    assert vllm_args.gpu_share_args(0.25) == ("--gpu-memory-utilization", "0.250")


async def test_a_stop_waits_for_a_load_in_progress() -> None:
    scheduler, workers, fake = gpu_host({"a": {}, "b": {}}, {"a": SMALL, "b": SMALL})
    await use(scheduler, "a")
    workers.made["b"].gate.clear()
    loading = asyncio.create_task(use(scheduler, "b"))
    await settle()
    assert state(scheduler, "b") is S.STARTING
    scheduler.expire("a")  # an unload asked while b's engine measures memory
    await settle()
    assert state(scheduler, "a") is S.READY and workers.made["a"].stops == 0
    workers.made["b"].gate.set()
    await loading
    await settle()
    assert state(scheduler, "a") is S.STOPPED
    assert fake.log == ["start a", "start b", "stop a"]  # never freed while b started


async def test_in_a_container_memory_is_measured_by_the_drop_in_free_memory() -> None:
    scheduler, _, fake = gpu_host({"a": {}}, {"a": SMALL}, hide_pids=True)
    await use(scheduler, "a")
    status = scheduler.model_status("a")
    assert status is not None and status.pid is not None
    assert fake.usage(status.pid) == {}  # NVML lists no pid of ours
    process = fake.processes[status.pid]
    assert status.footprint == process.context + process.share  # measured, not the estimate


async def test_a_model_goes_to_sleep_only_once_its_admission_is_closed() -> None:
    specs = {"a": {"sleep_when_idle": True, "keep_alive": "1h"}}
    scheduler, workers, _ = gpu_host(specs, {"a": SMALL})
    worker = workers.made["a"]
    worker.sleep_gate.clear()
    await use(scheduler, "a", keep_alive=0)  # idle at once: the sleep begins
    await settle()
    assert worker.sleeps == 1 and state(scheduler, "a") is S.READY  # /sleep under way
    request = asyncio.create_task(use(scheduler, "a"))
    await settle()
    assert not request.done()  # held: it would reach an engine that is pausing
    worker.sleep_gate.set()
    await request  # the sleep finished, then this request woke the model
    assert state(scheduler, "a") is S.READY and worker.wakes == 1


async def test_a_sleeping_model_holds_its_residue_and_is_evicted_for_a_big_one() -> None:
    specs = {"a": {"sleep_when_idle": True, "keep_alive": "1h"}, "b": {}}
    big = FakeModel(weights=34 * GiB, kv_per_token=1024, context=4096)  # needs all 40 GiB
    scheduler, _, fake = gpu_host(specs, {"a": SMALL, "b": big}, gpus=(40 * GiB,))
    await use(scheduler, "a", keep_alive=0)
    await settle()
    assert state(scheduler, "a") is S.SLEEPING
    assert fake.free(0) == 40 * GiB - CONTEXT  # asleep: the share is back, the context is not
    await use(scheduler, "b")  # needs the whole GPU: the sleeping model is evicted
    assert (state(scheduler, "a"), state(scheduler, "b")) == (S.STOPPED, S.READY)


async def test_sleeping_models_count_toward_max_loaded_models() -> None:
    specs = {"a": {"sleep_when_idle": True, "keep_alive": "1h"}, "b": {}}
    scheduler, _, _ = gpu_host(specs, {"a": SMALL, "b": SMALL}, max_loaded_models=1)
    await use(scheduler, "a", keep_alive=0)
    await settle()
    assert state(scheduler, "a") is S.SLEEPING
    await use(scheduler, "b")
    assert (state(scheduler, "a"), state(scheduler, "b")) == (S.STOPPED, S.READY)


async def test_a_wake_makes_room_first() -> None:
    # b loads into the memory a freed by sleeping; a's wake then needs it back: without
    # placement before the wake, vLLM's wake runs out of memory.
    specs = {"a": {"sleep_when_idle": True, "keep_alive": "1h"}, "b": {}}
    half = FakeModel(weights=15 * GiB, kv_per_token=1024, context=4096)
    scheduler, workers, _ = gpu_host(specs, {"a": half, "b": half}, gpus=(40 * GiB,))
    await use(scheduler, "a", keep_alive=0)
    await settle()
    await use(scheduler, "b")
    assert (state(scheduler, "a"), state(scheduler, "b")) == (S.SLEEPING, S.READY)
    await use(scheduler, "a")
    assert (state(scheduler, "a"), state(scheduler, "b")) == (S.READY, S.STOPPED)
    assert workers.made["a"].wakes == 1 and workers.made["a"].starts == 1


async def test_a_worker_spanning_gpus_sees_all_of_them() -> None:
    specs = {"big": {"args": ["-tp", "2", "--pipeline_parallel_size", "2"]}}
    scheduler, workers, fake = gpu_host(specs, {"big": LLAMA_8B}, gpus=(24 * GiB,) * 4)
    await use(scheduler, "big")
    assert workers.made["big"].share[1]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    status = scheduler.model_status("big")
    assert status is not None and status.devices == ("gpu:0", "gpu:1", "gpu:2", "gpu:3")
    process = fake.processes[status.pid]  # type: ignore[index]
    assert process.share < LLAMA_8B.weights // 2  # each GPU holds a quarter of the weights
