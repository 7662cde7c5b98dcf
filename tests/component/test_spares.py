"""Warm spares with real processes (the fake engine run by `vllama.engine.spare`): a load takes
the spare over, a new one follows once the load is over, a model whose environment the spare
cannot take starts cold, and `warm_spares = 0` starts none."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, engine_cmdline, eventually, fake_config
from vllama.api.app import build_app
from vllama.api.keys import SERVICES

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start(aiohttp_client: ClientFactory, models: dict[str, Any], **server: Any) -> Client:
    return await aiohttp_client(build_app(fake_config(models, **server)))


def spare_pids(client: Client) -> list[int]:
    spares = client.app[SERVICES].scheduler.spares
    assert spares is not None
    return [spare.process.pid for spare in spares._idle]


async def one_spare(client: Client) -> int:
    pids: list[int] = await eventually(lambda: spare_pids(client), what="a warm spare ready")
    assert len(pids) == 1
    return pids[0]


async def test_a_load_takes_the_spare_over_and_a_new_spare_follows(
    aiohttp_client: ClientFactory,
) -> None:
    client = await start(aiohttp_client, {"a": {"env": {"FAKE_VLLM_TOKENS": "3"}}})
    spare = await one_spare(client)
    metrics = await (await client.get("/metrics")).text()
    assert "vllama_spares 1.0" in metrics
    reply = await client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status == 200, await reply.text()
    worker = WorkerView(client.app, "a")
    assert worker.pid == spare  # the spare's guard is now the worker's
    line = engine_cmdline(worker.pid)  # it names itself after the model's command line
    assert line[line.index("--served-model-name") + 1] == "a"
    # The model's environment reached the engine (the spare started with another).
    async with client.session.get(worker.base_url + "/fake/env") as answer:
        assert (await answer.json())["FAKE_VLLM_TOKENS"] == "3"
    # Its output is the model's now: `vllama logs` shows the engine's start.
    logs = await (await client.get("/api/vllama/logs", params={"model": "a"})).json()
    assert any("Uvicorn running" in line for line in logs["lines"])
    new_spare = await one_spare(client)
    assert new_spare != spare


async def test_a_model_whose_env_is_read_at_import_starts_cold(
    aiohttp_client: ClientFactory,
) -> None:
    client = await start(aiohttp_client, {"a": {"env": {"PYTHONHASHSEED": "1"}}})
    spare = await one_spare(client)
    reply = await client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status == 200
    assert WorkerView(client.app, "a").pid != spare
    assert spare_pids(client) == [spare]  # still idle, for a model that fits it


async def test_no_spares_when_turned_off(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, {"a": {}}, warm_spares=0)
    reply = await client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status == 200
    assert spare_pids(client) == []
    ours = psutil.Process().children(recursive=True)
    assert not any("vllama.engine.spare" in " ".join(p.cmdline()) for p in ours)


async def test_a_spare_that_dies_is_not_handed_a_model(aiohttp_client: ClientFactory) -> None:
    client = await start(aiohttp_client, {"a": {}})
    spare = await one_spare(client)
    for proc in psutil.Process(spare).children(recursive=True):
        proc.kill()  # the spare under its guard; the guard follows
    psutil.Process(spare).wait(10)
    reply = await client.post("/v1/chat/completions", json={"model": "a", **CHAT})
    assert reply.status == 200
    assert WorkerView(client.app, "a").pid != spare
