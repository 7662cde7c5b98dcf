"""Peers that misbehave (issue 25): a reply that is not HTTP, an answer far larger than any real
one, a model list nested deeper than a parser recurses. Each is a server on 127.0.0.1 started
here; the daemon answers 502 with the reason, holds at most `max_answer_bytes` of an answer (the
health check a few MiB of a list), and keeps checking a peer whatever it answered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.component.fakes import eventually, fake_config
from vllama.api.app import build_app
from vllama.api.keys import SERVICES
from vllama.remote import peers as peers_module

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]
Client = TestClient[web.Request, web.Application]
MESSAGES = [{"role": "user", "content": "hi"}]
MiB = 1024 * 1024
TAGS = {"models": [{"name": "far:latest", "model": "far:latest"}]}
MODELS = {"object": "list", "data": [{"id": "far", "object": "model"}]}


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start_front(aiohttp_client: ClientFactory, url: str, **server: Any) -> Client:
    config = fake_config({"near": {}}, {"bad": {"url": url}}, **server)
    client = await aiohttp_client(build_app(config))
    directory = client.app[SERVICES].peers
    await eventually(lambda: directory.views()[0].checked_at is not None, what="peer checked")
    return client


# -- a reply that is not HTTP -----------------------------------------------------------------


@pytest.fixture
async def garbage_peer() -> AsyncIterator[str]:
    """Lists its models as an Ollama server does, then answers every POST with bytes that are
    not HTTP."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /api/tags "):
                body = json.dumps(TAGS).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
            elif head.startswith(b"GET "):
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"\x00\x17SSH-2.0-not-http\r\n\x80\x81garbage\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "far", "messages": MESSAGES, "stream": False}),
        ("/api/chat", {"model": "far", "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": "far", "messages": MESSAGES}),
        ("/api/show", {"model": "far"}),
    ],
)
async def test_a_reply_that_is_not_http_is_a_502_with_the_reason(
    aiohttp_client: ClientFactory, garbage_peer: str, path: str, body: dict[str, Any]
) -> None:
    client = await start_front(aiohttp_client, garbage_peer)
    assert client.app[SERVICES].peers.views()[0].up
    reply = await client.post(path, json=body)
    assert reply.status == 502, await reply.text()
    error = (await reply.json())["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "'bad'" in message and "not HTTP" in message, message


# -- an answer far larger than any real one ---------------------------------------------------


def json_answer(obj: object) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(obj)

    return answer


def huge_peer_app(kind: str, size: int, ollama: bool = True) -> web.Application:
    """A peer that lists `far` (with Ollama's `/api/tags` unless not `ollama`) and answers every
    POST with `size` bytes, made as they are sent (nothing of it is held here), in the content
    type `kind`."""
    piece = b"x" * MiB

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        try:
            for _ in range(size // MiB):
                await response.write(piece)
        except (ConnectionError, RuntimeError):
            pass  # the daemon stopped reading: what it must do
        return response

    app = web.Application()
    if ollama:
        app.router.add_get("/api/tags", json_answer(TAGS))
    app.router.add_get("/v1/models", json_answer(MODELS))
    app.router.add_post("/{path:.*}", answer)
    return app


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


@pytest.mark.parametrize(
    ("kind", "openai_only", "path", "body"),
    [
        # passed through to an Ollama peer, its one JSON object held whole
        ("application/json", False, "/api/chat", {"model": "far", "messages": MESSAGES}),
        # relayed as a worker's answer
        ("application/json", False, "/v1/chat/completions", {"model": "far", "messages": []}),
        ("text/plain", False, "/v1/embeddings", {"model": "far", "input": "hi"}),
        # translated from an OpenAI peer: an event that never ends, an embedding never done
        (
            "text/event-stream",
            True,
            "/api/chat",
            {"model": "far", "messages": MESSAGES, "stream": False},
        ),
        ("application/json", True, "/api/embed", {"model": "far", "input": "hi"}),
    ],
)
async def test_a_huge_answer_is_a_quick_502_and_is_not_held(
    aiohttp_client: ClientFactory,
    aiohttp_server: ServerFactory,
    kind: str,
    openai_only: bool,
    path: str,
    body: dict[str, Any],
) -> None:
    # Without Ollama's listing the peer is spoken to in OpenAI's API, translated here.
    peer = await aiohttp_server(huge_peer_app(kind, 256 * MiB, ollama=not openai_only))
    client = await start_front(
        aiohttp_client, str(peer.make_url("")).rstrip("/"), max_answer_bytes=MiB
    )
    view = client.app[SERVICES].peers.views()[0]
    assert view.up and view.kind == ("openai" if openai_only else "ollama")
    before = rss()
    began = asyncio.get_running_loop().time()
    reply = await client.post(path, json=body)
    text = await reply.text()
    assert reply.status == 502, text[:500]
    assert "max_answer_bytes" in text, text[:500]
    assert asyncio.get_running_loop().time() - began < 10
    # Unbounded, the daemon held the 256 MiB whole (and a copy or two of it).
    assert rss() - before < 64 * MiB


# -- the health check's reads ----------------------------------------------------------------


async def test_a_huge_model_list_fails_the_check_without_being_held(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = huge_peer_app("application/json", 256 * MiB, ollama=False)

    async def tags(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            await response.write(b'{"models": [')
            for _ in range(256):
                await response.write(b'{"name": "m"},' * (MiB // 14))
        except (ConnectionError, RuntimeError):
            pass
        return response

    app.router.add_get("/api/tags", tags)
    peer = await aiohttp_server(app)
    before = rss()
    client = await start_front(aiohttp_client, str(peer.make_url("")).rstrip("/"))
    view = client.app[SERVICES].peers.views()[0]
    assert not view.up
    assert view.error is not None and "/api/tags" in view.error and "MiB" in view.error
    assert rss() - before < 64 * MiB
    assert peers_module.LISTING_LIMIT <= 16 * MiB


async def test_a_list_nested_too_deep_marks_the_peer_down_and_checks_go_on(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    hostile = {"on": True}
    nested = b'{"models": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"

    async def tags(request: web.Request) -> web.Response:
        if hostile["on"]:
            return web.Response(body=nested, content_type="application/json")
        return web.json_response(TAGS)

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", json_answer({"models": []}))
    peer = await aiohttp_server(app)
    client = await start_front(aiohttp_client, str(peer.make_url("")).rstrip("/"))
    directory = client.app[SERVICES].peers
    view = directory.views()[0]
    assert not view.up and view.error is not None and "/api/tags" in view.error
    hostile["on"] = False  # the peer mends: the next checks see it
    await eventually(lambda: directory.views()[0].up, what="the peer back up")
    assert directory.views()[0].models == ("far:latest",)
    hostile["on"] = True
    await eventually(lambda: not directory.views()[0].up, what="the peer down again")
