"""Replicas with real (fake-engine) workers: two workers of one model share concurrent requests,
`/api/ps` lists each, both serve the model's own name, and an unload stops both."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.component.fakes import WorkerView, engine_cmdline, eventually
from tests.component.test_scheduling import GiB, ask, gpu_host, states
from vllama.engine.states import WorkerState


async def test_two_replicas_share_concurrent_requests(aiohttp_client: Any) -> None:
    models = {"r": {"replicas": 2, "env": {"FAKE_VLLM_TOKEN_DELAY": "0.05"}}}
    client = await gpu_host(aiohttp_client, models, {"r": 1}, gpus=(80 * GiB, 80 * GiB))
    assert await ask(client, "r") == 200
    ready = (WorkerState.READY, WorkerState.READY)
    await eventually(lambda: (states(client)["r"], states(client)["r#2"]) == ready)
    for slot in ("r", "r#2"):  # each replica's vLLM serves the model's name
        line = engine_cmdline(WorkerView(client.app, slot).pid)
        assert line[line.index("--served-model-name") + 1] == "r"
    assert set(await asyncio.gather(*(ask(client, "r", tokens=8) for _ in range(16)))) == {200}
    served = []
    for slot in ("r", "r#2"):
        url = WorkerView(client.app, slot).base_url
        async with client.session.get(f"{url}/fake/stats") as response:
            served.append((await response.json())["requests"])
    assert sum(served) == 17 and min(served) >= 6, served  # spread, not all on one
    ps = (await (await client.get("/api/ps")).json())["models"]
    assert sorted((m["name"], m["replica"]) for m in ps) == [("r:latest", 1), ("r:latest", 2)]
    unload = await client.post("/api/generate", json={"model": "r", "keep_alive": 0})
    assert unload.status == 200
    stopped = (WorkerState.STOPPED, WorkerState.STOPPED)
    await eventually(lambda: (states(client)["r"], states(client)["r#2"]) == stopped)
