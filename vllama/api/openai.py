"""OpenAI API: `/v1/*`, relayed to the model's worker unchanged."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from vllama.api.common import read_json_object, requested_model, servable_model
from vllama.api.errors import BadRequest
from vllama.api.keys import SCHEDULER
from vllama.api.ollama.options import map_options
from vllama.api.relay import relay_response, worker_request
from vllama.catalog.derived import DerivedModel

_CREATED = int(time.time())


def apply_derived(payload: dict[str, Any], derived: DerivedModel) -> None:
    """A derived model's system prompt and parameters, under what the request sets itself."""
    try:
        defaults = map_options(derived.parameters, None)
    except BadRequest:  # validated at /api/create; a hand-edited store must not break requests
        defaults = {}
    for key, value in defaults.items():
        payload.setdefault(key, value)
    messages = payload.get("messages")
    if derived.system and isinstance(messages, list):
        if not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
            payload["messages"] = [{"role": "system", "content": derived.system}, *messages]


def _relay_handler(path: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        body, payload = await read_json_object(request)
        resolved = await servable_model(request, requested_model(payload))
        served = resolved.served_name
        # The body goes upstream as received unless the worker must see something else: its own
        # served name (for an alias or `name:latest`) or a derived model's defaults.
        if payload["model"] != served or resolved.derived is not None:
            payload["model"] = served
            if resolved.derived is not None:
                apply_derived(payload, resolved.derived)
            body = json.dumps(payload).encode()
        async with worker_request(request, served, path, body) as leased:
            return await relay_response(request, leased.response)

    return handler


chat_completions = _relay_handler("/v1/chat/completions")
completions = _relay_handler("/v1/completions")
embeddings = _relay_handler("/v1/embeddings")


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "vllama"}


async def list_models(request: web.Request) -> web.Response:
    data = [_model_card(model.name) for model in request.app[SCHEDULER].status().models]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    requested = request.match_info["model"]
    await servable_model(request, requested)
    return web.json_response(_model_card(requested))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
