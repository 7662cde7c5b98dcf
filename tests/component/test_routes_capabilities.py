"""Capabilities checked before any load, each API's error envelope, vLLM's other routes relayed by
model, and one listing entry per model (against fake workers)."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, eventually, fake_config
from vllama.api.app import build_app
from vllama.engine.states import WorkerState

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def folder(root: Path, name: str, config: dict[str, Any]) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def chat_model(root: Path, name: str = "chatty") -> str:
    return folder(root, name, {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})


def embed_model(root: Path, name: str = "embedder") -> str:
    return folder(root, name, {"architectures": ["BertModel"], "model_type": "bert"})


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start(aiohttp_client: ClientFactory, tmp_path: Path, **models: str) -> Client:
    specs = {name: {"model": path} for name, path in models.items()}
    config = fake_config(specs, models_dir=str(tmp_path / "models"))
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


@pytest.mark.parametrize(
    ("path", "body", "model", "message", "envelope"),
    [
        ("/api/chat", CHAT, "e", '"e" does not support chat', "ollama"),
        ("/api/generate", {"prompt": "hi"}, "e", '"e" does not support generate', "ollama"),
        ("/api/generate", {}, "e", '"e" does not support generate', "ollama"),  # a load, too
        ("/api/embed", {"input": "hi"}, "c", '"c" does not support embeddings', "ollama"),
        ("/api/embeddings", {"prompt": "hi"}, "c", '"c" does not support embeddings', "ollama"),
        ("/v1/chat/completions", CHAT, "e", '"e" does not support chat', "openai"),
        ("/v1/completions", {"prompt": "hi"}, "e", '"e" does not support completion', "openai"),
        ("/v1/embeddings", {"input": "hi"}, "c", '"c" does not support embeddings', "openai"),
        ("/v1/responses", {"input": "hi"}, "e", '"e" does not support responses', "openai"),
        ("/rerank", {"query": "q", "documents": ["d"]}, "c", "does not support rerank", "openai"),
        ("/v1/messages", CHAT, "e", '"e" does not support messages', "anthropic"),
    ],
)
async def test_a_model_that_cannot_serve_a_route_is_refused_before_any_load(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    path: str,
    body: dict[str, Any],
    model: str,
    message: str,
    envelope: str,
) -> None:
    client = await start(aiohttp_client, tmp_path, c=chat_model(tmp_path), e=embed_model(tmp_path))
    response = await client.post(path, json={"model": model, **body})
    assert response.status == 400
    answer = await response.json()
    if envelope == "ollama":
        assert answer == {"error": message}
    elif envelope == "openai":
        assert message in answer["error"]["message"]
        assert answer["error"]["type"] == "invalid_request_error"
    else:
        assert answer["type"] == "error"
        assert answer["error"] == {"type": "invalid_request_error", "message": message}
    for name in ("c", "e"):
        assert WorkerView(client.app, name).state is WorkerState.STOPPED


async def test_unknown_models_get_each_apis_own_404(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, c=chat_model(tmp_path))
    anthropic = await client.post("/v1/messages", json={"model": "nope", **CHAT})
    assert anthropic.status == 404
    assert (await anthropic.json())["error"]["type"] == "not_found_error"
    tokenize = await client.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert tokenize.status == 404
    assert (await tokenize.json())["error"]["code"] == "model_not_found"


async def test_vllms_other_routes_are_relayed_by_model_with_errors_in_the_envelope(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    # The fake worker has no /tokenize: its plain-text 404 comes back in OpenAI's envelope, the
    # way a real worker's FastAPI `{"detail": "Not Found"}` does.
    client = await start(aiohttp_client, tmp_path, c=chat_model(tmp_path))
    response = await client.post("/tokenize", json={"model": "c", "prompt": "hello"})
    assert response.status == 404
    error = (await response.json())["error"]
    assert "Not Found" in error["message"] and error["type"] == "invalid_request_error"
    assert WorkerView(client.app, "c").state is WorkerState.READY  # routed, loaded, relayed
    count = await client.post("/v1/messages/count_tokens", json={"model": "c", **CHAT})
    assert count.status == 404  # the fake has no count_tokens either
    assert await count.json() == {
        "type": "error",  # Anthropic's envelope, and its type
        "error": {"type": "not_found_error", "message": "404: Not Found"},
    }


async def test_a_folder_a_configured_model_serves_is_listed_once(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    served = chat_model(tmp_path / "models", "served-folder")
    chat_model(tmp_path / "models", "other-folder")
    client = await start(aiohttp_client, tmp_path, tiny=served)
    tags = [m["name"] for m in (await (await client.get("/api/tags")).json())["models"]]
    assert tags == ["other-folder:latest", "tiny:latest"]
    models = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert models == ["other-folder:latest", "tiny"]


async def test_models_that_chat_are_listed_first(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    # Open WebUI (0.12.4) selects the first model a connection lists for a new user's chat; with
    # names alone in order, the demo's embedding model came first and "hello" got `"tiny-embed"
    # does not support chat`. Chat models first, each group by name.
    root = tmp_path / "models"
    client = await start(
        aiohttp_client,
        tmp_path,
        **{"tiny-embed": embed_model(root), "a-rerank": rerank_model(root)},
        tiny=chat_model(root),
        zed=chat_model(root, "zed"),
    )
    tags = [m["name"] for m in (await (await client.get("/api/tags")).json())["models"]]
    assert tags == ["tiny:latest", "zed:latest", "a-rerank:latest", "tiny-embed:latest"]
    models = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert models == ["tiny", "zed", "a-rerank", "tiny-embed"]


def is_stopped(client: Client, name: str) -> bool:
    return WorkerView(client.app, name).state is WorkerState.STOPPED


def rerank_model(root: Path, name: str = "ranker") -> str:
    return folder(
        root, name, {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/generate", {"keep_alive": 0}), ("/api/chat", {"messages": [], "keep_alive": 0})],
)
async def test_an_unload_needs_no_capability(
    aiohttp_client: ClientFactory, tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    # `vllama stop` (as `ollama stop`) unloads with an empty prompt and keep_alive 0: that works
    # for an embedding or rerank model, which could never answer the prompt itself.
    client = await start(
        aiohttp_client, tmp_path, e=embed_model(tmp_path), r=rerank_model(tmp_path)
    )
    loads: dict[str, tuple[str, dict[str, Any]]] = {
        "e": ("/api/embed", {"input": "hi"}),
        "r": ("/rerank", {"query": "q", "documents": ["d"]}),
    }
    for name, (load_path, load_body) in loads.items():
        await client.post(load_path, json={"model": name, **load_body})  # (the fake: no /rerank)
        assert WorkerView(client.app, name).state is WorkerState.READY
        response = await client.post(path, json={"model": name, **body})
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert (answer["done"], answer["done_reason"]) == (True, "unload")
        await eventually(functools.partial(is_stopped, client, name), what=f"{name} unloaded")
    unknown = await client.post(path, json={"model": "nope", **body})
    assert unknown.status == 404


@pytest.mark.parametrize(
    ("body", "fail", "status", "kind", "says"),
    [
        # SamplingParams' check: vLLM answers in Anthropic's envelope with its own type.
        ({"max_tokens": 4, "temperature": 5}, None, 400, "invalid_request_error", "temperature"),
        # pydantic's refusal: vLLM answers in OpenAI's envelope, type "Bad Request".
        ({}, None, 400, "invalid_request_error", "max_tokens"),
        ({"max_tokens": 4}, "500", 500, "api_error", "EngineCore"),
        ({"max_tokens": 4}, "503", 503, "overloaded_error", "retry"),
    ],
)
async def test_vllms_errors_on_messages_get_anthropics_types(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    body: dict[str, Any],
    fail: str | None,
    status: int,
    kind: str,
    says: str,
) -> None:
    spec: dict[str, Any] = {"model": chat_model(tmp_path)}
    if fail is not None:
        spec["env"] = {"FAKE_VLLM_FAIL_STATUS": fail}
    config = fake_config({"c": spec}, models_dir=str(tmp_path / "models"))
    client = await aiohttp_client(build_app(config))
    messages = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        response = await client.post(
            "/v1/messages", json={"model": "c", "messages": messages, "stream": stream, **body}
        )
        assert response.status == status
        answer = await response.json()
        assert answer["type"] == "error" and set(answer) == {"type", "error"}, answer
        assert answer["error"]["type"] == kind, answer
        assert says in answer["error"]["message"], answer
