"""Pulls by Ollama name on a real daemon, from a local fake of the Hugging Face Hub serving the
tiny demo model's real files: `vllama run` pulling a missing model with its progress bar, then
real vLLM serving it by the name it was pulled as; the official Ollama client's pull."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.daemon import VLLAMA, Daemon
from tests.e2e.helpers import own_daemon
from tests.fake_hf import FakeHub, FakeRepo, point_hub_at, serve_in_thread
from vllama.catalog import library
from vllama.demo.config import DEMO_ARGS, DEMO_ENV

pytestmark = pytest.mark.e2e
WEIGHTS = "model.safetensors"


def repo_of(name: str) -> str:
    match = library.lookup(name, library.builtin())
    assert match is not None, name
    return match.repo


@pytest.fixture(scope="module")
def daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A daemon with no models configured whose Hub is the fake: models come only by pulling
    (they get the demo's vLLM arguments for this CPU, as `default_args`)."""
    files = FakeRepo.from_folder(demo_models["chat"]).files
    files = {path: data for path, data in files.items() if not path.startswith(".")}
    files["original/consolidated.00.pth"] = b"\0" * 100_000  # a twin vLLM never reads
    repos = {repo_of(name): FakeRepo(dict(files)) for name in ("qwen3:0.6b", "qwen3:1.7b")}
    hub = FakeHub(repos, bytes_per_second=1_000_000)  # ~1.7 s for the weights: bytes visibly rise
    server = {"default_args": list(DEMO_ARGS), "default_env": dict(DEMO_ENV), "warm_spares": 0}
    with serve_in_thread(hub) as url, pytest.MonkeyPatch.context() as patch:
        point_hub_at(patch, url)  # the daemon reads it from its environment
        patch.delenv("HF_TOKEN", raising=False)
        with own_daemon(tmp_path_factory, "pull", server, {}) as running:
            yield running


def test_vllama_run_pulls_a_missing_model_with_a_moving_bar_then_runs_it(daemon: Daemon) -> None:
    env = {**os.environ, "VLLAMA_HOST": daemon.url}
    done = subprocess.run(
        [*VLLAMA, "run", "qwen3:0.6b", "--keepalive", "10m", "Hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # real vLLM answered (gibberish: the demo's weights are random)
    lines = done.stderr.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success", done.stderr
    percents = [int(m.group(1)) for m in re.finditer(rf"pulling {WEIGHTS} +(\d+)%", done.stderr)]
    assert percents == sorted(percents) and percents[-1] == 100
    assert len([p for p in percents if 0 < p < 100]) >= 2, done.stderr  # a bar that moves
    assert "original/" not in done.stderr
    running = httpx.get(daemon.url + "/api/ps", timeout=30).json()["models"]
    assert [m["name"] for m in running] == ["qwen3:0.6b"]


def test_the_ollama_client_pulls_by_ollama_name_with_byte_progress(daemon: Daemon) -> None:
    client = ollama.Client(host=daemon.url, timeout=300)
    updates = list(client.pull("qwen3:1.7b", stream=True))
    assert updates[-1].status == "success"
    weights = [u.completed or 0 for u in updates if u.status == f"pulling {WEIGHTS}"]
    assert weights == sorted(weights) and len(set(weights)) >= 3
    assert {m.model for m in client.list().models} == {"qwen3:1.7b", "qwen3:0.6b"}
    assert client.show("qwen3:1.7b").details.family == "llama"  # type: ignore[union-attr]
    assert client.pull("qwen3:1.7b", stream=False).status == "success"  # nothing left to fetch
