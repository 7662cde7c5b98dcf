"""Metrics, request ids, access logs and worker logs, against fake workers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.component.fakes import (
    WorkerView,
    eventually,
    eventually_blocking,
    fake_config,
    worker_ports,
)
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import Daemon, free_port, write_config
from vllama.api.app import build_app
from vllama.api.keys import SERVICES
from vllama.engine.states import WorkerState

Client = TestClient[web.Request, web.Application]


async def start(aiohttp_client: Any, models: dict[str, dict[str, Any]], **server: Any) -> Client:
    app = build_app(fake_config(models, **server))
    client: Client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    return client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


async def scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return await response.text()


async def test_metrics_after_real_traffic(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"a": {}, "b": {"keep_alive": "0.2s"}})
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert (await client.post("/v1/chat/completions", json=chat)).status == 200
    streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    assert await (await client.post("/v1/chat/completions", json=streamed)).read()
    ollama = {"model": "a", "prompt": "hi there", "options": {"num_predict": 2}}
    assert await (await client.post("/api/generate", json=ollama)).read()
    assert (await client.post("/v1/completions", json={"model": "nope"})).status == 404
    assert (await client.post("/v1/completions", json={"model": "b", "prompt": "x"})).status == 200
    b = WorkerView(client.app, "b")
    await eventually(lambda: b.state is WorkerState.STOPPED, what="b's keep-alive (0.2 s) ran out")
    await client.app[SERVICES].metrics.sample(client.app[SERVICES].upstream)
    text = await scrape(client)
    ok = {"model": "a", "endpoint": "/v1/chat/completions", "status": "200"}
    assert value(text, "vllama_requests_total", **ok) == 2
    assert value(text, "vllama_requests_total", model="", endpoint="/v1/completions",
                 status="404") == 1  # fmt: skip
    assert value(text, "vllama_request_duration_seconds_count", model="a",
                 endpoint="/v1/chat/completions") == 2  # fmt: skip
    assert value(text, "vllama_time_to_first_token_seconds_count", model="a",
                 endpoint="/v1/chat/completions") == 1  # only the streamed one  # fmt: skip
    assert value(text, "vllama_time_to_first_token_seconds_count", model="a",
                 endpoint="/api/generate") == 1  # fmt: skip
    # Tokens: 3 + 3 (OpenAI, plain and streamed with usage) + 2 (Ollama).
    assert value(text, "vllama_generated_tokens_total", model="a") == 8
    assert (value(text, "vllama_prompt_tokens_total", model="a") or 0) > 0
    assert value(text, "vllama_model_loads_total", model="a", result="ok") == 1
    assert (value(text, "vllama_model_load_duration_seconds_count", model="a")) == 1
    assert value(text, "vllama_model_evictions_total", model="b", reason="keep_alive") == 1
    assert value(text, "vllama_model_state", model="a", state="ready") == 1
    assert value(text, "vllama_model_state", model="b", state="stopped") == 1
    assert value(text, "vllama_requests_in_flight", model="a") == 0
    assert value(text, "vllama_queue_depth") == 0
    assert (value(text, "vllama_model_memory_bytes", model="a", device="cpu") or 0) > 0
    assert (value(text, "vllama_device_memory_total_bytes", device="cpu") or 0) > 0
    # The worker's own (vLLM) metrics come through the same scrape, labelled by model.
    assert value(text, "vllm:num_requests_running", model_name="a") == 0


async def test_metrics_answer_while_a_worker_is_loading(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"slow": {"env": {"FAKE_VLLM_START_DELAY": "3"}}})
    body = {"model": "slow", "prompt": "x", "max_tokens": 1}
    pending = asyncio.create_task(client.post("/v1/completions", json=body))
    slow = WorkerView(client.app, "slow")
    await eventually(lambda: slow.state is WorkerState.STARTING, what="the load under way")
    loop = asyncio.get_running_loop()
    began = loop.time()
    parts = client.app[SERVICES]
    await parts.metrics.sample(parts.upstream)  # a loading worker is skipped
    text = await scrape(client)
    assert loop.time() - began < 1.0
    assert value(text, "vllama_model_state", model="slow", state="starting") == 1
    assert value(text, "vllama_requests_waiting", model="slow") == 1
    assert (await pending).status == 200


async def test_request_ids_on_responses_and_upstream(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"a": {}})

    async def upstream_id() -> str:
        """The X-Request-Id the worker received with the last inference request."""
        url = f"{WorkerView(client.app, 'a').base_url}/fake/last_headers"
        async with client.session.get(url) as answer:
            headers: dict[str, str] = await answer.json()
        return headers["x-request-id"]

    response = await client.post(
        "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 1}
    )
    generated = response.headers["X-Request-Id"]
    assert len(generated) == 32
    assert await upstream_id() == generated  # one id in vllama's and vLLM's logs
    streamed = await client.post(
        "/api/generate",
        json={"model": "a", "prompt": "x"},
        headers={"X-Request-Id": "client-id-42"},
    )
    assert streamed.headers["X-Request-Id"] == "client-id-42"  # a client's own id is kept
    await streamed.read()
    assert await upstream_id() == "client-id-42"  # and passed on, translated paths included
    bad = await client.get("/", headers={"X-Request-Id": "no spaces allowed here"})
    assert bad.headers["X-Request-Id"] != "no spaces allowed here"


async def test_worker_logs_endpoint(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"a": {}})
    await client.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 1})
    body = await (await client.get("/api/vllama/logs", params={"model": "a", "lines": "5"})).json()
    assert body["model"] == "a" and 0 < len(body["lines"]) <= 5
    everything = await (await client.get("/api/vllama/logs?model=a&lines=100")).json()
    assert any("Application startup complete" in line for line in everything["lines"])
    assert (await client.get("/api/vllama/logs?model=zzz")).status == 404


def test_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "v.toml",
        {"engine_command": FAKE_ENGINE_COMMAND, **worker_ports()},
        {"a": {"model": "fake/a"}},
    )
    with Daemon(config, free_port(), tmp_path / "v.log") as daemon:
        response = httpx.post(
            daemon.url + "/v1/completions",
            json={"model": "a", "prompt": "x", "max_tokens": 1},
            headers={"X-Request-Id": "trace-me-7"},
            timeout=60,
        )
        assert response.status_code == 200
        daemon.terminate()
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "trace-me-7"]
    assert any(line["event"] == "request" and line["status"] == 200 for line in mine)
    assert any(line["event"] == "worker state" for line in mine)  # the load it caused
    assert any(line["event"] == "worker output" and line["model"] == "a" for line in lines)


async def test_tokens_of_anthropics_messages_and_the_responses_api_are_counted(
    aiohttp_client: Any,
) -> None:
    # Issue 20: the status page showed no tokens for these two, and the metrics counted none.
    # Their usage names input_tokens/output_tokens; streamed, Anthropic's is in message_start
    # and message_delta, the Responses API's in the last event (response.completed).
    client = await start(aiohttp_client, {"a": {}})
    say = [{"role": "user", "content": "one two three"}]  # the fake counts 3 prompt tokens
    calls: list[tuple[str, dict[str, Any], int]] = [
        ("/v1/messages", {"messages": say, "max_tokens": 5}, 5),
        ("/v1/responses", {"input": "one two three", "max_output_tokens": 4}, 4),
        ("/v1/responses", {"input": "one two three"}, 8),  # the fake's default answer
    ]
    live = client.app[SERVICES].live
    generated = 0
    for path, body, tokens in calls:
        for stream in (False, True):
            answer = await client.post(path, json={"model": "a", **body, "stream": stream})
            assert answer.status == 200, await answer.text()
            raw = await answer.read()
            assert (b"event: " in raw) is stream
            generated += tokens
            record = live.recent[-1]
            assert (record["endpoint"], record["tokens"]) == (path, tokens), (record, stream)
            text = await scrape(client)
            assert value(text, "vllama_generated_tokens_total", model="a") == generated
            # 3 prompt tokens for each request so far
            assert value(text, "vllama_prompt_tokens_total", model="a") == 3 * len(live.recent)
    # A stored response read again (GET by id) generated nothing: not counted again.
    answer = await client.post("/v1/responses", json={"model": "a", "input": "one two three"})
    counted = value(await scrape(client), "vllama_generated_tokens_total", model="a")
    stored = await client.get(f"/v1/responses/{(await answer.json())['id']}")
    assert stored.status == 200 and (await stored.json())["usage"]["output_tokens"] == 8
    text = await scrape(client)
    assert value(text, "vllama_generated_tokens_total", model="a") == counted
    assert not value(text, "vllama_generated_tokens_total", model="")  # (no model named)


def test_nanobinds_leak_report_at_an_engines_exit_is_one_line_in_the_log(tmp_path: Path) -> None:
    # Issue 20: vLLM's engine prints ~60 lines of nanobind's leak report when it exits, and each
    # landed in the daemon's log. They stay in `vllama logs`; the log counts them in one line.
    config = write_config(
        tmp_path / "v.toml",
        {"engine_command": FAKE_ENGINE_COMMAND, **worker_ports()},
        {"a": {"model": "fake/a", "env": {"FAKE_VLLM_NANOBIND_AT_EXIT": "60"}}},
    )
    with Daemon(config, free_port(), tmp_path / "v.log") as daemon:
        body = {"model": "a", "prompt": "x", "stream": False, "keep_alive": 0}
        assert httpx.post(daemon.url + "/api/generate", json=body, timeout=60).is_success

        def unloaded() -> bool:
            return not httpx.get(daemon.url + "/api/ps", timeout=10).json()["models"]

        eventually_blocking(unloaded, within=20)

        def leaked_lines() -> int:
            url = daemon.url + "/api/vllama/logs?model=a&lines=500"
            tail = httpx.get(url, timeout=10).json()
            return sum(" - leaked " in line for line in tail["lines"])

        # All of it, here (read once the stopped worker's output has been read to its end).
        eventually_blocking(lambda: leaked_lines() == 55, within=20, what="the whole report")
        assert leaked_lines() == 55
        body["keep_alive"] = "5m"  # loaded again: the shutdown stops it
        assert httpx.post(daemon.url + "/api/generate", json=body, timeout=60).is_success
        daemon.terminate()
    text = daemon.log()
    assert text.count("leaked") == 0, text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == len(text.splitlines())  # nothing raw
    said = [line for line in lines if line["event"] == "worker output suppressed"]
    assert [(line["model"], line["lines"]) for line in said] == [("a", 60), ("a", 60)], said
    assert all("nanobind" in line["why"] for line in said)
