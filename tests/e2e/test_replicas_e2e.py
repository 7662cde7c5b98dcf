"""Two real replicas of one model (vLLM on CPU) under 32 concurrent requests: each replica is its
own vLLM server serving the model's name, both answer a share of the load, and `/api/ps` lists
each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.component.fakes import eventually_blocking
from tests.daemon import Daemon
from tests.e2e.conftest import real_model
from tests.e2e.helpers import own_daemon

pytestmark = pytest.mark.e2e

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    models = {"rep": real_model(demo_models["chat"], replicas=2)}
    with own_daemon(tmp_path_factory, "replicas", {}, models) as running:
        yield running
        assert running.terminate() == 0


def replica_ports(daemon: Daemon) -> list[int]:
    """The port of each vLLM API server the daemon runs."""
    ports = []
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline()).split()
        except psutil.Error:
            continue
        if "vllama.engine.guard" in line:  # its command line holds the engine's
            continue
        if "vllm.entrypoints.openai.api_server" in line and "--port" in line:
            assert line[line.index("--served-model-name") + 1] == "rep"
            ports.append(int(line[line.index("--port") + 1]))
    return sorted(ports)


def answered(port: int) -> float:
    """Requests a vLLM server has finished (its own counter)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def test_two_replicas_share_32_concurrent_requests(daemon: Daemon) -> None:
    api = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", timeout=300)
    api.chat.completions.create(model="rep", messages=MESSAGES, max_tokens=1)

    def entries() -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = httpx.get(daemon.url + "/api/ps").json()["models"]
        return models

    eventually_blocking(lambda: len(entries()) == 2, within=240, what="the second replica")
    assert sorted((m["name"], m["replica"]) for m in entries()) == [
        ("rep:latest", 1),
        ("rep:latest", 2),
    ]
    ports = replica_ports(daemon)
    assert len(ports) == 2
    before = [answered(port) for port in ports]

    async def run() -> list[str | None]:
        client = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key="x", timeout=300)
        async with client:

            async def one() -> str | None:
                reply = await client.chat.completions.create(
                    model="rep",
                    messages=MESSAGES,
                    max_tokens=8,
                )
                return reply.choices[0].finish_reason

            return await asyncio.gather(*(one() for _ in range(32)))

    finishes = asyncio.run(run())
    assert len(finishes) == 32 and set(finishes) <= {"stop", "length"}
    shares = [answered(port) - b for port, b in zip(ports, before, strict=True)]
    assert sum(shares) == 32 and min(shares) >= 8, shares
