"""Context-aware limits on every API (issue 20), against the fake engine, which checks budgets
and prompts against its max_model_len as vLLM 0.32 does: a budget over the context is lowered to
it (not refused), a request without one gets the configured default, a prompt that alone does not
fit is a 400 in the API's own envelope naming both numbers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, fake_config
from vllama.api.app import build_app

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

CONTEXT = 64
SHORT = "hello there"
LONG = " ".join(["word"] * (CONTEXT + 30))

# path, a body with a budget far over the context, the field that carries it
OVER: list[tuple[str, dict[str, Any], str]] = [
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": SHORT}], "max_tokens": 32000},
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": SHORT}], "max_completion_tokens": 32000},
        "max_completion_tokens",
    ),
    ("/v1/completions", {"prompt": SHORT, "max_tokens": 32000}, "max_tokens"),
    (
        "/v1/messages",
        {"messages": [{"role": "user", "content": SHORT}], "max_tokens": 32000},
        "max_tokens",
    ),
    ("/v1/responses", {"input": SHORT, "max_output_tokens": 32000}, "max_output_tokens"),
    ("/api/generate", {"prompt": SHORT, "options": {"num_predict": 32000}}, "max_tokens"),
    (
        "/api/chat",
        {"messages": [{"role": "user", "content": SHORT}], "options": {"num_predict": 32000}},
        "max_tokens",
    ),
]


@pytest.fixture(autouse=True)
def no_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


async def start(
    aiohttp_client: ClientFactory, tmp_path: Path, models: dict[str, Any], **server: Any
) -> Client:
    cfg = fake_config(models, models_dir=str(tmp_path / "models"), **server)
    return await aiohttp_client(build_app(cfg), server_kwargs={"handler_cancellation": True})


async def fake_get(client: Client, name: str, what: str) -> Any:
    async with client.session.get(f"{WorkerView(client.app, name).base_url}/fake/{what}") as r:
        return await r.json()


def unknown_context_model(tmp_path: Path) -> dict[str, Any]:
    """A model whose files say a context of 4096 while its worker serves 64: before it has run,
    vllama cannot know the context it will serve (vLLM fits it to memory on a GPU)."""
    folder = tmp_path / "disk-model"
    folder.mkdir(exist_ok=True)
    config: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    config["max_position_embeddings"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    return {"model": str(folder), "env": {"FAKE_VLLM_MAX_MODEL_LEN": str(CONTEXT)}}


async def finished(response: ClientResponse, path: str, stream: bool) -> str:
    """The answer's text, asserting it is a whole, finished one."""
    assert response.status == 200, await response.text()
    text = await response.text()
    if path.startswith("/api/"):
        lines = [json.loads(line) for line in text.splitlines()] if stream else [json.loads(text)]
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length", lines[-1]
        assert "error" not in lines[-1]
        return text
    if stream:
        assert "error" not in text.replace('"error": null', ""), text[-500:]
        end = {
            "/v1/messages": "message_stop",
            "/v1/responses": "response.completed",
        }.get(path, "[DONE]")
        assert end in text, text[-500:]
    else:
        json.loads(text)
    return text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body", "field"), OVER, ids=[f"{p}-{f}" for p, _, f in OVER])
async def test_a_budget_over_the_context_is_clamped_not_refused(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    path: str,
    body: dict[str, Any],
    field: str,
    stream: bool,
) -> None:
    client = await start(aiohttp_client, tmp_path, {"a": unknown_context_model(tmp_path)})
    request = {"model": "a", **body, "stream": stream}
    # Before the worker has run: vllama does not know its context; vLLM's refusal names it and
    # the request goes again once, at that context.
    await finished(await client.post(path, json=request), path, stream)
    sent = await fake_get(client, "a", "last_request")
    assert sent[field] == CONTEXT
    assert (await fake_get(client, "a", "stats"))["requests"] == 2
    # Once it has run, its served context is known: lowered before it goes, one request.
    await finished(await client.post(path, json=request), path, stream)
    assert (await fake_get(client, "a", "last_request"))[field] == CONTEXT
    assert (await fake_get(client, "a", "stats"))["requests"] == 3


async def test_anthropic_thinking_budget_follows_a_clamped_max_tokens(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, {"a": unknown_context_model(tmp_path)})
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": SHORT}],
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
    }
    for _ in range(2):  # by vLLM's refusal, then by the served context
        await finished(await client.post("/v1/messages", json=body), "/v1/messages", False)
        sent = await fake_get(client, "a", "last_request")
        assert sent["max_tokens"] == CONTEXT
        assert sent["thinking"]["budget_tokens"] == CONTEXT - 1


# path, a body with no budget, the field a default sets
CHAT_BODY = {"messages": [{"role": "user", "content": SHORT}]}
NO_BUDGET: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", CHAT_BODY, "max_completion_tokens"),
    ("/v1/completions", {"prompt": SHORT}, "max_tokens"),
    ("/v1/responses", {"input": SHORT}, "max_output_tokens"),
    ("/api/generate", {"prompt": SHORT}, "max_tokens"),
    ("/api/chat", {"messages": [{"role": "user", "content": SHORT}]}, "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "field"), NO_BUDGET, ids=[p for p, _, _ in NO_BUDGET])
async def test_a_request_without_a_budget_gets_the_configured_default(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str, body: dict[str, Any], field: str
) -> None:
    models = {
        "own": {"max_output_tokens": 3, "args": ["--max-model-len", str(CONTEXT)]},
        "server": {"args": ["--max-model-len", str(CONTEXT)]},
        "huge": {"max_output_tokens": 100_000, "args": ["--max-model-len", str(CONTEXT)]},
    }
    client = await start(aiohttp_client, tmp_path, models, max_output_tokens=5)
    for model, expected in (("own", 3), ("server", 5), ("huge", CONTEXT)):
        response = await client.post(path, json={"model": model, **body, "stream": False})
        assert response.status == 200, await response.text()
        assert (await fake_get(client, model, "last_request"))[field] == expected


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}),
        ("/v1/completions", {"prompt": LONG}),
        ("/v1/messages", {"messages": [{"role": "user", "content": LONG}], "max_tokens": 10}),
        ("/v1/responses", {"input": LONG}),
        ("/api/generate", {"prompt": LONG}),
        ("/api/chat", {"messages": [{"role": "user", "content": LONG}]}),
    ],
)
async def test_a_prompt_over_the_context_is_a_400_naming_both_numbers(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str, body: dict[str, Any], stream: bool
) -> None:
    client = await start(
        aiohttp_client, tmp_path, {"a": {"args": ["--max-model-len", str(CONTEXT)]}}
    )
    response = await client.post(path, json={"model": "a", **body, "stream": stream})
    assert response.status == 400, await response.text()
    error = await response.json()
    if path.startswith("/api/"):
        message = error["error"]
    elif path == "/v1/messages":
        assert error["type"] == "error"
        message = error["error"]["message"]
    else:
        message = error["error"]["message"]
    assert f"maximum context length is {CONTEXT} tokens" in message
    assert f"{CONTEXT + 1} input tokens" in message


async def test_ollama_num_ctx_bounds_the_answer_and_never_refuses(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(
        aiohttp_client, tmp_path, {"a": {"args": ["--max-model-len", str(CONTEXT)]}}
    )
    for num_ctx, expected in ((100_000, None), (10, 10)):
        body = {"model": "a", "prompt": SHORT, "options": {"num_ctx": num_ctx}, "stream": False}
        response = await client.post("/api/generate", json=body)
        assert response.status == 200, await response.text()
        sent = await fake_get(client, "a", "last_request")
        assert sent.get("max_tokens") == expected and "num_ctx" not in sent


async def test_models_report_the_context_they_serve(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(
        aiohttp_client,
        tmp_path,
        {"a": unknown_context_model(tmp_path), "b": {"args": ["--max-model-len", "128"]}},
    )
    cards = {c["id"]: c for c in (await (await client.get("/v1/models")).json())["data"]}
    # Not run yet: its --max-model-len, else its files' context.
    assert cards["a"]["max_model_len"] == 4096 and cards["b"]["max_model_len"] == 128
    body = {"model": "a", "prompt": SHORT, "stream": False}
    assert (await client.post("/api/generate", json=body)).status == 200
    cards = {c["id"]: c for c in (await (await client.get("/v1/models")).json())["data"]}
    assert cards["a"]["max_model_len"] == CONTEXT  # what its worker served
    card = await (await client.get("/v1/models/a")).json()
    assert card["max_model_len"] == CONTEXT
    show = await (await client.post("/api/show", json={"model": "a"})).json()
    assert show["model_info"]["llama.context_length"] == CONTEXT
    assert "num_ctx" not in show.get("parameters", "")  # only what the model itself sets
