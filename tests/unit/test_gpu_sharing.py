"""Several models on shared GPUs, against engines that obey vLLM 0.32's start-up rules
(tests/unit/fake_gpu.py): shares and context lengths vLLM accepts, loads and stops serialized,
containers, sleep mode, multi-GPU workers. Each test fails where real vLLM would refuse."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fake_gpu import (
    CONTEXT,
    GRAPHS,
    RESERVED,
    EngineRefused,
    FakeGpuDevices,
    FakeGpuHost,
    FakeModel,
    gib,
)
from tests.unit.fake_worker import FakeWorkers, settle, state
from vllama.catalog.facts import ModelFacts
from vllama.config import vllm_args
from vllama.config.settings import ModelSpec, load_config
from vllama.engine.states import WorkerState
from vllama.engine.worker import LoadError
from vllama.scheduling.errors import PlacementRefused
from vllama.scheduling.footprints import Footprints
from vllama.scheduling.scheduler import Scheduler
from vllama.scheduling.sizing import cuda_total, gpu_share, reserved_for

GiB = 1 << 30
S = WorkerState
# The issue's worked example, with the models' real figures: bf16 weights, KV per token
# (layers x KV heads x head dim x 2 x 2 bytes), full context.
QWEN_7B = FakeModel(
    weights=15_231_233_024,
    kv_per_token=28 * 4 * 128 * 2 * 2,
    context=32_768,
    vocab=152_064,
    hidden=3584,
    inner=18_944,
)
LLAMA_8B = FakeModel(
    weights=16_060_522_496,
    kv_per_token=32 * 8 * 128 * 2 * 2,
    context=131_072,
    vocab=128_256,
    hidden=4096,
    inner=14_336,
)
SMALL = FakeModel(weights=2 * GiB, kv_per_token=32 * 1024, context=8192)


def gpu_host(
    specs: dict[str, dict[str, Any]],
    models: dict[str, FakeModel],
    gpus: tuple[int, ...] = (80 * GiB,),
    hide_pids: bool = False,
    fake: FakeGpuHost | None = None,
    learned: Footprints | None = None,
    **server: Any,
) -> tuple[Scheduler, FakeWorkers, FakeGpuHost]:
    fake = fake or FakeGpuHost(gpus, hide_pids=hide_pids)
    workers = FakeWorkers(fake, models)

    async def facts(spec: ModelSpec) -> ModelFacts:
        return models[spec.model.removeprefix("org/")].facts()

    tables = {name: {"model": f"org/{name}", **spec} for name, spec in specs.items()}
    config = load_config(file_data={"server": {"restart_backoff": 0, **server}, "models": tables})
    scheduler = Scheduler(config, workers, FakeGpuDevices(fake), facts=facts, learned=learned)
    return scheduler, workers, fake


async def use(scheduler: Scheduler, name: str, **kwargs: Any) -> None:
    async with scheduler.lease(name, **kwargs):
        pass


async def test_the_worked_example_a_second_model_on_an_h100() -> None:
    # vllama used to give Qwen2.5-7B 0.240 of the GPU and Llama-3.1-8B 0.249 with no length:
    # weights + 4 GiB + 1 GiB. By vLLM's formulas the sampler's peak, the graph pool and
    # non-torch memory leave Qwen too little KV for its 32,768 tokens, and Llama's 131,072-token
    # context needs 16 GiB. vLLM refuses both starts:
    fake = FakeGpuHost((80 * GiB,))
    with pytest.raises(EngineRefused, match="max seq len \\(32768\\)"):
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


def test_shares_are_of_cudas_total_rounded_up_and_reserved_against_nvmls() -> None:
    nvml_total = 80 * GiB
    cuda = cuda_total(nvml_total, RESERVED)
    for share in (7 * GiB, 20 * GiB + 12345, 40 * GiB - 1):
        utilization = gpu_share(share, cuda)
        assert math.ceil(utilization * cuda) >= share  # what vLLM requests holds the share
        assert reserved_for(utilization, nvml_total, 0) >= math.ceil(utilization * cuda)
    assert cuda_total(nvml_total, None) < nvml_total - RESERVED  # NVML silent: the safe side
    assert vllm_args.gpu_share_args(0.25) == ("--gpu-memory-utilization", "0.2500")


@pytest.mark.parametrize("reserve_known", [True, False])
async def test_a_fixed_context_that_vllms_formulas_fit_starts_on_the_first_try(
    reserve_known: bool,
) -> None:
    # The remedy docs/GPU.md gives for a longer context. vLLM takes the CUDA graphs, non-torch
    # memory, the sampler's peak (1,024 x 128,256 here) and a null block out of the share, and
    # multiplies CUDA's total, not NVML's: a share of exactly the KV cache + 1 GiB was refused.
    specs = {"qwen": {}, "llama": {"args": ["--max-model-len", "65536"]}}
    models = {"qwen": QWEN_7B, "llama": LLAMA_8B}
    scheduler, workers, fake = gpu_host(specs, models)
    fake.report_reserved = reserve_known
    await use(scheduler, "qwen")
    await use(scheduler, "llama")
    assert (state(scheduler, "qwen"), state(scheduler, "llama")) == (S.READY, S.READY)
    assert (workers.made["qwen"].starts, workers.made["llama"].starts) == (1, 1)
    assert scheduler.model_status("llama").context_length == 65_536  # type: ignore[union-attr]


async def test_a_memory_refusal_is_placed_again_once_with_what_vllm_said_was_missing() -> None:
    # An attention backend's workspace vllama did not foresee: vLLM says how much KV it lacked.
    specs = {"llama": {"args": ["--max-model-len", "32768"]}}
    scheduler, workers, fake = gpu_host(specs, {"llama": LLAMA_8B})
    fake.surprise = 3 * GiB
    await use(scheduler, "llama")
    assert state(scheduler, "llama") is S.READY
    assert workers.made["llama"].starts == 2  # one refused, one re-planned: never three alike
    first, second = (
        float(vllm_args.flag_value(args, vllm_args.GPU_SHARE) or 0)
        for args in workers.made["llama"].shares
    )
    assert second > first


async def test_a_refusal_with_no_room_for_more_is_refused_with_vllms_numbers() -> None:
    specs = {"llama": {"args": ["--max-model-len", "32768"]}}
    scheduler, workers, fake = gpu_host(specs, {"llama": LLAMA_8B}, gpus=(24 * GiB,))
    fake.surprise = 3 * GiB  # more than the GPU has left beside the share
    with pytest.raises(PlacementRefused, match=r"KV cache is needed.*larger does not fit") as info:
        await use(scheduler, "llama")
    assert "GiB" in info.value.reason
    assert workers.made["llama"].starts == 1
    assert state(scheduler, "llama") is not S.FATAL


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
    big = FakeModel(weights=31 * GiB, kv_per_token=1024, context=4096)  # needs 39 of 40 GiB
    scheduler, _, fake = gpu_host(specs, {"a": SMALL, "b": big}, gpus=(40 * GiB,))
    await use(scheduler, "a", keep_alive=0)
    await settle()
    assert state(scheduler, "a") is S.SLEEPING
    # Asleep: the share is back but for the graph pool; the context stays.
    assert fake.free(0) == 40 * GiB - RESERVED - CONTEXT - GRAPHS
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
    report = "\n".join(fake.reports[status.pid])  # type: ignore[index]
    assert f"Model loading took {gib(LLAMA_8B.weights // 4)} GiB" in report  # a quarter each


async def test_a_ray_model_is_kept_off_the_gpus_local_models_use() -> None:
    # Ray places its workers on any GPU of this host, whatever vllama gave other models.
    specs: dict[str, dict[str, Any]] = {
        "a": {},
        "r": {"ray_address": "h:6379"},
        "p": {"pinned": True},
    }
    models = {"a": SMALL, "r": SMALL, "p": SMALL}
    scheduler, _, _ = gpu_host(specs, models, gpus=(80 * GiB, 80 * GiB))
    await use(scheduler, "a")
    await use(scheduler, "r")
    assert (state(scheduler, "a"), state(scheduler, "r")) == (S.STOPPED, S.READY)
    assert scheduler.model_status("r").devices == ("gpu:0", "gpu:1")  # type: ignore[union-attr]
    await use(scheduler, "p")  # a local model: the Ray model goes
    assert (state(scheduler, "r"), state(scheduler, "p")) == (S.STOPPED, S.READY)
    with pytest.raises(PlacementRefused, match="Ray model has this host's GPUs to itself"):
        await use(scheduler, "r")  # beside a pinned local model: refused, saying why


async def test_the_footprint_vllm_reported_sizes_the_next_share(tmp_path: Path) -> None:
    # The first daemon learns from the refusal and from what vLLM then reported; the next one
    # (same state file) gives the share vLLM needs at once.
    specs = {"llama": {"args": ["--max-model-len", "32768"]}}
    state_file = tmp_path / "footprints.json"
    first, workers, fake = gpu_host(specs, {"llama": LLAMA_8B}, learned=Footprints(state_file))
    fake.surprise = 3 * GiB
    await use(first, "llama")
    assert workers.made["llama"].starts == 2
    await first.stop_all()
    saved = json.loads(state_file.read_text())
    (entry,) = saved.values()
    assert entry["kv_tokens"] >= 32768 and abs(entry["graphs"] - GRAPHS) < GiB // 100
    again, workers, _ = gpu_host(
        specs, {"llama": LLAMA_8B}, fake=fake, learned=Footprints(state_file)
    )
    await use(again, "llama")
    assert state(again, "llama") is S.READY and workers.made["llama"].starts == 1
    await again.stop_all()


async def test_an_mla_cache_is_whole_on_each_tensor_parallel_gpu() -> None:
    # DeepSeek's latent cache is one vector per token, replicated on every rank: splitting it
    # by -tp like KV heads left each GPU half the cache vLLM checks for.
    mla = FakeModel(weights=30 * GiB, kv_per_token=61 * 576 * 2, context=163_840, mla=True)
    specs = {"ds": {"args": ["-tp", "2", "--max-model-len", "131072"]}}
    scheduler, workers, _ = gpu_host(specs, {"ds": mla}, gpus=(80 * GiB, 80 * GiB))
    await use(scheduler, "ds")
    assert state(scheduler, "ds") is S.READY and workers.made["ds"].starts == 1
