"""The scheduler on a pretend GPU host: a fake NVML, fake workers, model sizes set by the test.

The fake workers use no GPU memory, so placement runs on the scheduler's estimates (weights +
1 GiB KV cache + 2.75 GiB for vLLM's overheads inside a worker's share, of CUDA's total (98 % of
NVML's when it does not say), + 1 GiB CUDA context outside it),
which is exactly the accounting under test. vLLM's own start-up rules are enforced in
tests/unit/test_gpu_sharing.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import FakeNvml, WorkerView, engine_cmdline, eventually, fake_config
from vllama.api.app import build_app
from vllama.api.keys import SERVICES
from vllama.engine.states import WorkerState
from vllama.scheduling.devices import Devices
from vllama.scheduling.events import Event, StateChanged

GiB = 1 << 30
Client = TestClient[web.Request, web.Application]


def sized(sizes: dict[str, int]) -> Any:
    return lambda spec: sizes[spec.model.removeprefix("fake/")]


async def gpu_host(
    aiohttp_client: Any,
    models: dict[str, dict[str, Any]],
    weights_gib: dict[str, int],
    gpus: tuple[int, ...] = (80 * GiB,),
    nvml: FakeNvml | None = None,
    **server: Any,
) -> Client:
    # 1 GiB of KV cache per model (the smallest allowed): each needs about weights + 5.3 GiB.
    config = fake_config(models, **{"kv_cache": "1GiB", **server})
    app = build_app(
        config,
        devices=Devices(nvml=nvml or FakeNvml(*gpus)),
        weight_bytes=sized({name: size * GiB for name, size in weights_gib.items()}),
    )
    client: Client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    return client


async def ask(client: Client, model: str, tokens: int = 1) -> int:
    body = {"model": model, "prompt": "hi", "max_tokens": tokens}
    response = await client.post("/v1/completions", json=body)
    await response.read()
    return response.status


def states(client: Client) -> dict[str, WorkerState]:
    return {model.name: model.state for model in client.app[SERVICES].scheduler.status().models}


def loaded(client: Client) -> set[str]:
    return {name for name, state in states(client).items() if state is WorkerState.READY}


def cmdline(client: Client, name: str) -> list[str]:
    return engine_cmdline(WorkerView(client.app, name).pid)


async def test_a_fourth_model_evicts_the_least_recently_used(aiohttp_client: Any) -> None:
    models: dict[str, dict[str, Any]] = {name: {} for name in "abcd"}
    client = await gpu_host(aiohttp_client, models, dict.fromkeys("abcd", 21))  # 26.3 GiB each
    for name in "abc":
        assert await ask(client, name) == 200
    assert await ask(client, "a") == 200  # a is now the most recently used; b the least
    assert await ask(client, "d") == 200
    assert loaded(client) == {"a", "c", "d"}
    # Each worker was pinned to the GPU and told its share of it.
    line = cmdline(client, "d")
    share = float(line[line.index("--gpu-memory-utilization") + 1])
    assert abs(share - 24.75 / 78.4) < 0.001  # the CUDA context is outside the share


async def test_pinned_models_stay_and_busy_ones_are_not_evicted(aiohttp_client: Any) -> None:
    models: dict[str, dict[str, Any]] = {
        "pinned": {"pinned": True},
        "busy": {"env": {"FAKE_VLLM_TOKEN_DELAY": "0.05"}},
        "idle": {},
        "new": {},
    }
    weights = {"pinned": 21, "busy": 21, "idle": 21, "new": 21}  # 26.3 GiB each
    client = await gpu_host(aiohttp_client, models, weights)
    for name in ("pinned", "busy", "idle"):
        assert await ask(client, name) == 200
    assert await ask(client, "pinned") == 200  # pinned is the most recent, busy/idle older
    # busy is the least recently used but has a request in flight for ~3 s.
    busy_request = asyncio.create_task(ask(client, "busy", tokens=60))
    await eventually(lambda: WorkerView(client.app, "busy").status.in_flight == 1)
    assert await ask(client, "new") == 200
    assert loaded(client) == {"pinned", "busy", "new"}
    assert await busy_request == 200


async def test_a_load_waits_for_a_busy_model_then_evicts_it(aiohttp_client: Any) -> None:
    models: dict[str, dict[str, Any]] = {
        "busy": {"env": {"FAKE_VLLM_TOKEN_DELAY": "0.05"}},
        "big": {},
    }
    client = await gpu_host(aiohttp_client, models, {"busy": 40, "big": 40}, drain_wait=30)
    assert await ask(client, "busy") == 200
    busy_request = asyncio.create_task(ask(client, "busy", tokens=30))  # ~1.5 s
    await eventually(lambda: WorkerView(client.app, "busy").status.in_flight == 1)
    assert await ask(client, "big") == 200  # waited for busy to drain, then evicted it
    assert await busy_request == 200  # the busy request finished untouched
    assert loaded(client) == {"big"}


async def test_a_model_that_can_never_fit_is_refused(aiohttp_client: Any) -> None:
    client = await gpu_host(aiohttp_client, {"huge": {}}, {"huge": 100})
    response = await client.post(
        "/v1/completions", json={"model": "huge", "prompt": "hi", "max_tokens": 1}
    )
    assert response.status == 503
    message = (await response.json())["error"]["message"]
    assert "huge" in message and "GiB" in message
    assert states(client)["huge"] is WorkerState.STOPPED  # nothing was started


async def test_tensor_parallel_model_takes_two_gpus(aiohttp_client: Any) -> None:
    models: dict[str, dict[str, Any]] = {
        "a": {},
        "b": {},
        "tp": {"args": ["--tensor-parallel-size", "2"]},
    }
    client = await gpu_host(
        aiohttp_client, models, {"a": 30, "b": 30, "tp": 100}, gpus=(80 * GiB, 80 * GiB)
    )
    assert await ask(client, "a") == 200
    assert await ask(client, "b") == 200  # the emptier GPU: one model per GPU
    a, b, tp = (WorkerView(client.app, name) for name in ("a", "b", "tp"))
    assert {a.status.devices, b.status.devices} == {("gpu:0",), ("gpu:1",)}
    assert await ask(client, "tp") == 200  # 53.5 GiB per GPU: both others had to go
    assert loaded(client) == {"tp"}
    assert tp.status.devices == ("gpu:0", "gpu:1")
    async with client.session.get(tp.base_url + "/fake/env") as answer:
        env = await answer.json()  # what the engine runs with, spare or not
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


async def test_max_loaded_models_evicts_even_with_memory_to_spare(aiohttp_client: Any) -> None:
    client = await gpu_host(
        aiohttp_client, {"a": {}, "b": {}, "c": {}}, dict.fromkeys("abc", 1), max_loaded_models=2
    )
    for name in "abc":
        assert await ask(client, name) == 200
    assert loaded(client) == {"b", "c"}


async def test_concurrent_loads_on_one_gpu_are_serialized(aiohttp_client: Any) -> None:
    models = {name: {"env": {"FAKE_VLLM_START_DELAY": "0.5"}} for name in "abc"}
    client = await gpu_host(aiohttp_client, models, dict.fromkeys("abc", 10))
    starting: set[str] = set()
    starting_at_once = 0

    def listen(event: Event) -> None:  # every state change, as it happens: none is missed
        nonlocal starting_at_once
        if isinstance(event, StateChanged):
            if event.new is WorkerState.STARTING:
                starting.add(event.model)
            elif event.old is WorkerState.STARTING:
                starting.discard(event.model)
            starting_at_once = max(starting_at_once, len(starting))

    client.app[SERVICES].scheduler.events.subscribe(listen)
    results = await asyncio.gather(*(ask(client, name) for name in "abc"))
    assert results == [200, 200, 200]
    assert starting_at_once == 1


async def test_a_crash_loop_marks_the_model_failed_and_others_keep_serving(
    aiohttp_client: Any,
) -> None:
    models: dict[str, dict[str, Any]] = {
        "broken": {"env": {"FAKE_VLLM_CRASH_AT_START": "1"}},
        "fine": {},
    }
    client = await gpu_host(
        aiohttp_client,
        models,
        {"broken": 1, "fine": 1},
        restart_backoff=0.2,
        crash_loop_failures=3,
    )
    assert await ask(client, "fine") == 200
    loop = asyncio.get_running_loop()
    began = loop.time()
    retry_after = []
    for _ in range(3):
        failed = await client.post(
            "/v1/completions", json={"model": "broken", "prompt": "hi", "max_tokens": 1}
        )
        assert failed.status == 503
        retry_after.append(failed.headers.get("Retry-After"))
    assert loop.time() - began >= 0.2 + 0.4  # backed off 0.2 s, then 0.4 s between restarts
    # Each failed start says when a start is tried again: after the back-off (rounded up to a
    # second), then, the failures making a crash loop, at vllama's own retry (10 s).
    assert retry_after == ["1", "1", "10"]
    assert states(client)["broken"] is WorkerState.FAILED
    response = await client.post(
        "/v1/completions", json={"model": "broken", "prompt": "hi", "max_tokens": 1}
    )
    assert response.status == 503
    assert "marked failed after 3 failures" in (await response.json())["error"]["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 10  # vllama's own retry is due then
    assert states(client)["broken"] is WorkerState.FATAL
    assert await ask(client, "fine") == 200  # the other model is unaffected
    # An explicit load (Ollama's empty prompt) tries again.
    response = await client.post("/api/generate", json={"model": "broken"})
    assert response.status == 503
    assert "fake crash at start" in (await response.json())["error"]


async def test_queue_overflow_is_503_with_retry_after(aiohttp_client: Any) -> None:
    models = {"slow": {"env": {"FAKE_VLLM_START_DELAY": "1.5"}}}
    client = await gpu_host(aiohttp_client, models, {"slow": 1}, max_queue=3)
    waiting = [asyncio.create_task(ask(client, "slow")) for _ in range(3)]
    await eventually(lambda: client.app[SERVICES].scheduler.status().queued == 3)
    response = await client.post(
        "/v1/completions", json={"model": "slow", "prompt": "hi", "max_tokens": 1}
    )
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "queue_full"
    assert await asyncio.gather(*waiting) == [200, 200, 200]


async def test_a_request_gives_up_after_the_load_timeout(aiohttp_client: Any) -> None:
    models = {"slow": {"env": {"FAKE_VLLM_START_DELAY": "5"}}}
    client = await gpu_host(aiohttp_client, models, {"slow": 1}, load_timeout=1)
    response = await client.post(
        "/v1/completions", json={"model": "slow", "prompt": "hi", "max_tokens": 1}
    )
    assert response.status == 503
    assert "load_timeout" in (await response.json())["error"]["message"]


async def test_a_disconnected_waiter_leaves_the_queue(aiohttp_client: Any) -> None:
    models = {"slow": {"env": {"FAKE_VLLM_START_DELAY": "5"}}}
    client = await gpu_host(aiohttp_client, models, {"slow": 1})
    slow = WorkerView(client.app, "slow")
    task = asyncio.create_task(ask(client, "slow"))
    # The request waits for the load under way (5 s). Both waited for: on a loaded host the
    # request was seen queued while its load had not yet begun (state still stopped).
    await eventually(
        lambda: slow.status.waiting == 1 and slow.state is WorkerState.STARTING,
        what="the request waiting for the load under way",
    )
    task.cancel()  # the client goes away while waiting for the load
    await eventually(lambda: slow.status.waiting == 0, what="the waiter left the queue")


async def test_preload_loads_at_start(aiohttp_client: Any) -> None:
    client = await gpu_host(aiohttp_client, {"early": {"preload": True}}, {"early": 1})
    await eventually(lambda: loaded(client) == {"early"}, what="the preload")


async def test_sleep_mode_holds_traffic_and_warms_up(aiohttp_client: Any) -> None:
    models = {"sleepy": {"sleep_when_idle": True, "keep_alive": "0.3s"}}
    client = await gpu_host(aiohttp_client, models, {"sleepy": 1})
    assert await ask(client, "sleepy") == 200
    line = cmdline(client, "sleepy")
    assert "--enable-sleep-mode" in line
    await eventually(lambda: states(client)["sleepy"] is WorkerState.SLEEPING)
    sleepy = WorkerView(client.app, "sleepy")
    pid = sleepy.pid  # still running, asleep
    server = (await (await client.session.get(f"{sleepy.base_url}/fake/stats")).json())["pid"]
    results = await asyncio.gather(*(ask(client, "sleepy") for _ in range(4)))
    assert results == [200] * 4
    stats = await (await client.session.get(f"{sleepy.base_url}/fake/stats")).json()
    assert (sleepy.pid, stats["pid"]) == (pid, server)  # woken, not restarted
    assert stats["sleeps"] == 1 and stats["wakes"] == 1
    assert stats["hit_while_sleeping"] == 0  # no request reached the sleeping engine
    scrape = await (await client.get("/metrics")).text()
    assert 'vllama_model_wake_duration_seconds_count{model="sleepy"} 1.0' in scrape


async def test_ps_reports_measured_gpu_memory(aiohttp_client: Any) -> None:
    nvml = FakeNvml(80 * GiB)
    client = await gpu_host(aiohttp_client, {"a": {}}, {"a": 1}, nvml=nvml)
    assert await ask(client, "a") == 200
    pid = WorkerView(client.app, "a").pid
    nvml.processes[0] = [(pid, 5 * GiB), (1, 7 * GiB)]  # pid 1: not ours
    entry = (await (await client.get("/api/ps")).json())["models"][0]
    assert entry["size_vram"] == 5 * GiB
    assert entry["size"] > 5 * GiB  # plus the worker tree's host memory


async def test_ps_counts_a_gpu_nvml_cannot_see_the_worker_on_by_its_load(
    aiohttp_client: Any,
) -> None:
    # In a container NVML may see none of a worker's pids, or (two GPUs) only some: each GPU
    # without a reading counts what the load took there, as the metrics and status page do.
    nvml = FakeNvml(80 * GiB, 80 * GiB)
    models = {"a": {"args": ["--tensor-parallel-size", "2"]}}
    client = await gpu_host(aiohttp_client, models, {"a": 10}, nvml=nvml)
    assert await ask(client, "a") == 200
    worker = WorkerView(client.app, "a")
    assert worker.status.devices == ("gpu:0", "gpu:1") and worker.status.footprint > 0

    async def vram() -> int:
        entry = (await (await client.get("/api/ps")).json())["models"][0]
        return int(entry["size_vram"])

    assert await vram() == 2 * worker.status.footprint  # NVML sees nothing of ours
    nvml.processes[0] = [(worker.pid, 5 * GiB)]
    assert await vram() == 5 * GiB + worker.status.footprint  # GPU 1 is still unseen


async def test_a_load_is_not_starved_by_a_model_that_stays_busy(aiohttp_client: Any) -> None:
    # Two models that cannot share the GPU. "busy" gets a request stream that overlaps (it is
    # never idle on its own); a request for "other" must still get its turn within drain_wait.
    models: dict[str, dict[str, Any]] = {
        "busy": {"env": {"FAKE_VLLM_TOKEN_DELAY": "0.05"}},
        "other": {},
    }
    client = await gpu_host(aiohttp_client, models, {"busy": 40, "other": 40}, drain_wait=6)
    assert await ask(client, "busy") == 200
    stop = asyncio.Event()
    statuses: list[int] = []

    async def stream_of_requests(offset: float) -> None:
        # Not a wait for anything: the stagger is the traffic under test (one of the streams
        # is always in flight, so busy is never idle on its own).
        await asyncio.sleep(offset)
        while not stop.is_set():
            statuses.append(await ask(client, "busy", tokens=6))  # ~0.3 s each

    streams = [asyncio.create_task(stream_of_requests(i * 0.1)) for i in range(3)]
    busy = WorkerView(client.app, "busy")
    await eventually(lambda: busy.status.in_flight >= 2, what="busy's requests overlap")
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await ask(client, "other") == 200  # busy was drained, evicted, other loaded
    assert loop.time() - began < 6
    stop.set()
    await asyncio.gather(*streams)
    assert statuses and all(status == 200 for status in statuses)  # busy's queue was served too
    assert loaded(client) == {"busy"}  # ... by loading it again once "other" was idle
