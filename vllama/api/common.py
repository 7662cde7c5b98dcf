"""What every handler does first: read the JSON body, name the model, look it up."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from vllama.api.errors import BadRequest
from vllama.api.keys import MODEL_KEY, REGISTRY, SCHEDULER
from vllama.catalog.registry import Resolved


async def read_json_object(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed JSON object; 400 for anything else, 413 past the size limit."""
    body = await request.read()  # aiohttp raises 413 past client_max_size
    if not body:
        raise BadRequest("missing request body")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    return body, payload


def requested_model(payload: dict[str, Any], *keys: str) -> str:
    """The model the request names (under `model`, or the first of `keys` present)."""
    value = None
    for key in keys or ("model",):
        value = payload.get(key)
        if value is not None:
            break
    if value is None or value == "":
        raise BadRequest("model is required", param="model")
    if not isinstance(value, str):
        raise BadRequest("model must be a string", param="model")
    return value


async def servable_model(request: web.Request, requested: str) -> Resolved:
    """The model behind a name, made schedulable (`ModelNotFound` otherwise)."""
    resolved = await request.app[REGISTRY].lookup(requested)
    request.app[SCHEDULER].add_model(resolved.served_name, resolved.spec)
    request[MODEL_KEY] = resolved.served_name  # the metrics label and access-log field
    return resolved
