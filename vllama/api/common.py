"""What every handler does first: read the JSON body, name the model, look it up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping

from aiohttp import web

from vllama.api.errors import ApiError, BadRequest
from vllama.api.keys import MODEL_KEY, services
from vllama.api.protocol import JsonObject
from vllama.catalog.files import ModelFiles
from vllama.catalog.registry import ModelTraits, Resolved


async def read_json_object(request: web.Request) -> tuple[bytes, JsonObject]:
    """The raw body and its parsed JSON object; 400 for anything else, 413 past the size limit."""
    if request.content.is_eof():
        # All of it came in with the headers (most requests): nothing to wait for, so no timer
        # (arming and cancelling one is a fifth of what reading a small body costs).
        body = await request.read()  # aiohttp raises 413 past client_max_size
    else:
        timeout = services(request).config.server.body_timeout
        try:
            async with asyncio.timeout(timeout):
                body = await request.read()
        except TimeoutError:
            raise ApiError(408, f"request body not received within {timeout:g}s") from None
    if not body:
        raise BadRequest("missing request body")
    try:
        payload = json.loads(body)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of more than 4300 digits
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    return body, payload


def requested_model(payload: Mapping[str, object], *keys: str) -> str:
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
    resolved = await services(request).registry.lookup(requested)
    services(request).scheduler.add_model(resolved.served_name, resolved.spec)
    request[MODEL_KEY] = resolved.served_name  # the metrics label and access-log field
    return resolved


def listing_key(name: str, files: ModelFiles | None) -> tuple[bool, str]:
    """A model's place in a listing (`/api/tags`, `/v1/models`): models that chat first, then
    embedding and rerank models, each group by name. Front ends take the first model listed for
    a new chat (Open WebUI does), and an embedding model there answers the first "hello" with
    an error. A model not on disk yet is taken to chat, as the registry takes it."""
    chats = files is None or "completion" in files.capabilities
    return (not chats, name)


async def in_listing_order(
    request: web.Request, models: Iterable[tuple[str, Resolved]]
) -> list[tuple[str, Resolved, ModelFiles | None]]:
    """`models` (listed name, model) with their files, in `listing_key`'s order."""
    registry = services(request).registry
    described = [(name, resolved, await registry.files(resolved)) for name, resolved in models]
    return sorted(described, key=lambda entry: listing_key(entry[0], entry[2]))


async def served_traits(request: web.Request, resolved: Resolved) -> ModelTraits:
    """The model's traits, with the context length its worker served when it last ran."""
    status = services(request).scheduler.model_status(resolved.served_name)
    served = status.context_length if status is not None else None
    return await services(request).registry.traits(resolved, served)


async def model_context(request: web.Request, resolved: Resolved) -> int | None:
    """The context its worker served when it last ran, else the one it will serve (its
    `--max-model-len`, else its config.json's)."""
    served = services(request).scheduler.context_length(resolved.served_name)
    return await services(request).registry.context_length(resolved, served)


def check_capability(
    traits: ModelTraits, requested: str, needs: frozenset[str], action: str
) -> None:
    """400 before any load when the model can do none of `needs` (Ollama's wording); a model
    whose files are not on disk yet is let through (vLLM itself will say)."""
    if traits.described and not needs & traits.capabilities:
        raise _unsupported(requested, action)


async def check_files_capability(
    request: web.Request, resolved: Resolved, requested: str, needs: frozenset[str], action: str
) -> None:
    """`check_capability` for needs that a model's files alone decide (completion, embedding,
    rerank; not tools or thinking, which its parsers add): what every relayed request checks,
    without the worker's status and the parser detection that full traits take."""
    files = await services(request).registry.files(resolved)
    if files is not None and needs.isdisjoint(files.capabilities):
        raise _unsupported(requested, action)


def _unsupported(requested: str, action: str) -> BadRequest:
    return BadRequest(f'"{requested}" does not support {action}', param="model")
