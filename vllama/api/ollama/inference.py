"""Ollama's native inference API: `/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`.

Each request is validated and translated once, before a worker is touched (bad input never starts
one), sent upstream always streamed with usage, and translated back: NDJSON for `stream: true`
(the default), one JSON object otherwise. The NDJSON response starts with its first line, so an
error before it (vLLM's refusal, an in-band error event, a worker gone silent past
`stream_idle_timeout`) is a plain HTTP error; after it, a last line `{"error": ...}`, as Ollama
does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import cast

import aiohttp
from aiohttp import web

from vllama.api.backends import Backend, backend_for, scheduled_name
from vllama.api.budget import send_fitted
from vllama.api.common import check_capability, read_json_object, requested_model
from vllama.api.errors import ApiError, BadRequest, WorkerFailed, upstream_refusal
from vllama.api.keys import MODEL_KEY, TOKENS_KEY, services
from vllama.api.observe import mark_first_byte
from vllama.api.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Streamed,
)
from vllama.api.ollama.request import Endpoint, UpstreamCall, chat_call, generate_call
from vllama.api.ollama.response import OllamaStream, Timing, load_response
from vllama.api.ollama.stream import NDJSON, ndjson, ndjson_lines, sse_events
from vllama.api.ollama.wire import EmbeddingBody
from vllama.api.protocol import JsonObject
from vllama.api.relay import answer_limit, read_answer, worker_error
from vllama.api.remote import pass_through
from vllama.api.upstream import UpstreamAnswer
from vllama.catalog.registry import ModelNotFound, ModelTraits

EMBEDDINGS_PATH = "/v1/embeddings"
COMPLETION = frozenset({"completion"})
EMBEDDING = frozenset({"embedding"})


async def generate(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "generate")


async def chat(request: web.Request) -> web.StreamResponse:
    return await _inference(request, "chat")


async def _inference(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    try:
        backend = await backend_for(request, requested)
    except ModelNotFound:
        # `keep_alive: 0` (`vllama stop`) unloads whatever the scheduler runs by that name,
        # even a model the catalog no longer finds (its folder has gone while it ran).
        running = _unload_request(payload, endpoint) and scheduled_name(request, requested)
        if not running:
            raise
        services(request).scheduler.expire(running)
        return web.json_response(load_response(requested, endpoint, "unload"))
    if backend.passes_ollama:  # it resolves names as vllama does: the body goes as it came
        return await _pass_through(request, backend, Streamed.parse(payload).streaming)
    parsed = _parse(payload, endpoint)
    if parsed.loads_only and parsed.keep_alive == 0:
        # An unload needs no capability (as Ollama, which expires the runner before it checks
        # any): `vllama stop` unloads embedding and rerank models through here too.
        backend.unload(request)
        return web.json_response(load_response(requested, endpoint, "unload"))
    traits = await backend.traits(request)
    check_capability(traits, requested, COMPLETION, endpoint)  # as Ollama: before any load
    # Translated even for a load: every field is checked (a 400) as Ollama's decoder would.
    call = _translate(parsed, traits, requested)
    if parsed.loads_only:
        await backend.load(request, parsed.keep_alive)
        return web.json_response(load_response(requested, endpoint, "load"))
    payload = cast(JsonObject, call.body)
    body = json.dumps(payload).encode()
    timing = Timing()
    translator = OllamaStream(endpoint, requested, timing)
    # Always streamed from the worker, so always held to stream_idle_timeout. A budget over the
    # context its worker serves is sent again at that context (api/budget).
    async with send_fitted(
        request, backend, call.path, payload, body, parsed.keep_alive, stream=True
    ) as answer:
        timing.loaded = timing.sent = answer.sent_ns
        return await _relay_translated(request, answer.response, translator, parsed.streaming)


def _unload_request(payload: Mapping[str, object], endpoint: Endpoint) -> bool:
    """Whether the body only asks to unload the model (nothing to generate, `keep_alive: 0`)."""
    try:
        parsed = _parse(payload, endpoint)
    except BadRequest:
        return False
    return parsed.loads_only and parsed.keep_alive == 0


def _parse(payload: Mapping[str, object], endpoint: Endpoint) -> GenerateRequest | ChatRequest:
    return (GenerateRequest if endpoint == "generate" else ChatRequest).parse(payload)


def _translate(
    parsed: GenerateRequest | ChatRequest, traits: ModelTraits, requested: str
) -> UpstreamCall:
    if isinstance(parsed, GenerateRequest):
        return generate_call(parsed, traits, requested)
    return chat_call(parsed, traits, requested)


async def _relay_translated(
    request: web.Request,
    upstream: UpstreamAnswer,
    translator: OllamaStream,
    streaming: bool,
) -> web.StreamResponse:
    if upstream.status != 200:
        try:
            refusal = await read_answer(request, upstream)
        except aiohttp.ClientError as exc:
            raise worker_error(request, exc, "mid-response") from None
        raise upstream_refusal(upstream.status, refusal)
    limit = answer_limit(request)
    if not streaming:  # held whole: the whole answer is bounded
        try:
            async for chunks in sse_events(upstream, limit, whole=True):
                for chunk in chunks:
                    translator.on_chunk(chunk)
        except aiohttp.ClientError as exc:
            raise worker_error(request, exc, "mid-response") from None
        _count_usage(request, translator)
        return web.json_response(translator.whole())
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    try:
        async for chunks in sse_events(upstream, limit):
            # The lines of every event that arrived together go out in one write (one chunk,
            # one system call), as a proxy coalesces what is already waiting.
            objs = translator.on_chunks(chunks)
            if not objs:
                continue
            if not response.prepared:  # the status goes out with the first line
                await response.prepare(request)
                mark_first_byte(request)
            await response.write(ndjson_lines(objs))
    except ConnectionResetError:
        raise  # the client went away (aiohttp's own reset error is also a ClientError)
    except (aiohttp.ClientError, ApiError) as exc:
        error = exc if isinstance(exc, ApiError) else worker_error(request, exc, "mid-stream")
        if not response.prepared:
            raise error from None
        # The line and the end of the answer in one write.
        await response.write_eof(ndjson({"error": error.message}))
        return response
    if not response.prepared:  # nothing streamed (a tool call only, or no text at all)
        await response.prepare(request)
    for obj in translator.pending_tool_calls():
        await response.write(ndjson(obj))
    _count_usage(request, translator)
    # The last line and the end of the answer in one write.
    await response.write_eof(ndjson(translator.final()))
    return response


def _count_usage(request: web.Request, translator: OllamaStream) -> None:
    request[TOKENS_KEY] = translator.completion_tokens
    services(request).metrics.count_usage(
        request.get(MODEL_KEY, ""), translator.prompt_tokens, translator.completion_tokens
    )


# -- embeddings -------------------------------------------------------------------------------


async def embed(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload)
    backend = await backend_for(request, requested)
    if backend.passes_ollama:
        return await _pass_through(request, backend)
    parsed = EmbedRequest.parse(payload)
    texts = parsed.texts
    body: EmbeddingBody = {"model": backend.upstream_model, "input": texts}
    if parsed.dimensions is not None:
        body["dimensions"] = parsed.dimensions
    if parsed.truncate:
        body["truncate_prompt_tokens"] = -1  # vLLM: truncate to the model's maximum length
    await _check_embedding(request, backend, requested)
    timing = Timing()
    if texts:
        vectors, prompt_tokens = await _embed_upstream(
            request, backend, body, parsed.keep_alive, timing
        )
    else:  # Ollama loads the model and answers with no embeddings
        timing.loaded = await backend.load(request, parsed.keep_alive)
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
    backend = await backend_for(request, requested)
    if backend.passes_ollama:
        return await _pass_through(request, backend)
    parsed = EmbeddingsRequest.parse(payload)
    await _check_embedding(request, backend, requested)
    if not parsed.prompt:  # Ollama answers an empty prompt with an empty embedding (and loads)
        await backend.load(request, parsed.keep_alive)
        return web.json_response({"embedding": []})
    body: EmbeddingBody = {"model": backend.upstream_model, "input": [parsed.prompt]}
    vectors, _ = await _embed_upstream(request, backend, body, parsed.keep_alive, Timing())
    return web.json_response({"embedding": vectors[0]})


async def _check_embedding(request: web.Request, backend: Backend, requested: str) -> None:
    """400 for a model that cannot embed (a peer's own validation answers for its models)."""
    check_capability(await backend.traits(request), requested, EMBEDDING, "embeddings")


async def _pass_through(
    request: web.Request, backend: Backend, stream: bool = False
) -> web.StreamResponse:
    """An Ollama request to an upstream that speaks Ollama's API: as it came, and its answer."""
    body = await request.read()
    async with backend.send(request, request.path, body, stream=stream) as answer:
        return await pass_through(request, answer.response)


async def _embed_upstream(
    request: web.Request,
    backend: Backend,
    body: EmbeddingBody,
    keep_alive: float | None,
    timing: Timing,
) -> tuple[list[list[float]], int]:
    data = json.dumps(body).encode()
    async with backend.send(request, EMBEDDINGS_PATH, data, keep_alive) as answer:
        timing.loaded = answer.sent_ns
        raw = await _read_embeddings(request, answer.response)
    try:
        parsed = json.loads(raw)
        ordered = sorted(parsed["data"], key=lambda item: item["index"])
        usage = parsed.get("usage") or {}
        return [item["embedding"] for item in ordered], int(usage.get("prompt_tokens") or 0)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise WorkerFailed(f"the embeddings answer could not be read: {exc!r}") from None


async def _read_embeddings(request: web.Request, upstream: UpstreamAnswer) -> bytes:
    try:
        raw = await read_answer(request, upstream)
    except aiohttp.ClientError as exc:
        raise WorkerFailed(f"the model's worker failed mid-response: {exc}") from None
    if upstream.status != 200:
        raise upstream_refusal(upstream.status, raw)
    return raw


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings_legacy)
