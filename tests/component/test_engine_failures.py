"""What vLLM does when it fails, and what each API's client gets then: fake workers that hang,
stall mid-stream, send vLLM's in-band error event, answer 5xx, or refuse a field as vLLM does.

Statuses a client gets for a vLLM failure (decided here, documented in docs/API.md):
- `/v1/*` (relayed): vLLM's own status and body, unchanged: a 500 stays a 500, a 503 a 503, both in
  OpenAI's envelope already (the OpenAI SDKs retry both). A stream that already began carries
  vLLM's in-band error event unchanged.
- Ollama's `/api/chat` and `/api/generate` (translated): vLLM's message in Ollama's `{"error"}`,
  with 400 for what vLLM refused as a bad request, 503 for its 503 (retry: vLLM's
  `RetryableRequestError`), 502 for its other failures (the engine broke), before the first line
  or as vLLM's in-band event with `stream: false`; after the first line, a last `{"error"}` line.
- A worker silent past `stream_idle_timeout`: 504 `worker_timeout` before the first byte; after
  it, an in-band error event (`/v1`) or a last `{"error"}` line (Ollama); vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, eventually, fake_config
from tests.fake_vllm import ENGINE_ERROR
from vllama.api.app import build_app
from vllama.engine import worker as worker_module
from vllama.engine.states import WorkerState

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

IDLE = 0.5  # stream_idle_timeout in these tests, seconds
STALLED = IDLE + 10.0  # a broken idle timeout fails a test by this deadline instead of hanging it
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start(
    aiohttp_client: ClientFactory, tmp_path: Path, env: dict[str, str], **server: Any
) -> Client:
    config = fake_config(
        {"a": {"env": env}},
        models_dir=str(tmp_path / "models"),
        stream_idle_timeout=IDLE,
        **server,
    )
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


def body_for(path: str, stream: bool, max_tokens: int = 6, **fields: Any) -> dict[str, Any]:
    if path == "/api/generate":
        return {
            "model": "a",
            "prompt": "hi",
            "stream": stream,
            "options": {"num_predict": max_tokens},
        }
    if path == "/api/chat":
        return {"model": "a", "messages": MESSAGES, "stream": stream, **fields}
    body = {"model": "a", "max_tokens": max_tokens, "stream": stream, **fields}
    return body | ({"prompt": "hi"} if path == "/v1/completions" else {"messages": MESSAGES})


async def post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """The status and the whole body of one request, within `STALLED`."""
    async with asyncio.timeout(STALLED):
        response = await client.post(path, json=body)
        return response.status, await response.read()


async def fake_stats(client: Client) -> dict[str, Any]:
    async with client.session.get(f"{WorkerView(client.app, 'a').base_url}/fake/stats") as answer:
        stats: dict[str, Any] = await answer.json()
        return stats


async def wait_aborted(client: Client, count: int) -> None:
    """The fake saw `count` requests go away mid-stream (vllama closed the upstream)."""

    async def settled() -> dict[str, Any] | None:
        stats = await fake_stats(client)
        return stats if stats["aborted"] >= count and stats["running"] == 0 else None

    stats = await eventually(settled, within=5, what=f"{count} request(s) aborted upstream")
    assert stats["aborted"] == count


def ndjson_lines(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def sse_data(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n\n") if line.startswith("data: ")]


# -- a hung /health ---------------------------------------------------------------------------


async def test_a_hung_health_check_fails_the_worker_and_the_next_request_restarts_it(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's engine can hang with its API server up: /health then never answers. The probe's
    timeout (10 s in production, a constant) is shortened here; 3 silent probes fail the worker,
    its process is stopped, and the next request starts a fresh one."""
    monkeypatch.setattr(worker_module, "_HEALTH_TIMEOUT", 0.3)
    env = {"FAKE_VLLM_HEALTH_HANG_AFTER": "1"}
    client = await start(aiohttp_client, tmp_path, env, health_interval=0.2, crash_loop_window=0.1)
    first = await client.post("/v1/chat/completions", json=body_for("/v1/chat/completions", False))
    assert first.status == 200
    worker = WorkerView(client.app, "a")
    old_pid = worker.pid
    # 1 s to hang, then 3 x (0.2 s + 0.3 s)
    await eventually(lambda: worker.state is WorkerState.FAILED, what="the worker failed")
    assert "health check failed 3 times" in worker.status.reason
    # Stopped (SIGTERM; the fake's hung handlers do not hold it up), not left hanging.
    await eventually(lambda: not psutil.pid_exists(old_pid), within=5, what="the old worker gone")
    again = await client.post("/api/chat", json=body_for("/api/chat", False))
    assert again.status == 200, await again.text()
    assert worker.is_ready and worker.pid != old_pid


# -- a worker that stalls mid-stream ----------------------------------------------------------


async def test_a_v1_stream_that_stalls_ends_with_an_in_band_error_and_is_aborted(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_HANG_AFTER_CHUNKS": "2"})
    path = "/v1/chat/completions"
    assert (await post(client, path, body_for(path, False)))[0] == 200  # loaded; whole answers
    began = time.monotonic()
    status, raw = await post(client, path, body_for(path, True))
    elapsed = time.monotonic() - began
    assert status == 200
    assert IDLE <= elapsed < IDLE + 3.0  # one idle timeout (and a slow host's margin)
    events = sse_data(raw)
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "tok0 ", "tok1 "]  # the role chunk, then the 2 chunks sent
    error = json.loads(events[-1])["error"]
    assert error["code"] == "worker_timeout" and error["type"] == "server_error"
    assert f"sent nothing for {IDLE:g}s" in error["message"]
    assert "[DONE]" not in events
    await wait_aborted(client, 1)


async def test_a_v1_stream_whose_headers_never_come_is_a_504(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_HANG_AFTER_CHUNKS": "-1"})
    status, raw = await post(client, "/v1/completions", body_for("/v1/completions", True))
    assert status == 504
    error = json.loads(raw)["error"]
    assert error["code"] == "worker_timeout" and f"{IDLE:g}s" in error["message"]
    await wait_aborted(client, 1)
    assert WorkerView(client.app, "a").is_ready  # a stalled request does not fail the worker


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_an_ollama_stream_that_stalls_ends_with_an_error_line(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_HANG_AFTER_CHUNKS": "2"})
    status, raw = await post(client, path, body_for(path, True))
    assert status == 200
    lines = ndjson_lines(raw)
    assert len(lines) == 3 and not any(line.get("done") for line in lines)
    assert f"sent nothing for {IDLE:g}s" in lines[-1]["error"]
    await wait_aborted(client, 1)


@pytest.mark.parametrize(
    ("path", "stream", "chunks"),
    [
        ("/api/chat", False, "2"),
        ("/api/generate", False, "2"),
        ("/api/chat", True, "0"),  # nothing streamed yet: no line went out, a plain error
        ("/api/generate", True, "-1"),
    ],
)
async def test_an_ollama_answer_that_stalls_before_any_line_is_a_504(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str, stream: bool, chunks: str
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_HANG_AFTER_CHUNKS": chunks})
    status, raw = await post(client, path, body_for(path, stream))
    assert status == 504
    assert f"sent nothing for {IDLE:g}s" in json.loads(raw)["error"]  # one JSON object
    await wait_aborted(client, 1)


async def test_a_non_streamed_v1_request_has_no_idle_deadline(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """vLLM sends a whole answer at the end: a generation longer than stream_idle_timeout is
    fine when not streamed."""
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_TOKEN_DELAY": "0.2"})
    path = "/v1/chat/completions"
    response = await client.post(path, json=body_for(path, False, max_tokens=4))  # 0.8 s
    assert response.status == 200
    answer = await response.json()
    assert answer["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
    slow_stream = await client.post(path, json=body_for(path, True, max_tokens=4))
    assert sse_data(await slow_stream.read())[-1] == "[DONE]"  # 0.2 s gaps: under the limit


# -- vLLM's in-band error event ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_an_in_band_error_on_ollama_paths(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_ERROR_AFTER_CHUNKS": "2"})
    streamed = await client.post(path, json=body_for(path, True))
    assert streamed.status == 200
    lines = ndjson_lines(await streamed.read())
    assert len(lines) == 3 and not any(line.get("done") for line in lines)
    assert lines[-1] == {"error": "Internal server error"}  # vLLM's message, as Ollama's line
    whole = await client.post(path, json=body_for(path, False))
    assert whole.status == 502  # vLLM's 500: the engine failed, not the client
    assert await whole.json() == {"error": "Internal server error"}
    assert WorkerView(client.app, "a").is_ready


async def test_an_in_band_error_before_any_line_is_a_plain_error(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_ERROR_AFTER_CHUNKS": "0"})
    response = await client.post("/api/chat", json=body_for("/api/chat", True))
    assert response.status == 502
    assert await response.json() == {"error": "Internal server error"}


async def test_an_in_band_error_is_relayed_unchanged_on_v1(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_ERROR_AFTER_CHUNKS": "2"})
    response = await client.post(
        "/v1/chat/completions", json=body_for("/v1/chat/completions", True)
    )
    assert response.status == 200
    raw = await response.read()
    assert raw.endswith(b"data: " + json.dumps(ENGINE_ERROR).encode() + b"\n\ndata: [DONE]\n\n")
    assert len(sse_data(raw)) == 5  # role, 2 chunks, the error, [DONE]


# -- vLLM refuses before the first byte (5xx) -------------------------------------------------

OLLAMA_STATUS = {500: 502, 503: 503}
VLLM_MESSAGE = {
    500: "EngineCore encountered an issue. See stack trace for the cause.",
    503: "Request failed; please retry",
}


@pytest.mark.parametrize("status", [500, 503])
async def test_a_vllm_5xx_reaches_each_api_in_its_envelope(
    aiohttp_client: ClientFactory, tmp_path: Path, status: int
) -> None:
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_FAIL_STATUS": str(status)})
    for path in ("/api/chat", "/api/generate"):
        for stream in (True, False):
            response = await client.post(path, json=body_for(path, stream))
            assert response.status == OLLAMA_STATUS[status], (path, stream)
            assert await response.json() == {"error": VLLM_MESSAGE[status]}, (path, stream)
    for path in ("/v1/chat/completions", "/v1/completions"):
        for stream in (True, False):
            response = await client.post(path, json=body_for(path, stream))
            assert response.status == status, (path, stream)
            assert response.content_type == "application/json"
            error = (await response.json())["error"]  # vLLM's own body, unchanged
            assert (error["message"], error["code"]) == (VLLM_MESSAGE[status], status)
    assert WorkerView(client.app, "a").is_ready  # /health still answers: the worker stays


# -- fields vLLM refuses ----------------------------------------------------------------------

V1_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"top_p": 5}, "top_p must be in (0, 1]"),
    ({"temperature": 3}, "temperature must be in [0, 2]"),
    ({"temperature": "hot"}, "valid number"),
    ({"top_k": -2}, "top_k must be 0 (disable), or at least 1"),
    ({"top_k": 1.5}, "valid integer"),
    ({"min_p": 2}, "min_p must be in [0, 1]"),
    ({"presence_penalty": 3}, "presence_penalty must be in [-2, 2]"),
    ({"frequency_penalty": -3}, "frequency_penalty must be in [-2, 2]"),
    ({"repetition_penalty": 0}, "repetition_penalty must be greater than zero"),
    ({"seed": 2**64}, "between"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"n": 0}, "n must be at least 1"),
    ({"logprobs": True, "top_logprobs": 21}, "greater than max allowed: 20"),
    ({"top_logprobs": 5}, "`logprobs` must be set to true"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"stream_options": {"include_usage": True}}, "only be defined when `stream=True`"),
    ({"chat_template_kwargs": "x"}, "valid dictionary"),
    ({"truncate_prompt_tokens": 100_000}, "cannot be greater than max_model_len"),
]


async def test_fields_vllm_refuses_are_400s_in_each_apis_envelope(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, {})
    path = "/v1/chat/completions"
    for fields, fragment in V1_REFUSED:
        response = await client.post(path, json=body_for(path, False, **fields))
        assert response.status == 400, fields
        error = (await response.json())["error"]  # vLLM's error, relayed as it is
        assert fragment in error["message"] and error["code"] == 400, (fields, error)
    named = await client.post(path, json=body_for(path, False, top_p=5))
    assert (await named.json())["error"]["param"] == "top_p"  # vLLM's, not rewritten
    unknown = await client.post(path, json=body_for(path, False, no_such_field=1))
    assert unknown.status == 200  # vLLM ignores unknown fields
    # Ollama's options reach vLLM as its sampling parameters; vllama checks their types only.
    for options, fragment in [
        ({"top_p": 5}, "top_p must be in (0, 1]"),
        ({"temperature": 3}, "temperature must be in [0, 2]"),
        ({"repeat_penalty": 0}, "repetition_penalty must be greater than zero"),
    ]:
        for ollama_path in ("/api/chat", "/api/generate"):
            body = body_for(ollama_path, False) | {"options": options}
            response = await client.post(ollama_path, json=body)
            assert response.status == 400, (ollama_path, options)
            assert fragment in (await response.json())["error"], (ollama_path, options)
    assert WorkerView(client.app, "a").is_ready


# -- a worker that accepts and drops every request ----------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate"])
async def test_a_dropped_connection_is_retried_once_then_a_502(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str
) -> None:
    """The first drop looks like a worker that died since it was last seen: vllama checks its
    health and sends the request once more. /health answers, so the worker stays, and the second
    drop is the client's 502 in its API's envelope."""
    client = await start(aiohttp_client, tmp_path, {"FAKE_VLLM_DROP_CONNECTIONS": "1"})
    status, raw = await post(client, path, body_for(path, False))
    assert status == 502, raw
    answer = json.loads(raw)
    if path.startswith("/api/"):
        assert "did not answer" in answer["error"]
    else:
        assert answer["error"]["code"] == "worker_error"
    assert (await fake_stats(client))["requests"] == 2  # sent twice: one retry, no more
    assert WorkerView(client.app, "a").is_ready
