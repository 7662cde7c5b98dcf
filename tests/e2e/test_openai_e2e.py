"""vllama in front of real vLLM workers, driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.component.fakes import eventually_blocking
from tests.daemon import Daemon
from tests.e2e.helpers import alive, worker_tree, workers

pytestmark = pytest.mark.e2e

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello, who are you?"}]


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=300)


def test_models_lists_every_configured_model(vllama_daemon: Daemon) -> None:
    ids = [model.id for model in client(vllama_daemon).models.list()]
    # Models that chat first, then embedding and rerank ones, each group by name; each once.
    configured = ["tiny", "tiny-tools", "tiny2", "tiny-embed", "tiny-rerank"]
    assert [i for i in ids if i in configured] == configured
    assert len(ids) == len(set(ids))  # derived models made by other tests may be listed too


def test_chat_loads_the_model_on_demand(vllama_daemon: Daemon) -> None:
    reply = client(vllama_daemon).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert reply.model == "tiny"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0
    assert "tiny" in workers(vllama_daemon)


def test_streamed_chat_arrives_in_chunks(vllama_daemon: Daemon) -> None:
    stream = client(vllama_daemon).chat.completions.create(
        model="tiny-alias",
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_second_model_completions_streamed_and_not(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    reply = api.completions.create(model="tiny2", prompt="Once upon a time", max_tokens=6)
    assert reply.choices[0].text and reply.usage is not None
    assert reply.usage.completion_tokens == 6
    pieces = [
        c.choices[0].text
        for c in api.completions.create(
            model="tiny2", prompt="Once upon a time", max_tokens=6, stream=True
        )
        if c.choices
    ]
    assert len(pieces) > 1 and "".join(pieces)
    assert {"tiny", "tiny2"} <= set(workers(vllama_daemon))


def test_embeddings(vllama_daemon: Daemon) -> None:
    result = client(vllama_daemon).embeddings.create(
        model="tiny-embed", input=["hello world", "goodbye"]
    )
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 128
    assert result.data[0].embedding != result.data[1].embedding


def test_32_concurrent_requests_all_succeed(vllama_daemon: Daemon) -> None:
    # Whole answers are counted by their finish and token count, not by their text: a random model
    # sampled at temperature 1 may say nothing visible.
    async def run() -> list[tuple[str | None, int]]:
        api = openai.AsyncOpenAI(base_url=vllama_daemon.url + "/v1", api_key="x", timeout=300)
        async with api:

            async def one(i: int) -> tuple[str | None, int]:
                if i % 2:
                    stream = await api.chat.completions.create(
                        model="tiny",
                        messages=MESSAGES,
                        max_tokens=16,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    chunks = [c async for c in stream]
                    finish = next(
                        (
                            c.choices[0].finish_reason
                            for c in chunks
                            if c.choices and c.choices[0].finish_reason
                        ),
                        None,
                    )
                    usage = chunks[-1].usage
                    return finish, usage.completion_tokens if usage else 0
                reply = await api.chat.completions.create(
                    model="tiny", messages=MESSAGES, max_tokens=16
                )
                return reply.choices[0].finish_reason, (
                    reply.usage.completion_tokens if reply.usage else 0
                )

            return await asyncio.gather(*(one(i) for i in range(32)))

    answers = asyncio.run(run())
    assert len(answers) == 32
    assert all(finish in ("stop", "length") and tokens >= 1 for finish, tokens in answers), answers


def test_openai_errors_for_bad_requests(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    with pytest.raises(openai.NotFoundError) as info:
        api.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "no-such-model" in str(info.value)
    response = httpx.post(vllama_daemon.url + "/v1/chat/completions", content=b"{oops")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_killed_worker_is_replaced_and_its_tree_is_gone(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    server = workers(vllama_daemon)["tiny"]
    old_tree = worker_tree(server)
    assert len(old_tree) > 2, "a guard, and vLLM runs its engine in child processes"
    os.kill(server.pid, signal.SIGKILL)  # the API server only, as an OOM killer might
    reply = api.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content
    assert workers(vllama_daemon)["tiny"].pid != server.pid
    eventually_blocking(
        lambda: not any(alive(p) for p in old_tree),
        within=30,
        what="the old engine processes gone",
        every=0.2,
    )
