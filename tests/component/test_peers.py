"""Peers (`[peers.<name>]`): another vllama (it speaks Ollama's API: Ollama requests pass through)
and a plain vLLM server (OpenAI's API only: Ollama requests are translated here), each a real
process or app on this machine; a peer that goes down, and local models beside peers."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.component.fakes import eventually, fake_config
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import free_port
from vllama.api.app import build_app
from vllama.api.keys import SERVICES

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]
Client = TestClient[web.Request, web.Application]
MESSAGES = [{"role": "user", "content": "hi"}]
PEER_KEY = "peer-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


class PlainServer:
    """The fake vLLM server run on its own, as a plain vLLM server peer would be."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [*FAKE_ENGINE_COMMAND, "--model", f"fake/{name}", "--served-model-name", name]
        self.process = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def healthy(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(self.url + "/health") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        assert (
            not psutil.pid_exists(self.process.pid)
            or psutil.Process(self.process.pid).status() == psutil.STATUS_ZOMBIE
        )


@pytest.fixture
async def plain() -> AsyncIterator[PlainServer]:
    server = PlainServer("plain-m")
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: server.healthy(http), what="the plain server up")
        yield server
    finally:
        server.stop()


async def start_front(
    aiohttp_client: ClientFactory, peers: dict[str, Any], **server: Any
) -> Client:
    client = await aiohttp_client(build_app(fake_config({"near": {}}, peers, **server)))
    directory = client.app[SERVICES].peers
    await eventually(
        lambda: all(view.checked_at is not None for view in directory.views()),
        what="every peer checked once",
    )
    return client


async def far_vllama(aiohttp_server: ServerFactory, **server: Any) -> TestServer:
    return await aiohttp_server(build_app(fake_config({"far": {}}, **server)))


async def ndjson(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (await response.text()).splitlines()]


async def test_another_vllama_serves_its_models_here_on_both_apis(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    far = await far_vllama(aiohttp_server, api_keys=[{"key": PEER_KEY, "scope": "admin"}])
    url = str(far.make_url("")).rstrip("/")
    client = await start_front(aiohttp_client, {"gpu2": {"url": url, "api_key": PEER_KEY}})
    (view,) = client.app[SERVICES].peers.views()
    assert (view.up, view.kind, view.models) == (True, "ollama", ("far:latest",))
    # OpenAI: relayed as a worker's answer, streamed or not.
    reply = await client.post(
        "/v1/chat/completions", json={"model": "far", "messages": MESSAGES, "max_tokens": 3}
    )
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["usage"]["completion_tokens"] == 3
    # Ollama: passed through to the peer, which answers in Ollama's own NDJSON.
    reply = await client.post("/api/chat", json={"model": "far", "messages": MESSAGES})
    assert reply.status == 200
    lines = await ndjson(reply)
    assert lines[-1]["done"] is True and lines[-1]["model"] == "far"
    assert "".join(line["message"]["content"] for line in lines)
    # Listed as Ollama lists remote models; running there, so in /api/ps too.
    tags = {m["name"]: m for m in (await (await client.get("/api/tags")).json())["models"]}
    assert tags["far:latest"]["remote_host"] == url and "near:latest" in tags
    await client.app[SERVICES].peers.check(client.app[SERVICES].peers.find("far"))  # type: ignore[arg-type]
    ps = (await (await client.get("/api/ps")).json())["models"]
    assert [(m["name"], m["remote_host"]) for m in ps] == [("far:latest", url)]
    cards = {
        m["id"]: m["owned_by"] for m in (await (await client.get("/v1/models")).json())["data"]
    }
    assert cards["far:latest"] == "peer:gpu2" and cards["near"] == "vllama"
    show = await client.post("/api/show", json={"model": "far"})
    assert show.status == 200 and "capabilities" in await show.json()
    metrics = await (await client.get("/metrics")).text()
    assert 'vllama_peer_up{peer="gpu2"} 1.0' in metrics


async def test_a_plain_vllm_server_is_spoken_to_in_openai_and_ollama_is_translated_here(
    aiohttp_client: ClientFactory, plain: PlainServer
) -> None:
    client = await start_front(aiohttp_client, {"box": {"url": plain.url}})
    (view,) = client.app[SERVICES].peers.views()
    assert (view.up, view.kind, view.models) == (True, "openai", ("plain-m",))
    reply = await client.post("/api/chat", json={"model": "plain-m", "messages": MESSAGES})
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/x-ndjson")
    lines = await ndjson(reply)
    assert lines[-1]["done"] is True and lines[-1]["model"] == "plain-m"
    assert lines[-1]["eval_count"] >= 1
    reply = await client.post(
        "/api/generate", json={"model": "plain-m", "prompt": "hi", "stream": False}
    )
    assert reply.status == 200 and (await reply.json())["done"] is True
    reply = await client.post(
        "/v1/completions", json={"model": "plain-m:latest", "prompt": "hi", "max_tokens": 2}
    )
    assert reply.status == 200 and (await reply.json())["usage"]["completion_tokens"] == 2
    ps = (await (await client.get("/api/ps")).json())["models"]
    assert [(m["name"], m["remote_host"]) for m in ps] == [("plain-m:latest", plain.url)]


async def test_a_peer_that_goes_down_answers_within_seconds_and_local_models_go_on(
    aiohttp_client: ClientFactory, plain: PlainServer
) -> None:
    client = await start_front(aiohttp_client, {"box": {"url": plain.url}})
    plain.stop()
    reply = await client.post(
        "/v1/chat/completions", json={"model": "plain-m", "messages": MESSAGES}
    )
    # Either the check saw it first (503, Retry-After) or the request did (502, then a recheck).
    assert reply.status in (502, 503)
    assert "box" in (await reply.json())["error"]["message"]
    peers = client.app[SERVICES].peers
    await eventually(lambda: not peers.views()[0].up, what="the peer marked down")
    began = asyncio.get_running_loop().time()
    reply = await client.post("/api/chat", json={"model": "plain-m", "messages": MESSAGES})
    assert reply.status == 503 and "Retry-After" in reply.headers
    assert "is down" in (await reply.json())["error"]
    assert asyncio.get_running_loop().time() - began < 1
    local = await client.post(
        "/api/chat", json={"model": "near", "messages": MESSAGES, "stream": False}
    )
    assert local.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'vllama_peer_up{peer="box"} 0.0' in metrics


async def test_a_peer_refusing_our_key_is_down_with_the_reason(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    far = await far_vllama(aiohttp_server, api_keys=[{"key": PEER_KEY, "scope": "admin"}])
    url = str(far.make_url("")).rstrip("/")
    client = await start_front(
        aiohttp_client, {"gpu2": {"url": url, "api_key": "wrong-key-0123456789", "models": ["far"]}}
    )
    reply = await client.post("/v1/chat/completions", json={"model": "far", "messages": MESSAGES})
    assert reply.status == 503
    assert "answered 401" in (await reply.json())["error"]["message"]


async def test_a_local_model_wins_over_a_peer_model_of_the_same_name(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    far = await aiohttp_server(build_app(fake_config({"near": {"env": {"FAKE_VLLM_TOKENS": "7"}}})))
    client = await start_front(aiohttp_client, {"p": {"url": str(far.make_url("")).rstrip("/")}})
    assert client.app[SERVICES].peers.find("near") is None
    reply = await client.post(
        "/v1/chat/completions", json={"model": "near", "messages": MESSAGES, "max_tokens": 2}
    )
    assert (await reply.json())["usage"]["completion_tokens"] == 2  # not the peer's 7
    tags = [m["name"] for m in (await (await client.get("/api/tags")).json())["models"]]
    assert tags.count("near:latest") == 1


async def test_a_peers_own_peers_are_not_served_through_it(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory, plain: PlainServer
) -> None:
    # b serves "far" and relays "plain-m" from its own peer: the front takes only "far" from b,
    # so two daemons peering each other never pass a request around in a circle.
    far_app = build_app(fake_config({"far": {}}, {"c": {"url": plain.url}}))
    far = await aiohttp_server(far_app)
    await eventually(lambda: far_app[SERVICES].peers.views()[0].up, what="b's own peer checked")
    url = str(far.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http, http.get(url + "/api/tags") as listing:
        tags = (await listing.json())["models"]
    assert {m["name"] for m in tags} == {"far:latest", "plain-m:latest"}  # b lists both
    client = await start_front(aiohttp_client, {"b": {"url": url}})
    (view,) = client.app[SERVICES].peers.views()
    assert view.models == ("far:latest",)
    reply = await client.post("/api/chat", json={"model": "plain-m", "messages": MESSAGES})
    assert reply.status == 404
