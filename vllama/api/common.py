"""What every handler does first: read the JSON body, name the model, resolve it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from vllama.api.errors import ApiError, is_openai_path
from vllama.api.keys import MODEL_KEY, REGISTRY, SCHEDULER
from vllama.catalog.registry import Resolved


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


def requested_model(payload: dict[str, Any], *keys: str) -> str:
    """The model the request names (under `model`, or the first of `keys` present)."""
    value = None
    for key in keys or ("model",):
        value = payload.get(key)
        if value is not None:
            break
    if value is None or value == "":
        raise ApiError(400, "model is required", param="model")
    if not isinstance(value, str):
        raise ApiError(400, "model must be a string", param="model")
    return value


def resolve_model(request: web.Request, requested: str) -> Resolved:
    """The model behind a name, made schedulable; 404 in the path's own words otherwise."""
    resolved = request.app[REGISTRY].resolve(requested)
    if resolved is None:
        if is_openai_path(request.path):
            message = f"The model `{requested}` does not exist."
        else:
            message = f"model '{requested}' not found"
        raise ApiError(404, message, code="model_not_found", param="model")
    request.app[SCHEDULER].add_model(resolved.slot, resolved.spec)
    request[MODEL_KEY] = resolved.slot  # the metrics label and access-log field
    return resolved
