"""OpenAI API: `/v1/*`, relayed to the model's worker unchanged."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from vllama.api.errors import ApiError
from vllama.api.keys import SCHEDULER, UPSTREAM
from vllama.api.relay import WorkerUnreachable, relay
from vllama.engine.worker import LoadError
from vllama.scheduler import Scheduler, ShuttingDown

_CREATED = int(time.time())


async def read_json_object(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed JSON object; 400 for anything else, 413 past the size limit."""
    body = await request.read()  # aiohttp raises 413 past client_max_size
    if not body:
        raise ApiError(400, "missing request body")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body, payload


def resolve_model(scheduler: Scheduler, payload: dict[str, Any]) -> str:
    requested = payload.get("model")
    if requested is None or requested == "":
        raise ApiError(400, "model is required", param="model")
    if not isinstance(requested, str):
        raise ApiError(400, "model must be a string", param="model")
    name = scheduler.resolve(requested)
    if name is None:
        raise ApiError(
            404, f"The model `{requested}` does not exist.", code="model_not_found", param="model"
        )
    return name


async def relay_to_model(
    request: web.Request, name: str, path: str, body: bytes
) -> web.StreamResponse:
    """Relay to the model's worker; if it turns out dead before taking the request, restart it.

    A worker that died since it was last seen refuses the connection before anything was sent,
    so one retry on a fresh lease (which restarts it) is safe and hides the crash from the client.
    """
    scheduler = request.app[SCHEDULER]
    for attempt in range(2):
        async with scheduler.lease(name) as worker:
            try:
                return await relay(request, request.app[UPSTREAM], worker.base_url + path, body)
            except WorkerUnreachable as exc:
                if attempt == 1:
                    raise ApiError(
                        502, f"the model's worker did not answer: {exc}", code="worker_error"
                    ) from None
        await worker.confirm_health()
    raise AssertionError("unreachable")


def _relay_handler(path: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        scheduler = request.app[SCHEDULER]
        body, payload = await read_json_object(request)
        name = resolve_model(scheduler, payload)
        if payload["model"] != name:  # an alias or `name:latest`: the worker knows the name only
            payload["model"] = name
            body = json.dumps(payload).encode()
        try:
            return await relay_to_model(request, name, path, body)
        except LoadError as error:
            raise ApiError(503, error.detail(), code="model_load_failed") from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), code="shutting_down") from None

    return handler


chat_completions = _relay_handler("/v1/chat/completions")
completions = _relay_handler("/v1/completions")
embeddings = _relay_handler("/v1/embeddings")


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "vllama"}


async def list_models(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    data = [_model_card(slot.name) for slot in scheduler.slots()]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    requested = request.match_info["model"]
    name = scheduler.resolve(requested)
    if name is None:
        raise ApiError(
            404, f"The model `{requested}` does not exist.", code="model_not_found", param="model"
        )
    return web.json_response(_model_card(name))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
