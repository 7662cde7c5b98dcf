"""SIGTERM stops the daemon and every worker. The daemon is this module's own, so the test works
in any order: run alone, first, or after the modules that share the session's daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon
from tests.e2e.conftest import real_model
from tests.e2e.helpers import alive, own_daemon, worker_tree, workers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    models = {
        "tiny": real_model(demo_models["chat"]),
        "tiny-embed": real_model(demo_models["embed"]),
    }
    with own_daemon(tmp_path_factory, "shutdown", {"drain_timeout": 30}, models) as running:
        yield running


def test_shutdown_stops_every_worker_and_exits_zero(daemon: Daemon) -> None:
    # Two workers, a chat model's and an embedding model's: every one must go.
    completion = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    response = httpx.post(daemon.url + "/v1/completions", json=completion, timeout=300)
    assert response.status_code == 200, response.text
    embedding = {"model": "tiny-embed", "input": "hi"}
    response = httpx.post(daemon.url + "/v1/embeddings", json=embedding, timeout=300)
    assert response.status_code == 200, response.text
    servers = workers(daemon)
    assert set(servers) == {"tiny", "tiny-embed"}
    trees = [proc for server in servers.values() for proc in worker_tree(server)]
    assert daemon.terminate() == 0
    assert not [proc.pid for proc in trees if alive(proc)]
