"""The aiohttp application: routes, middleware, and what the handlers share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from vllama.api import openai, status_page
from vllama.api.errors import error_middleware
from vllama.api.keys import SERVICES
from vllama.api.observe import add_request_id, metrics_endpoint, observe_middleware
from vllama.api.ollama import inference as ollama
from vllama.api.ollama import models as ollama_models
from vllama.api.openapi import openapi_json
from vllama.api.relay import new_upstream_session
from vllama.api.security import Access, cors_headers, security_middleware
from vllama.api.services import Services
from vllama.config.settings import Config, ModelSpec
from vllama.engine.leftovers import Leftovers
from vllama.scheduling.devices import Devices


async def root(request: web.Request) -> web.Response:
    # Tools probe `/` for liveness, as they do Ollama's.
    # Some clients match Ollama's exact text; the version endpoint says what we are.
    return web.Response(text="Ollama is running")


def app_for(services: Services) -> web.Application:
    """The application over services its caller built and starts and closes (`server.serve`)."""
    app = _application(services.config)
    app[SERVICES] = services
    return app


def build_app(
    config: Config,
    devices: Devices | None = None,
    weight_bytes: Callable[[ModelSpec], int] | None = None,
    leftovers: Leftovers | None = None,
) -> web.Application:
    """An application with services of its own, built and started when it starts and closed at
    its cleanup (in-process use: tests). `devices` and `weight_bytes` replace the real
    NVML/psutil boundary and the size of the model's files, for tests that play a GPU host."""
    app = _application(config)

    async def own_services(app: web.Application) -> AsyncIterator[None]:
        services = Services.build(config, new_upstream_session(), devices, weight_bytes, leftovers)
        app[SERVICES] = services
        try:
            await services.start()
            yield
        finally:
            await services.close()

    app.cleanup_ctx.append(own_services)
    return app


def _application(config: Config) -> web.Application:
    """Routes and middleware; the handlers find the services under `SERVICES`."""
    access = Access.from_settings(config.server)
    app = web.Application(
        middlewares=[observe_middleware, security_middleware(access), error_middleware],
        client_max_size=config.server.max_request_bytes,
    )
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(cors_headers(access))
    app.router.add_get("/", root)  # add_get also answers HEAD
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_json)
    openai.add_routes(app)
    ollama.add_routes(app)
    ollama_models.add_routes(app)
    status_page.add_routes(app)
    return app
