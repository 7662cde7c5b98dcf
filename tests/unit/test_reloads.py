"""SIGHUP's reload passes (`server.Reloads`): a model change that fails is reported by the pass,
once, as a log line naming the change, never left to asyncio's "Task exception was never
retrieved" at garbage collection."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from vllama.api.services import Services
from vllama.config.settings import Config, load_config
from vllama.server import Reloads


async def _fails() -> None:
    raise RuntimeError("port 43001 taken")


async def test_a_failed_model_change_is_logged_by_the_pass() -> None:
    config = load_config(file_data={"models": {"m": {"model": "org/m"}}})
    made: list[asyncio.Task[object]] = []

    def reconfigure(fresh: Config) -> list[asyncio.Task[object]]:
        made.append(asyncio.create_task(_fails(), name="reload-m"))
        return list(made)

    services: Any = SimpleNamespace(
        registry=SimpleNamespace(reconfigure=lambda read: read),
        scheduler=SimpleNamespace(reconfigure=reconfigure),
    )
    reloads = Reloads(lambda: config, cast(Services, services), config)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        with capture_logs() as logs:
            runner = asyncio.create_task(reloads.run())
            reloads.request()
            for _ in range(50):
                await asyncio.sleep(0)
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
        failed = [e for e in logs if e["event"] == "config reload: a model change failed"]
        assert [(e["change"], e["error"]) for e in failed] == [("reload-m", "port 43001 taken")]
        made.clear()
        gc.collect()
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)
