"""Peers on real vLLM: a front daemon with no models of its own serves the session daemon's models
(another vllama: Ollama requests pass through) and one of its workers' vLLM servers (a plain vLLM
server: Ollama requests are translated by the front), through the official clients."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import psutil
import pytest

from tests.daemon import Daemon
from tests.e2e.helpers import own_daemon, workers

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def front(
    vllama_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, str]]:
    # The session daemon's "tiny" worker is the plain vLLM server; a request through that daemon
    # loads it and starts its keep-alive (5 min), which the module's few requests stay within.
    ollama.Client(host=vllama_daemon.url, timeout=300).generate(model="tiny", prompt="Hi")
    line = workers(vllama_daemon)["tiny"].cmdline()
    line = " ".join(line).split()
    plain = f"http://127.0.0.1:{line[line.index('--port') + 1]}"
    server = {"health_interval": 1, "warm_spares": 0}  # nothing to load here
    peers = {"plain": {"url": plain}, "box": {"url": vllama_daemon.url}}  # "tiny": the plain one
    with own_daemon(tmp_path_factory, "peers", server, {}, peers) as daemon:
        httpx.get(daemon.url + "/api/tags", timeout=30)  # up
        yield daemon, plain
        assert not [
            p for p in psutil.Process(daemon.proc.pid).children() if "vllm" in " ".join(p.cmdline())
        ]


def test_the_peers_models_are_listed_as_remote(
    front: tuple[Daemon, str], vllama_daemon: Daemon
) -> None:
    daemon, plain = front
    listed = {m.model: m for m in ollama.Client(host=daemon.url).list().models}
    raw = httpx.get(daemon.url + "/api/tags").json()["models"]
    hosts = {m["name"]: m["remote_host"] for m in raw}
    assert hosts["tiny:latest"] == plain
    assert hosts["tiny2:latest"] == vllama_daemon.url
    assert "tiny-embed:latest" in listed


def test_ollama_client_through_a_vllama_peer_and_a_plain_vllm_peer(
    front: tuple[Daemon, str],
) -> None:
    daemon, _ = front
    client = ollama.Client(host=daemon.url, timeout=300)
    # tiny2 lives on the vllama peer: the request passes through, the peer loads the model.
    reply = client.chat(model="tiny2", messages=MESSAGES, options={"num_predict": 4})
    assert reply.done and reply.eval_count == 4 and reply.model == "tiny2"
    # tiny is the plain vLLM server: the front translates Ollama to OpenAI and back.
    parts = list(
        client.chat(model="tiny", messages=MESSAGES, stream=True, options={"num_predict": 5})
    )
    assert parts[-1].done and parts[-1].eval_count == 5
    vectors = client.embed(model="tiny-embed", input=["hello", "world"])
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) == 128


def test_openai_client_through_both_peers(front: tuple[Daemon, str]) -> None:
    daemon, _ = front
    api = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", timeout=300)
    for model in ("tiny", "tiny2"):
        reply = api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
        assert reply.usage is not None and reply.usage.completion_tokens == 3
    owners = {m.id: m.owned_by for m in api.models.list()}
    assert owners["tiny"] == "peer:plain" and owners["tiny2:latest"] == "peer:box"
