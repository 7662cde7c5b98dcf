"""Helpers to run vllama against the fake vLLM server (tests/fake_vllm.py)."""

from __future__ import annotations

from typing import Any

from tests.conftest import FAKE_ENGINE_COMMAND
from vllama.config import Config, load_config


def fake_config(models: dict[str, dict[str, Any]], **server: Any) -> Config:
    """A config whose workers are fake vLLM servers; `models` maps name -> extra spec keys."""
    server_table: dict[str, Any] = {
        "engine_command": FAKE_ENGINE_COMMAND,
        "stop_timeout": 3,
        "health_interval": 0.5,
        "load_stall_timeout": 20,
        **server,
    }
    model_tables = {name: {"model": f"fake/{name}", **spec} for name, spec in models.items()}
    return load_config(file_data={"server": server_table, "models": model_tables})
