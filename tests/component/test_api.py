"""The daemon's HTTP surface and scheduling, against fake vLLM workers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, count_starts, eventually, fake_config
from vllama.api.app import build_app
from vllama.config.settings import Config
from vllama.engine.states import WorkerState

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


async def start(aiohttp_client: ClientFactory, config: Config) -> Client:
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


def chat(model: str, stream: bool = False, max_tokens: int = 4) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def worker_of(client: Client, name: str) -> WorkerView:
    return WorkerView(client.app, name)


async def fake_stats(client: Client, name: str) -> dict[str, Any]:
    worker = worker_of(client, name)
    async with client.session.get(f"{worker.base_url}/fake/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def test_models_lists_every_configured_model_loaded_or_not(
    aiohttp_client: ClientFactory,
) -> None:
    client = await start(aiohttp_client, fake_config({"a": {}, "b": {}}))
    response = await client.get("/v1/models")
    assert response.status == 200
    assert [m["id"] for m in (await response.json())["data"]] == ["a", "b"]
    assert worker_of(client, "a").state is WorkerState.STOPPED


async def test_first_request_loads_and_concurrent_ones_join_the_same_load(
    aiohttp_client: ClientFactory,
) -> None:
    client = await start(
        aiohttp_client, fake_config({"a": {"env": {"FAKE_VLLM_START_DELAY": "1"}}})
    )
    starts = count_starts(client.app)
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=chat("a")) for _ in range(8))
    )
    assert [r.status for r in responses] == [200] * 8
    bodies = [await r.json() for r in responses]
    assert all(b["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 " for b in bodies)
    assert starts == ["a"]
    assert (await fake_stats(client, "a"))["requests"] == 8


async def test_streaming_arrives_chunk_by_chunk_unchanged(aiohttp_client: ClientFactory) -> None:
    config = fake_config({"a": {"env": {"FAKE_VLLM_TOKEN_DELAY": "0.3"}}})
    client = await start(aiohttp_client, config)
    await client.post("/v1/chat/completions", json=chat("a", max_tokens=1))  # load first
    loop = asyncio.get_running_loop()
    response = await client.post("/v1/chat/completions", json=chat("a", True, max_tokens=4))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    arrivals: list[float] = []
    events: list[bytes] = []
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            events.append(event)
            arrivals.append(loop.time())
    assert events[-1] == b"data: [DONE]"
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents[1:5] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    # The tokens were relayed as they came (0.3 s apart), not in one lump at the end.
    gaps = [b - a for a, b in itertools.pairwise(arrivals[1:5])]
    assert min(gaps) > 0.15, gaps


async def test_aliases_and_latest_tag_reach_the_model(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, fake_config({"a": {"aliases": ["alpha"]}}))
    for name in ("alpha", "a:latest"):
        response = await client.post("/v1/chat/completions", json=chat(name))
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"", 400, "missing request body"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": 7}', 400, "model must be a string"),
        (b'{"model": "nope"}', 404, "does not exist"),
        (b'{"model": "../../etc/passwd"}', 404, "does not exist"),
    ],
)
async def test_bad_input_gets_openai_errors_and_starts_nothing(
    aiohttp_client: ClientFactory, body: bytes, status: int, fragment: str
) -> None:
    client = await start(aiohttp_client, fake_config({"a": {}}))
    response = await client.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == status
    error = (await response.json())["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert worker_of(client, "a").state is WorkerState.STOPPED


async def test_body_over_the_limit_is_413(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, fake_config({"a": {}}, max_request_bytes=4096))
    big = {"model": "a", "messages": [{"role": "user", "content": "x" * 10_000}]}
    response = await client.post("/v1/chat/completions", json=big)
    assert response.status == 413
    assert "4096" in (await response.json())["error"]["message"]
    assert worker_of(client, "a").state is WorkerState.STOPPED


async def test_unknown_routes_use_the_envelope_of_their_api(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, fake_config({"a": {}}))
    response = await client.get("/v1/nothing")
    assert response.status == 404
    assert "message" in (await response.json())["error"]
    response = await client.get("/api/nothing")
    assert response.status == 404
    assert isinstance((await response.json())["error"], str)
    response = await client.get("/v1/chat/completions")
    assert response.status == 405
    assert (await client.get("/")).status == 200
    assert (await client.head("/")).status == 200


async def test_failed_load_is_503_with_the_workers_last_lines(
    aiohttp_client: ClientFactory,
) -> None:
    client = await start(
        aiohttp_client, fake_config({"a": {"env": {"FAKE_VLLM_CRASH_AT_START": "1"}}})
    )
    response = await client.post("/v1/chat/completions", json=chat("a"))
    assert response.status == 503
    error = (await response.json())["error"]
    assert error["code"] == "model_load_failed"
    assert "fake crash at start" in error["message"]
    assert worker_of(client, "a").state is WorkerState.FAILED


async def test_worker_dying_mid_stream_ends_the_stream_with_an_error_event(
    aiohttp_client: ClientFactory,
) -> None:
    config = fake_config({"a": {"env": {"FAKE_VLLM_CRASH_AFTER_CHUNKS": "2"}}})
    client = await start(aiohttp_client, config)
    response = await client.post("/v1/chat/completions", json=chat("a", True, max_tokens=8))
    assert response.status == 200
    text = (await asyncio.wait_for(response.read(), 10)).decode()
    events = [e for e in text.split("\n\n") if e]
    assert '"tok1 "' in text
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "worker_error"
    assert "[DONE]" not in text
    # The next request finds the worker failed and starts a new one.
    response = await client.post("/v1/chat/completions", json=chat("a", max_tokens=1))
    assert response.status == 200


async def test_killed_worker_is_replaced_by_the_next_request(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, fake_config({"a": {}}))
    assert (await client.post("/v1/chat/completions", json=chat("a"))).status == 200
    old_pid = (await fake_stats(client, "a"))["pid"]
    os.kill(old_pid, signal.SIGKILL)
    response = await client.post("/v1/chat/completions", json=chat("a"))
    assert response.status == 200
    assert (await fake_stats(client, "a"))["pid"] != old_pid


async def test_client_disconnect_closes_the_upstream_request(aiohttp_client: ClientFactory) -> None:
    config = fake_config({"a": {"env": {"FAKE_VLLM_TOKEN_DELAY": "0.2"}}})
    client = await start(aiohttp_client, config)
    await client.post("/v1/chat/completions", json=chat("a", max_tokens=1))
    response = await client.post("/v1/chat/completions", json=chat("a", True, max_tokens=100))
    await response.content.readany()
    response.close()  # the client goes away mid-generation

    async def aborted() -> dict[str, Any] | None:
        stats = await fake_stats(client, "a")
        return stats if stats["aborted"] == 1 else None

    stats = await eventually(aborted, what="the worker saw the upstream request aborted")
    assert stats["aborted"] == 1 and stats["running"] == 0
    # Counted as the client's doing (499, as nginx and Ollama), not as a server error.
    metrics = await (await client.get("/metrics")).text()
    assert 'status="499"' in metrics and 'status="500"' not in metrics


async def test_idle_worker_is_stopped_after_keep_alive(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, fake_config({"a": {"keep_alive": "1s"}, "b": {}}))
    # b first: a's second of keep-alive must not run out while another model loads (one took
    # 1.35 s on a loaded host).
    assert (await client.post("/v1/chat/completions", json=chat("b"))).status == 200
    assert (await client.post("/v1/chat/completions", json=chat("a"))).status == 200
    worker = worker_of(client, "a")
    assert worker.is_ready
    await eventually(lambda: worker.state is WorkerState.STOPPED, what="keep_alive expiry")
    assert worker_of(client, "b").is_ready  # default keep_alive (5 minutes) not reached
    # And it loads again on demand.
    assert (await client.post("/v1/chat/completions", json=chat("a"))).status == 200


async def test_busy_worker_is_not_expired_mid_request(aiohttp_client: ClientFactory) -> None:
    config = fake_config({"a": {"keep_alive": "0.3s", "env": {"FAKE_VLLM_TOKEN_DELAY": "0.2"}}})
    client = await start(aiohttp_client, config)
    response = await client.post("/v1/chat/completions", json=chat("a", True, max_tokens=8))
    text = (await response.read()).decode()  # 1.6 s of generation, over 5 keep-alives
    assert text.rstrip().endswith("data: [DONE]")


async def test_max_parallel_bounds_requests_per_model(aiohttp_client: ClientFactory) -> None:
    config = fake_config({"a": {"max_parallel": 2, "env": {"FAKE_VLLM_TOKEN_DELAY": "0.1"}}})
    client = await start(aiohttp_client, config)
    await client.post("/v1/chat/completions", json=chat("a", max_tokens=1))
    peak = 0

    async def watch() -> None:  # samples the worker's own count while the requests run
        nonlocal peak
        while True:
            peak = max(peak, (await fake_stats(client, "a"))["running"])
            await asyncio.sleep(0.05)  # a sampling period, not a wait for anything

    watcher = asyncio.create_task(watch())
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=chat("a", max_tokens=5)) for _ in range(6))
    )
    watcher.cancel()
    assert [r.status for r in responses] == [200] * 6
    assert peak == 2


@pytest.mark.parametrize(
    ("path", "body", "end"),
    [
        ("/v1/responses", {"input": "hi", "stream": True}, b"event: response.completed"),
        ("/v1/messages", {"max_tokens": 8, "stream": True, "messages": [
            {"role": "user", "content": "hi"}]}, b"event: message_stop"),
    ],
)  # fmt: skip
async def test_a_client_leaving_after_the_whole_answer_is_not_a_499(
    aiohttp_client: ClientFactory, path: str, body: dict[str, Any], end: bytes
) -> None:
    """Codex closes its connection as soon as it reads `response.completed`, before the
    stream's own end: the whole answer went out, so it is a 200 (and its tokens count)."""
    client = await start(aiohttp_client, fake_config({"a": {"env": {"FAKE_VLLM_END_DELAY": "5"}}}))
    response = await client.post(path, json={"model": "a", **body})
    assert response.status == 200
    received = b""
    while end not in received:
        received += await response.content.readany()
    response.close()  # the client leaves, its answer whole; the worker's stream has not ended

    async def recorded() -> str | None:
        text = await (await client.get("/metrics")).text()
        return text if f'endpoint="{path}",model="a",status=' in text else None

    metrics = await eventually(recorded, what="the request is recorded")
    lines = [line for line in metrics.splitlines() if f'endpoint="{path}"' in line]
    assert any('status="200"' in line for line in lines), lines
    assert not any('status="499"' in line for line in lines), lines
