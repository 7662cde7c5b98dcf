"""The scheduler with real vLLM workers on a host-RAM budget that fits one tiny model at a time.

A tiny CPU worker measures ~2.9 GB (weights are 2 MB; the rest is vLLM's processes and a 1 GiB
KV cache), so a 4.5 GiB budget holds one worker and never two.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.component.fakes import eventually_blocking
from tests.daemon import Daemon
from tests.e2e.conftest import real_model
from tests.e2e.helpers import own_daemon, workers

pytestmark = pytest.mark.e2e

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tight_daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    server = {"memory_limit_cpu": "4.5GiB", "max_queue": 300, "drain_wait": 120}
    models = {"one": real_model(demo_models["chat"]), "two": real_model(demo_models["chat"])}
    with own_daemon(tmp_path_factory, "tight", server, models) as daemon:
        yield daemon
        assert daemon.terminate() == 0


def chat(daemon: Daemon, model: str) -> str:
    """The finish reason of one short chat: a random model may say nothing (EOS first, or tokens
    that decode to ""), so a whole answer is one that finished, not one with text."""
    api = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", timeout=300)
    reply = api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
    return reply.choices[0].finish_reason


def idle_spares(daemon: Daemon) -> int:
    text = httpx.get(daemon.url + "/metrics", timeout=10).text
    found = re.search(r"^vllama_spares (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_a_load_through_the_warm_spare_forks_vllms_engine_processes_from_its_zygotes(
    tight_daemon: Daemon,
) -> None:
    """vLLM's CPU build spawns its engine core and its worker (fresh interpreters, each importing
    its whole stack again); the spare's zygotes fork them with that stack imported. The first
    forks the engine core, which it does only for a spawn whose import-time environment is its
    own: the spare started with what vLLM sets for that spawn (vllama/engine/engine_env.py), with
    nothing in the service's environment. The second, started with the OpenMP binding vLLM gives
    its worker, forks the worker, whose threads are then bound as vLLM binds them (its engine
    core's CPU left out)."""
    eventually_blocking(
        lambda: idle_spares(tight_daemon) >= 1, within=240, what="a warm spare ready", every=0.5
    )
    assert chat(tight_daemon, "one")
    tree = workers(tight_daemon)["one"].children(recursive=True)
    core = [p for p in tree if "VLLM::EngineCore" in " ".join(p.cmdline())]
    worker = [p for p in tree if "VLLM::Worker" in " ".join(p.cmdline())]
    assert len(core) == 1 and len(worker) == 1
    for process, zygote in ((core[0], "spare zygote"), (worker[0], "spare second zygote")):
        parent = process.parent()
        assert parent is not None and f"vllama.engine.{zygote}" in " ".join(parent.cmdline())
    bound = {frozenset(os.sched_getaffinity(thread.id)) for thread in worker[0].threads()}
    cpus = len(os.sched_getaffinity(0))
    assert len(bound) == 1 and (cpus == 1 or len(next(iter(bound))) < cpus), bound


def test_alternating_models_evict_each_other(tight_daemon: Daemon) -> None:
    for model in ("one", "two", "one", "two"):
        assert chat(tight_daemon, model)
        assert set(workers(tight_daemon)) == {model}  # the other was evicted to make room
    log = tight_daemon.log()
    assert log.count("evicted to make room for") >= 3


def test_200_mixed_concurrent_requests_all_complete(tight_daemon: Daemon) -> None:
    async def run() -> list[str]:
        api = openai.AsyncOpenAI(base_url=tight_daemon.url + "/v1", api_key="x", timeout=600)
        async with api:

            async def one(i: int) -> str:
                model = "one" if i % 2 else "two"
                reply = await api.chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=4
                )
                assert reply.usage is not None and reply.usage.completion_tokens >= 1
                return reply.choices[0].finish_reason

            return await asyncio.gather(*(one(i) for i in range(200)))

    finishes = asyncio.run(run())
    assert len(finishes) == 200 and set(finishes) <= {"stop", "length"}
    assert len(workers(tight_daemon)) == 1


def test_queue_overflow_gets_503_with_retry_after(tight_daemon: Daemon) -> None:
    # Unload everything, then fire more requests at a cold model than the queue holds (300).
    for model in ("one", "two"):
        httpx.post(
            tight_daemon.url + "/api/generate", json={"model": model, "keep_alive": 0}, timeout=60
        )
    eventually_blocking(
        lambda: not workers(tight_daemon), within=60, what="every model unloaded", every=0.2
    )

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=400)) as c:
            body = {"model": "one", "messages": MESSAGES, "max_tokens": 2}
            url = tight_daemon.url + "/v1/chat/completions"
            return await asyncio.gather(*(c.post(url, json=body) for _ in range(320)))

    responses = asyncio.run(run())
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "no request was refused past max_queue"
    assert all(r.headers.get("Retry-After") for r in refused)
    assert all(r.json()["error"]["code"] == "queue_full" for r in refused)
    assert all(r.status_code in (200, 503) for r in responses)
    assert sum(r.status_code == 200 for r in responses) >= 300 - 1


def test_keep_alive_zero_unloads_after_the_request(tight_daemon: Daemon) -> None:
    reply = httpx.post(
        tight_daemon.url + "/api/chat",
        json={"model": "two", "messages": MESSAGES, "keep_alive": 0, "stream": False},
        timeout=300,
    )
    assert reply.status_code == 200 and reply.json()["done"]
    eventually_blocking(
        lambda: "two" not in workers(tight_daemon), within=60, what="two unloaded", every=0.2
    )
