"""A short soak with real vLLM: a model killed again and again recovers on its own, and killing
the daemon itself leaves no worker behind."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.component.fakes import eventually_blocking
from tests.daemon import Daemon
from tests.e2e.conftest import real_model
from tests.e2e.helpers import alive, own_daemon, worker_tree, workers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    server = {
        "crash_loop_failures": 2,
        "crash_loop_window": "30s",  # a kill within 30 s of ready counts as a fast failure
        "restart_backoff": "0s",
        "fatal_retry_backoff": "1s",
    }
    models = {"tiny": real_model(demo_models["chat"])}
    with own_daemon(tmp_path_factory, "resilience", server, models) as running:
        yield running


def complete(daemon: Daemon) -> httpx.Response:
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    return httpx.post(daemon.url + "/v1/completions", json=body, timeout=300)


def kill_worker(daemon: Daemon) -> None:
    (worker,) = workers(daemon).values()
    worker.send_signal(signal.SIGKILL)
    eventually_blocking(lambda: not workers(daemon), within=20, what="the worker seen dead")


def test_a_model_in_a_crash_loop_serves_again_on_its_own(daemon: Daemon) -> None:
    assert complete(daemon).status_code == 200
    kill_worker(daemon)  # fast failure 1
    assert complete(daemon).status_code == 200  # restarted by this request
    kill_worker(daemon)  # fast failure 2: the next load attempt marks it failed
    refused = complete(daemon)
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    # No request needed: vllama retries it itself after fatal_retry_backoff.
    eventually_blocking(lambda: workers(daemon), within=180, what="vllama's own retry", every=0.5)
    for _ in range(120):
        answer = complete(daemon)
        if answer.status_code == 200:
            break
        time.sleep(1)
    assert answer.status_code == 200, answer.text
    log = daemon.log()
    assert "retrying later" in log
    # The refusal while it was marked failed is no error line (its loads never failed).
    assert log.count("model load failed") == 0


def test_killing_the_daemon_leaves_no_worker(daemon: Daemon) -> None:
    assert complete(daemon).status_code == 200
    tree = [p for server in workers(daemon).values() for p in worker_tree(server)]
    assert len(tree) >= 3  # guard, API server, EngineCore
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    eventually_blocking(
        lambda: not any(alive(p) for p in tree), within=10, what="every worker gone", every=0.1
    )
