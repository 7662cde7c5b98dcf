"""Ollama's native API (`/api/*`) through the aiohttp app, against fake vLLM workers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, eventually, fake_config
from tests.fake_hf import point_hub_at
from vllama.api.app import build_app
from vllama.api.keys import SERVICES
from vllama.config.settings import Config
from vllama.engine.states import WorkerState

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

NDJSON = "application/x-ndjson"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_FLAG = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


@pytest.fixture(autouse=True)
def no_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hugging Face cache is an empty folder: only configured models exist."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def config(tmp_path: Path, models: dict[str, dict[str, Any]], **server: Any) -> Config:
    """Fake workers; derived models go to a models folder under tmp_path, never ~/.vllama."""
    return fake_config(models, models_dir=str(tmp_path / "models"), **server)


def model_folder(tmp_path: Path, context_length: int = 2048) -> str:
    """A local model folder (config.json only): vllama knows its context length without a
    worker. The fake ignores --model."""
    folder = tmp_path / "disk-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "max_position_embeddings": context_length,
            }
        )
    )
    return str(folder)


async def start(aiohttp_client: ClientFactory, cfg: Config) -> Client:
    return await aiohttp_client(build_app(cfg), server_kwargs={"handler_cancellation": True})


def worker_of(client: Client, name: str) -> WorkerView:
    return WorkerView(client.app, name)


async def last_request(client: Client, name: str) -> dict[str, Any]:
    """The body vllama last sent to the model's fake worker."""
    async with client.session.get(f"{worker_of(client, name).base_url}/fake/last_request") as r:
        body: dict[str, Any] = await r.json()
        return body


async def ndjson_lines(response: ClientResponse, within: float = 15) -> list[dict[str, Any]]:
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith(NDJSON)
    text = (await asyncio.wait_for(response.read(), within)).decode()
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert all(lines), "an empty line in the NDJSON stream"
    return [json.loads(line) for line in lines]


async def json_of(response: ClientResponse, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    return await response.json()


def assert_final(obj: dict[str, Any], reason: str = "stop") -> None:
    assert obj["done"] is True
    assert obj["done_reason"] == reason
    assert RFC3339_Z.match(obj["created_at"])
    for key in METRICS:
        value = obj[key]
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, key
    assert obj["total_duration"] > 0


async def wait_for_state(worker: Any, state: WorkerState, seconds: float = 10) -> None:
    await eventually(lambda: worker.state is state, within=seconds, what=f"the worker {state}")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- inference --------------------------------------------------------------------------------


async def test_generate_streams_ndjson_ending_with_metrics(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    response = await client.post(
        "/api/generate", json={"model": "a", "prompt": "hi there", "options": {"num_predict": 3}}
    )
    lines = await ndjson_lines(response)
    *pieces, final = lines
    assert [p["response"] for p in pieces] == ["tok0 ", "tok1 ", "tok2 "]
    for piece in pieces:
        assert piece["done"] is False and piece["model"] == "a"
        assert RFC3339_Z.match(piece["created_at"])
    assert final["response"] == "" and final["model"] == "a"
    assert_final(final, "length")
    assert (final["prompt_eval_count"], final["eval_count"]) == (2, 3)
    sent = await last_request(client, "a")
    assert sent["messages"] == [{"role": "user", "content": "hi there"}]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_generate_not_streamed_is_one_object(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    response = await client.post(
        "/api/generate",
        json={"model": "a", "prompt": "hi", "stream": False, "system": "Be brief."},
    )
    body = await json_of(response)
    assert body["response"] == "".join(f"tok{i} " for i in range(8))
    assert body["model"] == "a"
    assert_final(body)
    assert body["eval_count"] == 8
    sent = await last_request(client, "a")
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    # Raw mode goes to /v1/completions with the prompt as given.
    prompt = "<|user|>\n  exactly this\n<|assistant|>"
    body = await json_of(
        await client.post(
            "/api/generate",
            json={"model": "a", "prompt": prompt, "raw": True, "stream": False},
        )
    )
    assert body["response"].startswith("tok0 ")
    sent = await last_request(client, "a")
    assert sent["prompt"] == prompt and "messages" not in sent


async def test_chat_streamed_and_not(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "again"},
    ]
    payload = {"model": "a", "messages": messages, "options": {"num_predict": 2}}
    lines = await ndjson_lines(await client.post("/api/chat", json=payload))
    *pieces, final = lines
    assert [p["message"] for p in pieces] == [
        {"role": "assistant", "content": "tok0 "},
        {"role": "assistant", "content": "tok1 "},
    ]
    assert all(p["done"] is False for p in pieces)
    assert final["message"] == {"role": "assistant", "content": ""}
    assert_final(final, "length")
    assert (await last_request(client, "a"))["messages"] == messages
    body = await json_of(await client.post("/api/chat", json=payload | {"stream": False}))
    assert body["message"] == {"role": "assistant", "content": "tok0 tok1 "}
    assert_final(body, "length")


async def test_options_reach_vllm_under_their_names_and_stop_is_honoured(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    options = {
        "num_predict": 6,
        "temperature": 0.25,
        "top_p": 0.5,
        "top_k": 7,
        "min_p": 0.1,
        "seed": 42,
        "repeat_penalty": 1.3,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.4,
        "stop": "tok3",
        "num_ctx": 1024,
        "num_gpu": 99,  # ignored, as Ollama ignores options its runner does not use
    }
    body = await json_of(
        await client.post(
            "/api/generate",
            json={"model": "a", "prompt": "count", "options": options, "stream": False},
        )
    )
    assert body["response"] == "tok0 tok1 tok2 "
    assert body["done_reason"] == "stop"
    sent = await last_request(client, "a")
    expected = {
        "max_tokens": 6,
        "temperature": 0.25,
        "top_p": 0.5,
        "top_k": 7,
        "min_p": 0.1,
        "seed": 42,
        "repetition_penalty": 1.3,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.4,
        "stop": ["tok3"],
    }
    assert {key: sent.get(key) for key in expected} == expected
    for absent in ("num_ctx", "num_predict", "num_gpu", "repeat_penalty", "options"):
        assert absent not in sent
    # The same options on /api/chat; a format becomes response_format.
    payload = {
        "model": "a",
        "messages": [{"role": "user", "content": "x"}],
        "options": {"temperature": 0, "stop": ["tok1", "zzz"], "num_predict": -1},
        "format": "json",
    }
    lines = await ndjson_lines(await client.post("/api/chat", json=payload))
    assert "".join(line["message"]["content"] for line in lines) == "tok0 "
    assert_final(lines[-1])
    sent = await last_request(client, "a")
    assert sent["temperature"] == 0 and sent["stop"] == ["tok1", "zzz"]
    assert "max_tokens" not in sent
    assert sent["response_format"] == {"type": "json_object"}


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    worker = worker_of(client, "a")
    body = await json_of(await client.post("/api/generate", json={"model": "a"}))
    assert body["done"] is True and body["done_reason"] == "load"
    assert body["response"] == "" and body["model"] == "a"
    assert worker.state is WorkerState.READY
    body = await json_of(
        await client.post("/api/generate", json={"model": "a", "prompt": "", "keep_alive": 0})
    )
    assert body["done_reason"] == "unload"
    await wait_for_state(worker, WorkerState.STOPPED)
    # /api/chat: no messages loads too.
    body = await json_of(await client.post("/api/chat", json={"model": "a", "messages": []}))
    assert body["done_reason"] == "load"
    assert body["message"] == {"role": "assistant", "content": ""}
    assert worker.state is WorkerState.READY
    body = await json_of(await client.post("/api/chat", json={"model": "a", "keep_alive": "0s"}))
    assert body["done_reason"] == "unload"
    await wait_for_state(worker, WorkerState.STOPPED)


async def test_keep_alive_forms_show_in_ps_expires_at(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))

    async def expires_after(keep_alive: Any) -> float:
        await json_of(
            await client.post("/api/generate", json={"model": "a", "keep_alive": keep_alive})
        )
        (entry,) = (await json_of(await client.get("/api/ps")))["models"]
        assert RFC3339_Z.match(entry["expires_at"])
        return (parse_time(entry["expires_at"]) - datetime.now(UTC)).total_seconds()

    assert 590 < await expires_after("10m") <= 600
    assert 110 < await expires_after(120) <= 120
    assert 3590 < await expires_after("1h") <= 3600
    century = 100 * 365 * 86400  # negative keep_alive: never expires, shown far in the future
    assert await expires_after(-1) > century
    assert await expires_after("-1m") > century
    for bad in ("forever", "10 minutes", True, [1], {"m": 1}):
        response = await client.post("/api/generate", json={"model": "a", "keep_alive": bad})
        error = (await json_of(response, 400))["error"]
        assert isinstance(error, str) and "keep_alive" in error


async def test_keep_alive_zero_does_not_stick_to_the_next_load(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    worker = worker_of(client, "a")
    once = {"model": "a", "prompt": "x", "stream": False, "options": {"num_predict": 1}}
    await json_of(await client.post("/api/generate", json=once | {"keep_alive": 0}))
    await wait_for_state(worker, WorkerState.STOPPED)  # unloaded right after, as asked
    await json_of(await client.post("/api/generate", json=once))  # default keep_alive: 5m
    # Its unload is planned 5 minutes out (a keep_alive 0 that stuck would plan it for now).
    running = (await json_of(await client.get("/api/ps")))["models"]
    assert len(running) == 1, "unloaded right after the request: the keep_alive 0 stuck"
    left = (parse_time(running[0]["expires_at"]) - datetime.now(UTC)).total_seconds()
    assert 290 < left <= 300
    assert worker.state is WorkerState.READY


async def test_unknown_model_is_404_in_ollamas_envelope(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    for path, body in (
        ("/api/generate", {"model": "nope", "prompt": "x"}),
        ("/api/chat", {"model": "nope", "messages": []}),
        ("/api/embed", {"model": "nope", "input": "x"}),
        ("/api/embeddings", {"model": "nope:latest", "prompt": "x"}),
        ("/api/show", {"model": "nope"}),
        ("/api/generate", {"model": "../../etc/passwd", "prompt": "x"}),
    ):
        error = (await json_of(await client.post(path, json=body), 404))["error"]
        assert isinstance(error, str) and "not found" in error, (path, error)
    assert worker_of(client, "a").state is WorkerState.STOPPED


CHAT_X = [{"role": "user", "content": "x"}]
BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], str]] = [
    ("/api/generate", b"{not json", "not valid JSON"),
    ("/api/chat", b"", "missing request body"),
    ("/api/chat", b"[1]", "JSON object"),
    ("/api/generate", {"prompt": "x"}, "model is required"),
    ("/api/chat", {"model": 3, "messages": []}, "model must be a string"),
    (
        "/api/generate",
        {"model": "a", "prompt": "x", "options": {"temperature": "hot"}},
        "temperature",
    ),
    ("/api/generate", {"model": "a", "prompt": "x", "options": {"top_k": 1.5}}, "top_k"),
    ("/api/chat", {"model": "a", "messages": CHAT_X, "options": {"seed": True}}, "seed"),
    ("/api/generate", {"model": "a", "prompt": "x", "stream": "yes"}, "stream"),
    ("/api/generate", {"model": "a", "prompt": "x", "suffix": "y"}, "suffix"),
    ("/api/generate", {"model": "a", "prompt": "x", "think": True}, "does not support thinking"),
    ("/api/generate", {"model": "a", "prompt": "x", "raw": True, "system": "s"}, "raw mode"),
    ("/api/chat", {"model": "a", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/api/chat", {"model": "a", "messages": "hello"}, "messages"),
    ("/api/chat", {"model": "a", "messages": CHAT_X, "tools": TOOLS}, "does not support tools"),
    ("/api/embed", {"model": "a", "input": [1, 2]}, "input"),
    ("/api/embed", {"model": "a", "input": "x", "dimensions": 0}, "dimensions"),
]


@pytest.mark.parametrize(("path", "body", "fragment"), BAD_REQUESTS)
async def test_bad_requests_are_400_and_start_no_worker(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str, body: bytes, fragment: str
) -> None:
    # A model folder on disk: its context length (2048) is known before any worker runs.
    client = await start(aiohttp_client, config(tmp_path, {"a": {"model": model_folder(tmp_path)}}))
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
    error = (await json_of(response, 400))["error"]
    assert isinstance(error, str) and fragment in error
    assert worker_of(client, "a").state is WorkerState.STOPPED


async def test_num_ctx_over_the_served_context_is_that_context_once_the_worker_tells_it(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    # No files on disk: the context length is only known from the worker (the fake's 512).
    client = await start(
        aiohttp_client, config(tmp_path, {"a": {"args": ["--max-model-len", "512"]}})
    )
    for num_ctx, budget in ((600, None), (512, None), (100, 100)):
        body = await json_of(
            await client.post(
                "/api/generate",
                json={
                    "model": "a",
                    "prompt": "x",
                    "options": {"num_ctx": num_ctx},
                    "stream": False,
                },
            )
        )
        assert_final(body, "stop" if budget is None else "length")
        sent = await last_request(client, "a")
        assert "num_ctx" not in sent and sent.get("max_tokens") == budget
    # A num_predict over the context is lowered to it, streamed or not.
    for stream in (True, False):
        payload = {"model": "a", "prompt": "x", "options": {"num_predict": 1000}, "stream": stream}
        assert (await client.post("/api/generate", json=payload)).status == 200
        assert (await last_request(client, "a"))["max_tokens"] == 512


async def test_options_that_are_not_an_object_are_400(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    response = await client.post(
        "/api/generate", json={"model": "a", "prompt": "x", "options": "temperature=1"}
    )
    assert response.status == 400
    assert "options" in (await response.json())["error"]
    assert worker_of(client, "a").state is WorkerState.STOPPED


async def test_tool_calls_come_back_with_object_arguments(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {"args": TOOL_FLAG}}))
    tools = [{"function": TOOLS[0]["function"]}]  # Ollama clients may leave "type" out
    payload = {
        "model": "a",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": tools,
    }
    lines = await ndjson_lines(await client.post("/api/chat", json=payload))
    calls = [line["message"]["tool_calls"] for line in lines if "tool_calls" in line["message"]]
    assert calls == [
        [
            {
                "id": "call_fake0",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ]
    ]
    assert_final(lines[-1])
    sent = await last_request(client, "a")
    assert sent["tools"] == [{"type": "function", **tools[0]}]
    body = await json_of(await client.post("/api/chat", json=payload | {"stream": False}))
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    assert_final(body)
    # The conversation goes on with the call and its result, linked by the tool's name.
    follow_up = payload | {
        "messages": [
            *payload["messages"],
            {"role": "assistant", "content": "", "tool_calls": body["message"]["tool_calls"]},
            {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
        ]
    }
    await json_of(await client.post("/api/chat", json=follow_up | {"stream": False}))
    sent = await last_request(client, "a")
    assistant, result = sent["messages"][1:]
    assert assistant["tool_calls"][0]["id"] == "call_fake0"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert result == {"role": "tool", "content": "sunny", "tool_call_id": "call_fake0"}


async def test_tool_arguments_that_are_not_an_object_still_come_back_as_one(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    spec = {"args": TOOL_FLAG, "env": {"FAKE_VLLM_TOOL_ARGS_RAW": "true"}}
    client = await start(aiohttp_client, config(tmp_path, {"a": spec}))
    payload = {"model": "a", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    lines = await ndjson_lines(await client.post("/api/chat", json=payload))
    (call,) = next(
        line["message"]["tool_calls"] for line in lines if "tool_calls" in line["message"]
    )
    assert isinstance(call["function"]["arguments"], dict)
    assert_final(lines[-1])
    body = await json_of(await client.post("/api/chat", json=payload | {"stream": False}))
    assert isinstance(body["message"]["tool_calls"][0]["function"]["arguments"], dict)


async def test_name_latest_and_aliases_resolve(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {"aliases": ["alpha"]}}))
    for name in ("a:latest", "alpha", "alpha:latest"):
        payload = {"model": name, "prompt": "x", "stream": False, "options": {"num_predict": 1}}
        body = await json_of(await client.post("/api/generate", json=payload))
        assert body["model"] == name  # answers name the model as the client did
        assert (await last_request(client, "a"))["model"] == "a"
    assert len(client.app[SERVICES].scheduler.status().models) == 1


async def test_worker_crash_mid_stream_ends_with_an_error_line(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    spec = {"env": {"FAKE_VLLM_CRASH_AFTER_CHUNKS": "2"}}
    client = await start(aiohttp_client, config(tmp_path, {"a": spec}))
    response = await client.post("/api/generate", json={"model": "a", "prompt": "x"})
    lines = await ndjson_lines(response, within=20)
    assert [line.get("response") for line in lines[:2]] == ["tok0 ", "tok1 "]
    assert set(lines[-1]) == {"error"} and isinstance(lines[-1]["error"], str)
    assert not any(line.get("done") for line in lines)
    # Not streamed: a proper error status, never a hang.
    payload = {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": False}
    response = await asyncio.wait_for(client.post("/api/chat", json=payload), 20)
    assert response.status >= 500
    assert isinstance((await response.json())["error"], str)


# -- embeddings -------------------------------------------------------------------------------


async def test_embed_and_legacy_embeddings(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"e": {}}))
    body = await json_of(await client.post("/api/embed", json={"model": "e", "input": "one two"}))
    assert body["model"] == "e"
    (vector,) = body["embeddings"]
    assert len(vector) == 16 and all(isinstance(x, float) for x in vector)
    assert body["prompt_eval_count"] == 2
    assert isinstance(body["total_duration"], int) and isinstance(body["load_duration"], int)
    sent = await last_request(client, "e")
    assert sent["input"] == ["one two"]
    texts = ["a", "b c", "d e f"]
    body = await json_of(
        await client.post("/api/embed", json={"model": "e:latest", "input": texts})
    )
    assert len(body["embeddings"]) == 3
    assert body["embeddings"][0] != body["embeddings"][1]
    assert body["prompt_eval_count"] == 6
    legacy = await json_of(await client.post("/api/embeddings", json={"model": "e", "prompt": "a"}))
    assert legacy["embedding"] == body["embeddings"][0]
    assert (
        await json_of(await client.post("/api/embeddings", json={"model": "e", "prompt": ""}))
    ) == {"embedding": []}


@pytest.mark.parametrize(
    ("path", "empty", "answer"),
    [
        ("/api/embed", {"input": []}, "embeddings"),
        ("/api/embeddings", {"prompt": ""}, "embedding"),
    ],
)
async def test_an_empty_embedding_request_loads_the_model(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str, empty: dict[str, Any], answer: str
) -> None:
    """Ollama's way to preload an embedding model: nothing to embed, so nothing is sent to the
    worker, and only the explicit load step starts it."""
    client = await start(aiohttp_client, config(tmp_path, {"e": {}}))
    assert (await json_of(await client.get("/api/ps")))["models"] == []
    body = await json_of(await client.post(path, json={"model": "e", **empty}))
    assert body[answer] == []
    assert worker_of(client, "e").state is WorkerState.READY
    (entry,) = (await json_of(await client.get("/api/ps")))["models"]
    assert entry["name"] == "e:latest"


# -- model management -------------------------------------------------------------------------


async def test_version_tags_show_and_ps(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"b": {}, "a": {"aliases": ["alpha"]}}))
    version = await json_of(await client.get("/api/version"))
    assert re.match(r"^\d+\.\d+\.\d+", version["version"])
    tags = (await json_of(await client.get("/api/tags")))["models"]
    assert [m["name"] for m in tags] == ["a:latest", "b:latest"]
    for entry in tags:
        assert entry["model"] == entry["name"]
        assert {"modified_at", "size", "digest", "details"} <= set(entry)
    assert (await json_of(await client.get("/api/ps"))) == {"models": []}
    error = (await json_of(await client.post("/api/show", json={"model": "zzz"}), 404))["error"]
    assert isinstance(error, str)
    show = await json_of(await client.post("/api/show", json={"model": "alpha"}))
    assert "completion" in show["capabilities"]
    assert show["modelfile"].startswith("FROM fake/a")
    # Load one model: only it is in ps, with its memory and context.
    await json_of(await client.post("/api/generate", json={"model": "a"}))
    (entry,) = (await json_of(await client.get("/api/ps")))["models"]
    assert entry["name"] == entry["model"] == "a:latest"
    assert isinstance(entry["size"], int) and entry["size"] > 0
    assert entry["context_length"] == 2048
    assert worker_of(client, "b").state is WorkerState.STOPPED


async def test_create_copy_and_delete_derived_models(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    create = {
        "model": "pirate",
        "from": "a",
        "system": "Talk like a pirate.",
        "parameters": {"temperature": 0.3, "num_predict": 2, "stop": ["zzz"]},
    }
    lines = await ndjson_lines(await client.post("/api/create", json=create))
    assert lines[-1] == {"status": "success"}
    assert (tmp_path / "models").is_dir()
    tags = [m["name"] for m in (await json_of(await client.get("/api/tags")))["models"]]
    assert "pirate:latest" in tags
    show = await json_of(await client.post("/api/show", json={"model": "pirate"}))
    assert show["system"] == "Talk like a pirate."
    assert "temperature" in show["parameters"]
    assert show["details"]["parent_model"] == "a:latest"
    # A chat to the new name runs the base model with the derived system prompt and parameters.
    payload = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    body = await json_of(await client.post("/api/chat", json=payload))
    assert body["model"] == "pirate"
    assert body["message"]["content"] == "tok0 tok1 "
    sent = await last_request(client, "a")
    assert sent["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert (sent["temperature"], sent["max_tokens"], sent["stop"]) == (0.3, 2, ["zzz"])
    # Request options win over the derived parameters.
    await json_of(await client.post("/api/chat", json=payload | {"options": {"temperature": 0.9}}))
    assert (await last_request(client, "a"))["temperature"] == 0.9
    # Copy, then delete the copy.
    response = await client.post("/api/copy", json={"source": "pirate", "destination": "parrot"})
    assert response.status == 200
    show = await json_of(await client.post("/api/show", json={"model": "parrot"}))
    assert show["system"] == "Talk like a pirate."
    response = await client.delete("/api/delete", json={"model": "parrot"})
    assert response.status == 200
    await json_of(await client.post("/api/show", json={"model": "parrot"}), 404)
    await json_of(await client.delete("/api/delete", json={"model": "parrot"}), 404)
    await json_of(await client.post("/api/show", json={"model": "pirate"}))
    # A copy of a configured model.
    assert (await client.post("/api/copy", json={"source": "a", "destination": "b"})).status == 200
    assert (await json_of(await client.post("/api/show", json={"model": "b:latest"})))["details"]
    await json_of(await client.post("/api/copy", json={"source": "nope", "destination": "c"}), 404)


async def test_create_and_delete_errors(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    error = (
        await json_of(await client.post("/api/create", json={"model": "x", "from": "missing"}), 404)
    )["error"]
    assert "missing" in error
    bad = {"model": "x", "from": "a", "parameters": {"temperature": "hot"}}
    assert (
        "temperature" in (await json_of(await client.post("/api/create", json=bad), 400))["error"]
    )
    # An `adapters` folder that is not a PEFT LoRA adapter: refused before anything is stored,
    # rather than a derived model whose every request fails when vLLM cannot load the adapter.
    not_peft = tmp_path / "not-an-adapter"
    not_peft.mkdir()
    (not_peft / "weights.bin").write_bytes(b"\0")
    refused = {"model": "x", "from": "a", "adapters": {"lora": str(not_peft)}}
    body = await json_of(await client.post("/api/create", json=refused), 400)
    assert set(body) == {"error"}
    assert body["error"].startswith("adapters: ") and "not a PEFT adapter" in body["error"]
    await json_of(await client.post("/api/show", json={"model": "x"}), 404)
    tags = (await json_of(await client.get("/api/tags")))["models"]
    assert [m["name"] for m in tags] == ["a:latest"]
    error = (await json_of(await client.delete("/api/delete", json={"model": "a"}), 400))["error"]
    assert "config" in error
    await json_of(await client.post("/api/show", json={"model": "a"}))
    error = (await json_of(await client.post("/api/push", json={"model": "a"}), 501))["error"]
    assert isinstance(error, str)
    assert worker_of(client, "a").state is WorkerState.STOPPED


@pytest.mark.parametrize("offline", [True, False], ids=["offline-mode", "hub-unreachable"])
async def test_pull_fails_fast_without_a_hub(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: bool
) -> None:
    # No network: the Hub endpoint is a closed local port (and, in one case, offline mode is on).
    from huggingface_hub import constants

    point_hub_at(monkeypatch, "http://127.0.0.1:9")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    client = await start(aiohttp_client, config(tmp_path, {"a": {}}))
    error = (await json_of(await client.post("/api/pull", json={"model": "tiny"}), 404))["error"]
    assert "org/name" in error
    started = time.monotonic()
    for stream in (True, False):  # refused before the first update: a plain HTTP error
        response = await asyncio.wait_for(
            client.post("/api/pull", json={"model": "someorg/somemodel", "stream": stream}), 30
        )
        error = (await json_of(response, 503))["error"]  # unavailable, with the reason (issue 25)
        assert ("HF_HUB_OFFLINE" if offline else "cannot reach") in error
    assert time.monotonic() - started < 30
    assert not (tmp_path / "models" / "someorg" / "somemodel" / "config.json").exists()
