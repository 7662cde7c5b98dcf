"""Runs last (files run in name order): SIGTERM stops the shared daemon and every worker."""

from __future__ import annotations

import httpx
import pytest

from tests.daemon import Daemon
from tests.e2e.helpers import alive, worker_tree, workers

pytestmark = pytest.mark.e2e


def test_shutdown_stops_every_worker_and_exits_zero(vllama_daemon: Daemon) -> None:
    if not workers(vllama_daemon):  # run on its own: load one model first
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        httpx.post(vllama_daemon.url + "/v1/completions", json=body, timeout=300)
    trees = [proc for server in workers(vllama_daemon).values() for proc in worker_tree(server)]
    assert trees
    assert vllama_daemon.terminate() == 0
    assert not [proc.pid for proc in trees if alive(proc)]
