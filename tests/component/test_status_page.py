"""The status page's stream, `GET /api/vllama/events`, and its static files, against fake
workers: a snapshot at connect, one after a load, a request event after a request, keys, and an
end at shutdown that does not wait for `drain_timeout`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import fake_config
from vllama.api.app import build_app

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

ADMIN, INFERENCE = "admin-key-0123456789", "inference-key-0123456789"


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start(aiohttp_client: ClientFactory, tmp_path: Path, **server: Any) -> Client:
    config = fake_config({"a": {}, "b": {}}, models_dir=str(tmp_path / "models"), **server)
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


async def next_event(response: aiohttp.ClientResponse, kind: str | None = None) -> dict[str, Any]:
    """The next event (of `kind`, skipping others) as {"event": ..., "data": ...}."""
    while True:
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(response.content.readline(), 10)).decode()
            if not line:
                raise EOFError("the stream ended")
            if line == "\n":
                break
            name, _, value = line.rstrip("\n").partition(": ")
            fields[name] = value
        if kind is None or fields["event"] == kind:
            return {"event": fields["event"], "data": json.loads(fields["data"])}


async def until_state(response: aiohttp.ClientResponse, model: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snapshot: dict[str, Any] = (await next_event(response, "status"))["data"]
        if any(m["name"] == model and m["state"] == state for m in snapshot["models"]):
            return snapshot
    raise AssertionError(f"{model} never became {state}")


async def test_a_snapshot_at_connect_lists_every_configured_model_and_the_devices(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path)
    async with client.get("/api/vllama/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await next_event(response)
    assert first["event"] == "status"
    snapshot = first["data"]
    assert [(m["name"], m["state"]) for m in snapshot["models"]] == [
        ("a", "stopped"),
        ("b", "stopped"),
    ]
    cpu = next(d for d in snapshot["devices"] if d["id"] == "cpu")
    assert cpu["total"] > 0 and cpu["used"] == cpu["vllama"] + cpu["others"]
    assert snapshot["recent"] == [] and snapshot["queued"] == 0


async def test_a_load_shows_up_then_the_request_and_an_unload(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path)
    async with client.get("/api/vllama/events") as stream:
        await next_event(stream, "status")
        loaded = await client.post("/api/generate", json={"model": "a"})  # Ollama's load
        assert loaded.status == 200
        snapshot = await until_state(stream, "a", "ready")
        a = next(m for m in snapshot["models"] if m["name"] == "a")
        assert a["pid"] and a["devices"] == ["cpu"] and a["memory"]["cpu"] > 0
        assert a["seconds_in_state"] is not None and a["keep_alive"] == 300
        chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        chat |= {"stream": True, "stream_options": {"include_usage": True}}  # ttft: streams only
        answer = await client.post("/v1/chat/completions", json=chat)
        assert answer.status == 200
        await answer.read()
        request = (await next_event(stream, "request"))["data"]
        # the load itself (a generate with no prompt) came first
        assert request["endpoint"] == "/api/generate" and request["model"] == "a"
        request = (await next_event(stream, "request"))["data"]
        assert request["endpoint"] == "/v1/chat/completions" and request["status"] == 200
        assert request["tokens"] == 3 and request["ttft"] is not None
        unload = await client.post("/api/generate", json={"model": "a", "keep_alive": 0})
        assert unload.status == 200
        await until_state(stream, "a", "stopped")
    async with client.get("/api/vllama/events") as again:  # a page opened later sees them
        recent = (await next_event(again, "status"))["data"]["recent"]
    assert [r["endpoint"] for r in recent[:2]] == ["/api/generate", "/v1/chat/completions"]


async def test_a_quiet_stream_still_sends_a_snapshot_every_two_seconds(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path)
    async with client.get("/api/vllama/events") as stream:
        first = (await next_event(stream, "status"))["data"]["time"]
        second = (await next_event(stream, "status"))["data"]["time"]
    assert 1.5 < second - first < 3.5


async def test_keys_are_respected_any_key_reads_the_stream(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    keys = [
        {"key": ADMIN, "scope": "admin", "name": "ops"},
        {"key": INFERENCE, "scope": "inference", "name": "webui"},
    ]
    client = await start(aiohttp_client, tmp_path, api_keys=keys)
    assert (await client.get("/api/vllama/events")).status == 401
    bad = await client.get("/api/vllama/events", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    for key in (ADMIN, INFERENCE):  # read-only, like /api/ps
        headers = {"Authorization": f"Bearer {key}"}
        async with client.get("/api/vllama/events", headers=headers) as stream:
            assert stream.status == 200
            assert (await next_event(stream))["event"] == "status"
    logs = await client.get(
        "/api/vllama/logs?model=a", headers={"Authorization": f"Bearer {INFERENCE}"}
    )
    assert logs.status == 403  # the log tail stays admin-only
    page = await client.get("/ui")  # the page itself holds no data: it asks for the key
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    other = await client.get("/api/vllama/events", headers={"Origin": "https://evil.example"})
    assert other.status == 403


async def test_the_page_and_its_files_are_served(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path)
    for path, kind in (
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ):
        response = await client.get(path)
        assert response.status == 200 and response.content_type == kind
        assert len(await response.read()) > 500
    page = await (await client.get("/ui")).text()
    assert "http" not in page.replace("http-equiv", ""), "nothing fetched from elsewhere"


async def test_the_stream_ends_at_shutdown_without_holding_the_drain(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, drain_timeout=30)
    async with client.get("/api/vllama/events") as stream:
        await next_event(stream, "status")
        began = time.monotonic()
        closing = asyncio.create_task(client.server.close())
        with pytest.raises(EOFError):
            while True:
                await next_event(stream)
        await asyncio.wait_for(closing, 15)
    assert time.monotonic() - began < 10


async def test_on_a_public_bind_the_page_may_call_its_own_origin_but_no_other(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, host="0.0.0.0", allowed_hosts=["vllama.lan"])
    load = {"model": "a"}
    for host, status in (
        ("10.1.2.3:11434", 200),  # an address: no rebinding page has it as its origin
        ("vllama.lan:11434", 200),  # a name the operator listed
        ("rebound.example:11434", 403),  # any other name could be a rebinding page's own
    ):
        own = {"Host": host, "Origin": f"http://{host}"}
        answer = await client.post("/api/generate", json=load, headers=own)
        assert answer.status == status, host
    foreign = {"Host": "10.1.2.3:11434", "Origin": "http://10.9.9.9:11434"}
    assert (await client.post("/api/generate", json=load, headers=foreign)).status == 403
