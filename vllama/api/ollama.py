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

from vllama.api.errors import ApiError
from vllama.api.keys import REGISTRY, SCHEDULER, UPSTREAM
from vllama.api.ollama_translate import (
    BadRequest,
    Kind,
    OllamaStream,
    Timing,
    UpstreamCall,
    chat_call,
    created_at,
    generate_call,
    load_response,
    upstream_error_message,
)
from vllama.api.openai import read_json_object
from vllama.durations import DurationError, parse_duration
from vllama.engine.worker import LoadError, Worker
from vllama.registry import Resolved
from vllama.scheduler import ShuttingDown

NDJSON = "application/x-ndjson"


def requested_model(payload: dict[str, Any], key: str = "model") -> str:
    value = payload.get(key)
    if value is None or value == "":
        raise ApiError(400, "model is required")
    if not isinstance(value, str):
        raise ApiError(400, "model must be a string")
    return value


def resolve(request: web.Request, requested: str) -> Resolved:
    resolved = request.app[REGISTRY].resolve(requested)
    if resolved is None:
        raise ApiError(404, f"model '{requested}' not found")
    request.app[SCHEDULER].add_model(resolved.slot, resolved.spec)
    return resolved


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


def schedule_error(error: Exception) -> ApiError:
    if isinstance(error, LoadError):
        return ApiError(503, error.detail())
    return ApiError(503, str(error))


async def generate(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "generate")


async def chat(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "chat")


async def _inference(request: web.Request, kind: Kind) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    resolved = resolve(request, requested)
    keep_alive = keep_alive_of(payload)
    streaming = stream_flag(payload)
    scheduler = request.app[SCHEDULER]
    if _is_load_request(payload, kind):
        if keep_alive == 0:
            scheduler.expire(resolved.slot)
            return web.json_response(load_response(requested, kind, "unload"))
        try:
            async with scheduler.lease(resolved.slot, keep_alive):
                pass
        except (LoadError, ShuttingDown) as error:
            raise schedule_error(error) from None
        return web.json_response(load_response(requested, kind, "load"))
    # Validate everything we can before a worker is touched; the context limit needs the worker.
    registry = request.app[REGISTRY]
    build = generate_call if kind == "generate" else chat_call
    try:
        build(payload, registry.traits(resolved, None), requested)
    except BadRequest as exc:
        raise ApiError(400, str(exc)) from None
    timing = Timing()
    try:
        async with scheduler.lease(resolved.slot, keep_alive) as worker:
            timing.loaded = Timing.now()
            try:
                call = build(payload, registry.traits(resolved, worker.max_model_len), requested)
            except BadRequest as exc:
                raise ApiError(400, str(exc)) from None
            translator = OllamaStream(kind, requested, timing)
            return await _relay_translated(request, worker, call, translator, streaming)
    except (LoadError, ShuttingDown) as error:
        raise schedule_error(error) from None


def _is_load_request(payload: dict[str, Any], kind: Kind) -> bool:
    if kind == "generate":
        return not payload.get("prompt") and not payload.get("images")
    return payload.get("messages") in (None, [])


async def _relay_translated(
    request: web.Request,
    worker: Worker,
    call: UpstreamCall,
    translator: OllamaStream,
    streaming: bool,
) -> web.StreamResponse:
    session = request.app[UPSTREAM]
    translator.timing.sent = Timing.now()
    try:
        upstream = await session.post(worker.base_url + call.path, json=call.body)
    except aiohttp.ClientError as exc:
        raise ApiError(502, f"the model's worker did not answer: {exc}") from None
    async with upstream:
        if upstream.status != 200:
            message = upstream_error_message(upstream.status, await upstream.read())
            raise ApiError(400 if upstream.status < 500 else 500, message)
        if not streaming:
            try:
                async for chunk in sse_events(upstream):
                    translator.on_chunk(chunk)
            except aiohttp.ClientError as exc:
                raise ApiError(500, f"the model's worker failed mid-response: {exc}") from None
            return web.json_response(translator.whole())
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        try:
            async for chunk in sse_events(upstream):
                for obj in translator.on_chunk(chunk):
                    await response.write(ndjson(obj))
        except aiohttp.ClientError as exc:
            await response.write(ndjson({"error": f"the model's worker failed mid-stream: {exc}"}))
            await response.write_eof()
            return response
        for obj in translator.pending_tool_calls():
            await response.write(ndjson(obj))
        await response.write(ndjson(translator.final()))
        await response.write_eof()
        return response


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
    resolved = resolve(request, requested)
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
    vectors, prompt_tokens, loaded = await _embed_upstream(
        request, resolved, body, keep_alive, timing
    )
    if not texts:
        vectors = []
    end = Timing.now()
    return web.json_response(
        {
            "model": requested,
            "embeddings": vectors,
            "total_duration": end - timing.start,
            "load_duration": loaded - timing.start,
            "prompt_eval_count": prompt_tokens,
        }
    )


async def embeddings_legacy(request: web.Request) -> web.StreamResponse:
    """The older `/api/embeddings`: `prompt` -> `embedding`."""
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    resolved = resolve(request, requested)
    keep_alive = keep_alive_of(payload)
    prompt = payload.get("prompt", "")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if not prompt:  # Ollama answers an empty prompt with an empty embedding (and loads)
        try:
            async with request.app[SCHEDULER].lease(resolved.slot, keep_alive):
                pass
        except (LoadError, ShuttingDown) as error:
            raise schedule_error(error) from None
        return web.json_response({"embedding": []})
    body = {"model": resolved.slot, "input": [prompt]}
    vectors, _, _ = await _embed_upstream(request, resolved, body, keep_alive, Timing())
    return web.json_response({"embedding": vectors[0]})


async def _embed_upstream(
    request: web.Request,
    resolved: Resolved,
    body: dict[str, Any],
    keep_alive: float | None,
    timing: Timing,
) -> tuple[list[list[float]], int, int]:
    try:
        async with request.app[SCHEDULER].lease(resolved.slot, keep_alive) as worker:
            loaded = Timing.now()
            if not body["input"]:
                return [], 0, loaded
            try:
                async with request.app[UPSTREAM].post(
                    worker.base_url + "/v1/embeddings", json=body
                ) as upstream:
                    raw = await upstream.read()
                    if upstream.status != 200:
                        message = upstream_error_message(upstream.status, raw)
                        raise ApiError(400 if upstream.status < 500 else 500, message)
            except aiohttp.ClientError as exc:
                raise ApiError(502, f"the model's worker did not answer: {exc}") from None
    except (LoadError, ShuttingDown) as error:
        raise schedule_error(error) from None
    data = json.loads(raw)
    ordered = sorted(data["data"], key=lambda item: item["index"])
    usage = data.get("usage") or {}
    return [item["embedding"] for item in ordered], int(usage.get("prompt_tokens") or 0), loaded


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings_legacy)


__all__ = ["add_routes", "created_at"]
