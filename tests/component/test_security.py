"""API keys, origins and Host (docs/OPERATIONS.md, Security), against fake workers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import fake_config
from vllama.api.app import build_app
from vllama.config.access import sha256_hex

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
ADMIN = "admin-key-0123456789abcdef"
INFERENCE = "inference-key-0123456789abcdef"
ENV_ADMIN = "env-admin-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start(aiohttp_client: ClientFactory, tmp_path: Path, **server: Any) -> Client:
    config = fake_config({"a": {}}, models_dir=str(tmp_path / "models"), **server)
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


KEYS = {
    "api_keys": [
        {"key": ADMIN, "scope": "admin", "name": "ops"},
        {"key_sha256": sha256_hex(INFERENCE), "scope": "inference", "name": "webui"},
    ],
    "api_key": ENV_ADMIN,
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_without_a_key_each_api_answers_401_in_its_own_envelope(
    aiohttp_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start(aiohttp_client, tmp_path, **KEYS)
    ollama = await client.get("/api/tags")
    assert ollama.status == 401 and ollama.headers["WWW-Authenticate"].startswith("Bearer")
    assert await ollama.json() == {"error": "an API key is required"}
    openai = await client.get("/v1/models", headers=bearer("wrong-key-0123456789"))
    assert openai.status == 401
    assert (await openai.json())["error"]["message"] == "invalid API key"
    anthropic = await client.post("/v1/messages", json={"model": "a"})
    assert anthropic.status == 401
    assert (await anthropic.json())["error"]["type"] == "authentication_error"
    assert (await client.get("/")).status == 200  # liveness stays open
    assert (await client.head("/")).status == 200
    assert (await client.get("/metrics")).status == 401
    assert ADMIN not in caplog.text and INFERENCE not in caplog.text


async def test_scopes(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, tmp_path, **KEYS)
    for key in (ADMIN, INFERENCE, ENV_ADMIN):
        assert (await client.get("/api/tags", headers=bearer(key))).status == 200
    assert (await client.get("/api/tags", headers={"x-api-key": INFERENCE})).status == 200
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = await client.post("/v1/chat/completions", json=chat, headers=bearer(INFERENCE))
    assert answer.status == 200
    create = {"model": "mine", "from": "a", "stream": False}
    refused = await client.post("/api/create", json=create, headers=bearer(INFERENCE))
    assert refused.status == 403 and "admin" in (await refused.json())["error"]
    logs = await client.get("/api/vllama/logs?model=a", headers=bearer(INFERENCE))
    assert logs.status == 403
    for key in (ADMIN, ENV_ADMIN):
        made = await client.post("/api/create", json=create, headers=bearer(key))
        assert made.status == 200, await made.text()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_read_in_any_case(
    aiohttp_client: ClientFactory, tmp_path: Path, scheme: str
) -> None:
    """RFC 9110 section 11.1 (was RFC 7235 section 2.1): an authentication scheme is a
    case-insensitive token, and clients differ (some send `bearer`)."""
    client = await start(aiohttp_client, tmp_path, **KEYS)
    for key, status in ((INFERENCE, 200), ("wrong-key-0123456789", 401)):
        answer = await client.get("/api/tags", headers={"Authorization": f"{scheme} {key}"})
        assert answer.status == status
    # 1*SP between the scheme and the credentials: more than one space is still the key.
    spaced = await client.get("/api/tags", headers={"Authorization": f"{scheme}   {INFERENCE}"})
    assert spaced.status == 200


async def test_another_scheme_is_not_taken_for_a_key(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, **KEYS)
    # "Digest " is as long as "Bearer ": only the scheme tells them apart.
    for scheme in ("Digest", "Basic"):
        other = await client.get("/api/tags", headers={"Authorization": f"{scheme} {INFERENCE}"})
        assert other.status == 401


async def test_metrics_can_be_public(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, tmp_path, metrics_public=True, **KEYS)
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/api/ps")).status == 401


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://localhost.evil.example", "null", "http://10.0.0.1"]
)
async def test_other_origins_are_refused_even_without_a_preflight(
    aiohttp_client: ClientFactory, tmp_path: Path, origin: str
) -> None:
    client = await start(aiohttp_client, tmp_path)
    # What a page can send without a preflight: a text/plain POST.
    body = json.dumps({"model": "mine", "from": "a", "stream": False})
    headers = {"Origin": origin, "Content-Type": "text/plain"}
    response = await client.post("/api/create", data=body, headers=headers)
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert (await client.post("/api/show", json={"model": "mine"})).status == 404  # not created
    assert (await client.get("/api/tags", headers={"Origin": origin})).status == 403


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "https://[::1]",
        "app://obsidian.md",
        "tauri://localhost",
        "vscode-webview://abc",
        "https://chat.example.com",
    ],
)
async def test_local_and_listed_origins_get_cors(
    aiohttp_client: ClientFactory, tmp_path: Path, origin: str
) -> None:
    client = await start(aiohttp_client, tmp_path, allowed_origins=["https://*.example.com"])
    response = await client.get("/api/tags", headers={"Origin": origin})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    preflight = await client.options(
        "/v1/chat/completions",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


async def test_a_star_allows_every_origin(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, tmp_path, allowed_origins=["*"])
    response = await client.get("/api/tags", headers={"Origin": "http://evil.example"})
    assert response.status == 200


async def test_a_foreign_host_is_refused_on_a_loopback_bind(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path, allowed_hosts=["my.box"])
    refused = await client.get("/api/tags", headers={"Host": "evil.example"})  # DNS rebinding
    assert refused.status == 403 and (await refused.json())["error"] == "host not allowed"
    for host in ("my.box:11434", "localhost:11434", "127.0.0.1", "[::1]:11434"):
        assert (await client.get("/api/tags", headers={"Host": host})).status == 200, host


async def test_any_host_on_a_public_bind(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await start(aiohttp_client, tmp_path, host="0.0.0.0")
    assert (await client.get("/api/tags", headers={"Host": "gpu-box.lan"})).status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
async def test_malformed_host_and_origin_headers_get_an_answer_with_a_reason(
    aiohttp_client: ClientFactory, tmp_path: Path, host: str
) -> None:
    # An IPv6 bracket left open: Python's URL parser raises on it; the answer must still go out.
    client = await start(aiohttp_client, tmp_path, host=host)
    bad_host = await client.get("/api/tags", headers={"Host": "[zz"})
    assert bad_host.status == 400
    assert (await bad_host.json())["error"] == "malformed Host header"
    bad_origin = await client.post(
        "/api/show", json={"model": "a"}, headers={"Origin": "http://[zz"}
    )
    assert bad_origin.status == 403
    assert (await bad_origin.json())["error"] == "origin 'http://[zz' not allowed"
    preflight = await client.options("/api/chat", headers={"Origin": "http://[zz:1"})
    assert preflight.status == 403
