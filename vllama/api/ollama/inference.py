"""Ollama's native inference API: `/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`.

Requests are validated and translated before a worker is touched (bad input never starts one),
sent upstream always streamed with usage, and translated back: NDJSON for `stream: true` (the
default), one JSON object otherwise. After the first NDJSON line an error is a last line
`{"error": ...}`, as Ollama does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from vllama.api.common import read_json_object, requested_model, resolve_model
from vllama.api.errors import ApiError
from vllama.api.keys import METRICS, MODEL_KEY, REGISTRY, SCHEDULER
from vllama.api.observe import mark_first_byte
from vllama.api.ollama.translate import (
    BadRequest,
    Kind,
    OllamaStream,
    Timing,
    chat_call,
    created_at,
    generate_call,
    load_response,
    upstream_error_message,
)
from vllama.api.relay import scheduling_error, worker_request
from vllama.catalog.registry import Resolved
from vllama.config.units import DurationError, parse_duration
from vllama.engine.worker import LoadError, Worker
from vllama.scheduling.scheduler import QueueFull, ShuttingDown

NDJSON = "application/x-ndjson"


def keep_alive_of(payload: dict[str, Any]) -> float | None:
    if payload.get("keep_alive") is None:
        return None
    try:
        return parse_duration(payload["keep_alive"])
    except DurationError as exc:
        raise ApiError(400, f"keep_alive: {exc}") from None


def stream_flag(payload: dict[str, Any]) -> bool:
    value = payload.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ApiError(400, "stream must be a boolean")
    return value


async def load_only(request: web.Request, slot: str, keep_alive: float | None) -> int:
    """Load a model without a request to it (Ollama's empty prompt); returns when it was ready."""
    try:
        async with request.app[SCHEDULER].lease(slot, keep_alive, explicit=True):
            return Timing.now()
    except (LoadError, QueueFull, ShuttingDown) as error:
        raise scheduling_error(error) from None


async def generate(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "generate")


async def chat(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "chat")


async def _inference(request: web.Request, kind: Kind) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    resolved = resolve_model(request, requested)
    keep_alive = keep_alive_of(payload)
    streaming = stream_flag(payload)
    scheduler = request.app[SCHEDULER]
    if _is_load_request(payload, kind):
        if keep_alive == 0:
            scheduler.expire(resolved.slot)
            return web.json_response(load_response(requested, kind, "unload"))
        await load_only(request, resolved.slot, keep_alive)
        return web.json_response(load_response(requested, kind, "load"))
    # Validate everything we can before a worker is touched; the context limit needs the worker.
    registry = request.app[REGISTRY]
    build = generate_call if kind == "generate" else chat_call
    traits = registry.traits(resolved, None)
    try:
        path = build(payload, traits, requested).path
    except BadRequest as exc:
        raise ApiError(400, str(exc)) from None
    timing = Timing()
    translator = OllamaStream(kind, requested, timing)

    def upstream_body(worker: Worker) -> bytes:
        timing.loaded = Timing.now()
        traits = registry.traits(resolved, worker.max_model_len)
        try:
            call = build(payload, traits, requested)
        except BadRequest as exc:  # only the served context length can fail here
            raise ApiError(400, str(exc)) from None
        timing.sent = Timing.now()
        return json.dumps(call.body).encode()

    async with worker_request(request, resolved.slot, path, upstream_body, keep_alive) as (
        _,
        upstream,
    ):
        return await _relay_translated(request, upstream, translator, streaming)


def _is_load_request(payload: dict[str, Any], kind: Kind) -> bool:
    if kind == "generate":
        return not payload.get("prompt") and not payload.get("images")
    return payload.get("messages") in (None, [])


async def _relay_translated(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    translator: OllamaStream,
    streaming: bool,
) -> web.StreamResponse:
    if upstream.status != 200:
        message = upstream_error_message(upstream.status, await upstream.read())
        raise ApiError(400 if upstream.status < 500 else 500, message)
    if not streaming:
        try:
            async for chunk in sse_events(upstream):
                translator.on_chunk(chunk)
        except aiohttp.ClientError as exc:
            raise ApiError(500, f"the model's worker failed mid-response: {exc}") from None
        _count_usage(request, translator)
        return web.json_response(translator.whole())
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        async for chunk in sse_events(upstream):
            for obj in translator.on_chunk(chunk):
                mark_first_byte(request)
                await response.write(ndjson(obj))
    except aiohttp.ClientError as exc:
        await response.write(ndjson({"error": f"the model's worker failed mid-stream: {exc}"}))
        await response.write_eof()
        return response
    for obj in translator.pending_tool_calls():
        await response.write(ndjson(obj))
    _count_usage(request, translator)
    await response.write(ndjson(translator.final()))
    await response.write_eof()
    return response


def _count_usage(request: web.Request, translator: OllamaStream) -> None:
    request.app[METRICS].count_usage(
        request.get(MODEL_KEY, ""), translator.prompt_tokens, translator.completion_tokens
    )


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def sse_events(upstream: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE stream, until `[DONE]`; an in-band error raises."""
    buffer = b""
    while True:
        chunk = await upstream.content.readany()
        if not chunk:
            return
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                obj = json.loads(data)
                if isinstance(obj, dict) and "error" in obj and "choices" not in obj:
                    raise aiohttp.ClientPayloadError(upstream_error_message(500, data))
                yield obj


# -- embeddings -------------------------------------------------------------------------------


async def embed(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    resolved = resolve_model(request, requested)
    keep_alive = keep_alive_of(payload)
    texts = payload.get("input", [])
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input must be a string or a list of strings")
    body: dict[str, Any] = {"model": resolved.slot, "input": texts}
    dimensions = payload.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise ApiError(400, "dimensions must be a positive integer")
        body["dimensions"] = dimensions
    truncate = payload.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ApiError(400, "truncate must be a boolean")
    if truncate:
        body["truncate_prompt_tokens"] = -1  # vLLM: truncate to the model's maximum length
    timing = Timing()
    if texts:
        vectors, prompt_tokens = await _embed_upstream(request, resolved, body, keep_alive, timing)
    else:  # Ollama loads the model and answers with no embeddings
        timing.loaded = await load_only(request, resolved.slot, keep_alive)
        vectors, prompt_tokens = [], 0
    end = Timing.now()
    return web.json_response(
        {
            "model": requested,
            "embeddings": vectors,
            "total_duration": end - timing.start,
            "load_duration": (timing.loaded or timing.start) - timing.start,
            "prompt_eval_count": prompt_tokens,
        }
    )


async def embeddings_legacy(request: web.Request) -> web.StreamResponse:
    """The older `/api/embeddings`: `prompt` -> `embedding`."""
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    resolved = resolve_model(request, requested)
    keep_alive = keep_alive_of(payload)
    prompt = payload.get("prompt", "")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if not prompt:  # Ollama answers an empty prompt with an empty embedding (and loads)
        await load_only(request, resolved.slot, keep_alive)
        return web.json_response({"embedding": []})
    body = {"model": resolved.slot, "input": [prompt]}
    vectors, _ = await _embed_upstream(request, resolved, body, keep_alive, Timing())
    return web.json_response({"embedding": vectors[0]})


async def _embed_upstream(
    request: web.Request,
    resolved: Resolved,
    body: dict[str, Any],
    keep_alive: float | None,
    timing: Timing,
) -> tuple[list[list[float]], int]:
    def upstream_body(worker: Worker) -> bytes:
        timing.loaded = Timing.now()
        return json.dumps(body).encode()

    path = "/v1/embeddings"
    async with worker_request(request, resolved.slot, path, upstream_body, keep_alive) as (
        _,
        upstream,
    ):
        try:
            raw = await upstream.read()
        except aiohttp.ClientError as exc:
            raise ApiError(502, f"the model's worker failed mid-response: {exc}") from None
        if upstream.status != 200:
            message = upstream_error_message(upstream.status, raw)
            raise ApiError(400 if upstream.status < 500 else 500, message)
    data = json.loads(raw)
    ordered = sorted(data["data"], key=lambda item: item["index"])
    usage = data.get("usage") or {}
    return [item["embedding"] for item in ordered], int(usage.get("prompt_tokens") or 0)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings_legacy)


__all__ = ["add_routes", "created_at"]
