"""Promises the README and docs/API.md make that had no test of their own, against fake workers:
models found on disk served by name with `default_args`, a client leaving an Ollama stream
aborting vLLM's request, one model card on `/v1/models/{model}`, and derived models on `/v1`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, engine_cmdline, eventually, fake_config
from vllama.api.app import build_app

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
DEFAULT_ARG = "--fake-default-arg-from-vllama"
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


async def start(aiohttp_client: ClientFactory, tmp_path: Path, **models: Any) -> Client:
    config = fake_config(
        models,
        models_dir=str(tmp_path / "models"),
        default_args=[DEFAULT_ARG],
        default_env={"FAKE_VLLM_TOKENS": "3"},
    )
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


def model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    return folder


def worker_argv(client: Client, name: str) -> list[str]:
    return engine_cmdline(WorkerView(client.app, name).pid)


@pytest.mark.parametrize("where", ["models_dir", "hf_cache"])
async def test_a_model_on_disk_is_served_by_name_with_default_args(
    aiohttp_client: ClientFactory, tmp_path: Path, hf_cache: Path, where: str
) -> None:
    if where == "models_dir":
        folder = model_folder(tmp_path / "models" / "acme" / "tiny")
    else:
        repo = hf_cache / "models--acme--tiny"
        folder = model_folder(repo / "snapshots" / "abc123")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
    client = await start(aiohttp_client, tmp_path)
    tags = await (await client.get("/api/tags")).json()
    assert "acme/tiny:latest" in [m["name"] for m in tags["models"]]
    body = {"model": "acme/tiny", "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/api/chat", json={**body, "stream": False})
    assert response.status == 200, await response.text()
    reply = await response.json()
    assert reply["message"]["content"] == "tok0 tok1 tok2 "  # default_env reached the worker
    argv = worker_argv(client, "acme/tiny")
    assert DEFAULT_ARG in argv
    assert argv[argv.index("--model") + 1] == str(folder)


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
async def test_a_client_leaving_an_ollama_stream_aborts_the_vllm_request(
    aiohttp_client: ClientFactory, tmp_path: Path, hf_cache: Path, path: str
) -> None:
    client = await start(aiohttp_client, tmp_path, a={"env": {"FAKE_VLLM_TOKEN_DELAY": "0.2"}})
    body: dict[str, Any] = {"model": "a", "options": {"num_predict": 200}}
    if path == "/api/generate":
        body["prompt"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    response = await client.post(path, json=body)
    assert response.status == 200
    await response.content.readline()  # the first token arrived
    response.close()  # the client goes away mid-generation
    stats_url = f"{WorkerView(client.app, 'a').base_url}/fake/stats"

    async def stopped() -> dict[str, Any] | None:
        async with client.session.get(stats_url) as answer:
            stats: dict[str, Any] = await answer.json()
        return stats if stats["aborted"] == 1 else None

    stats = await eventually(stopped, within=5, what="the request aborted", every=0.05)
    assert stats["aborted"] == 1 and stats["running"] == 0  # vLLM stopped generating


async def test_one_model_card_on_v1_models(
    aiohttp_client: ClientFactory, tmp_path: Path, hf_cache: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, a={"aliases": ["a-alias"]})
    card = await (await client.get("/v1/models/a")).json()
    assert card["id"] == "a" and card["object"] == "model"
    assert (await (await client.get("/v1/models/a-alias")).json())["id"] == "a-alias"
    missing = await client.get("/v1/models/nope")
    assert missing.status == 404
    error = (await missing.json())["error"]
    assert error["code"] == "model_not_found" and "nope" in error["message"]
    assert WorkerView(client.app, "a").state.value == "stopped"  # a listing loads nothing


async def test_a_derived_model_works_on_v1_with_its_system_prompt_and_options(
    aiohttp_client: ClientFactory, tmp_path: Path, hf_cache: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, a={})
    created = await client.post(
        "/api/create",
        json={
            "model": "pirate",
            "from": "a",
            "system": "Talk like a pirate.",
            "parameters": {"temperature": 0.25, "num_predict": 2},
            "stream": False,
        },
    )
    assert created.status == 200, await created.text()
    models = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert "pirate:latest" in models  # as Ollama lists it
    assert (await (await client.get("/v1/models/pirate")).json())["id"] == "pirate"
    chat = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}]}
    reply = await client.post("/v1/chat/completions", json=chat)
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["usage"]["completion_tokens"] == 2  # its num_predict
    async with client.session.get(f"{WorkerView(client.app, 'a').base_url}/fake/last_request") as r:
        sent = await r.json()
    assert sent["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert sent["temperature"] == 0.25
    # The request's own settings win over the derived model's.
    await client.post("/v1/chat/completions", json={**chat, "temperature": 0.9})
    async with client.session.get(f"{WorkerView(client.app, 'a').base_url}/fake/last_request") as r:
        assert (await r.json())["temperature"] == 0.9
