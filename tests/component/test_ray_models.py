"""A model on a Ray cluster (`ray_address`), with the fake engine and a stand-in `ray` for the
cluster check (tests/fake_ray): a cluster too small is a clear error before any process starts;
one that fits starts vLLM's Ray backend, and `/api/ps` says where the model runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.component.fakes import WorkerView, engine_cmdline
from tests.component.test_scheduling import ask, gpu_host, states
from vllama.engine.states import WorkerState

FAKE_RAY = str(Path(__file__).resolve().parents[1] / "fake_ray")
NODES = ["10.0.0.2", "10.0.0.3"]


def on_ray(free_gpus: int) -> dict[str, Any]:
    cluster = {"total": {"GPU": 4}, "free": {"GPU": free_gpus}, "nodes": NODES}
    env = {"PYTHONPATH": FAKE_RAY, "FAKE_RAY_CLUSTER": json.dumps(cluster)}
    return {"ray_address": "10.0.0.2:6379", "args": ["-tp", "2", "-pp", "2"], "env": env}


async def test_a_cluster_too_small_is_refused_before_anything_starts(aiohttp_client: Any) -> None:
    client = await gpu_host(aiohttp_client, {"big": on_ray(free_gpus=2)}, {"big": 1})
    reply = await client.post("/api/generate", json={"model": "big", "prompt": "hi"})
    assert reply.status == 503
    message = (await reply.json())["error"]
    assert "has 2 GPU free of 4 on 2 node(s); the model needs 4" in message
    assert states(client)["big"] is not WorkerState.READY
    assert WorkerView(client.app, "big").status.pid is None  # no engine was started


async def test_a_cluster_that_fits_runs_vllms_ray_backend(aiohttp_client: Any) -> None:
    client = await gpu_host(aiohttp_client, {"big": on_ray(free_gpus=4)}, {"big": 1})
    assert await ask(client, "big") == 200
    line = engine_cmdline(WorkerView(client.app, "big").pid)
    assert line[line.index("--distributed-executor-backend") + 1] == "ray"
    async with client.session.get(WorkerView(client.app, "big").base_url + "/fake/env") as env:
        assert (await env.json())["RAY_ADDRESS"] == "10.0.0.2:6379"
    (entry,) = (await (await client.get("/api/ps")).json())["models"]
    assert entry["ray_nodes"] == NODES
    assert WorkerView(client.app, "big").status.devices == ("gpu:0",)  # the local share only
