"""The aiohttp application: routes, middleware, and what the handlers share."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from vllama.api import openai
from vllama.api.errors import error_middleware
from vllama.api.keys import CONFIG, SCHEDULER, UPSTREAM
from vllama.config import Config
from vllama.scheduler import Scheduler


async def root(request: web.Request) -> web.Response:
    # Tools probe `/` for liveness, as they do Ollama's.
    return web.Response(text="vllama is running")


def build_app(
    config: Config, scheduler: Scheduler, upstream: aiohttp.ClientSession
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.server.max_request_bytes
    )
    app[CONFIG] = config
    app[SCHEDULER] = scheduler
    app[UPSTREAM] = upstream
    app.router.add_get("/", root)  # add_get also answers HEAD
    openai.add_routes(app)
    return app
