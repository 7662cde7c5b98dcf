"""The aiohttp application: routes, middleware, and what the handlers share."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from aiohttp import web

from vllama.api import openai, status_page
from vllama.api.errors import error_middleware
from vllama.api.inflight import InFlight
from vllama.api.keys import (
    CONFIG,
    DEVICES,
    IN_FLIGHT,
    LEFTOVERS,
    LIVE,
    METRICS,
    PEERS,
    REGISTRY,
    SCHEDULER,
    UPSTREAM,
    WEIGHT_BYTES,
)
from vllama.api.live import Live
from vllama.api.observe import add_request_id, metrics_endpoint, observe_middleware
from vllama.api.ollama import inference as ollama
from vllama.api.ollama import models as ollama_models
from vllama.api.openapi import openapi_json
from vllama.api.relay import new_upstream_session
from vllama.api.security import Access, cors_headers, security_middleware
from vllama.catalog.facts import ModelFacts
from vllama.catalog.registry import Registry
from vllama.config.settings import Config, ModelSpec
from vllama.engine.argv import base_env
from vllama.engine.leftovers import Leftovers
from vllama.engine.spares import SparePool
from vllama.ops.metrics import Metrics
from vllama.remote.peers import PeerDirectory
from vllama.scheduling.coordinator import FactsSource
from vllama.scheduling.devices import Devices
from vllama.scheduling.scheduler import Scheduler, process_workers


async def root(request: web.Request) -> web.Response:
    # Tools probe `/` for liveness, as they do Ollama's.
    # Some clients match Ollama's exact text; the version endpoint says what we are.
    return web.Response(text="Ollama is running")


async def _supervision(app: web.Application) -> AsyncIterator[None]:
    """The upstream pool and the scheduler live exactly as long as the application.

    Cleanup runs after the runner has drained requests in flight: then every worker is stopped
    (each tree confirmed gone), NVML shut down and the pool closed.
    """
    upstream = new_upstream_session()
    app[UPSTREAM] = upstream
    devices, metrics = app[DEVICES], app[METRICS]
    config = app[CONFIG]
    registry, given = app[REGISTRY], app.get(WEIGHT_BYTES)
    facts = _with_sizes(registry.facts, given) if given is not None else registry.facts
    leftovers = app.get(LEFTOVERS)
    spares = SparePool(config.server, base_env(os.environ), leftovers)
    scheduler = Scheduler(
        config,
        process_workers(config.server, upstream, leftovers, spares),
        devices=devices,
        facts=facts,
        spares=spares,
    )
    app[SCHEDULER] = scheduler
    scheduler.events.subscribe(metrics.listen)
    scheduler.events.subscribe(app[LIVE].listen)
    peers = PeerDirectory(
        config.peers, upstream, registry.is_configured, config.server.health_interval
    )
    app[PEERS] = peers
    metrics.attach(scheduler.status, devices, peers.views)
    sampler = asyncio.create_task(metrics.sample_forever(upstream), name="metrics-sampler")
    peers.start()
    scheduler.preload()
    spares.refill()
    yield
    sampler.cancel()
    await peers.close()
    await scheduler.stop_all()
    devices.close()
    await upstream.close()


def _with_sizes(facts: FactsSource, weight_bytes: Callable[[ModelSpec], int]) -> FactsSource:
    """A test's model sizes in place of the files' (a pretend GPU host with big models)."""

    async def sized(spec: ModelSpec) -> ModelFacts:
        return replace(await facts(spec), weight_bytes=weight_bytes(spec))

    return sized


def build_app(
    config: Config,
    devices: Devices | None = None,
    weight_bytes: Callable[[ModelSpec], int] | None = None,
    leftovers: Leftovers | None = None,
) -> web.Application:
    """`devices` and `weight_bytes` replace the real NVML/psutil boundary and the size of the
    model's files, for tests that play a GPU host."""
    access = Access.from_settings(config.server)
    app = web.Application(
        middlewares=[observe_middleware, security_middleware(access), error_middleware],
        client_max_size=config.server.max_request_bytes,
    )
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(cors_headers(access))
    app[REGISTRY] = registry = Registry(config)
    app[CONFIG] = registry.config  # library names (`model = "qwen3:8b"`) made folders or repos
    app[METRICS] = Metrics()
    app[DEVICES] = devices if devices is not None else Devices()
    if weight_bytes is not None:
        app[WEIGHT_BYTES] = weight_bytes
    app[IN_FLIGHT] = InFlight()
    app[LIVE] = Live()
    if leftovers is not None:
        app[LEFTOVERS] = leftovers
    app.cleanup_ctx.append(_supervision)
    app.router.add_get("/", root)  # add_get also answers HEAD
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_json)
    openai.add_routes(app)
    ollama.add_routes(app)
    ollama_models.add_routes(app)
    status_page.add_routes(app)
    return app
