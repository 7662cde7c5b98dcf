"""Everything relayed to a worker as it came: the OpenAI API (`/v1/*`), and vLLM's other APIs that
clients call by `model` (Anthropic Messages, OpenAI Responses, tokenize, pooling and scoring).

Each route goes through the same lease, queue, metrics and request ids; the request body goes
upstream as received (rewritten only to name the worker's served model, or to apply a derived
model's defaults on chat and completions) and the answer comes back byte for byte. A model that
cannot serve the route is refused before any load.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Required, TypedDict, cast

from aiohttp import web

from vllama.api import remote
from vllama.api.backends import backend_for
from vllama.api.budget import BUDGET_FIELDS, fit, send_fitted
from vllama.api.common import in_listing_order, model_context, read_json_object
from vllama.api.errors import BadRequest
from vllama.api.keys import services
from vllama.api.ollama.options import map_options
from vllama.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Json,
    JsonObject,
    MessagesRequest,
    Relayed,
    ResponsesRequest,
    VllmRequest,
)
from vllama.api.relay import relay_response, worker_request
from vllama.catalog.derived import DerivedModel
from vllama.catalog.registry import Resolved

_CREATED = int(time.time())
GENERATES = frozenset({"completion"})
EMBEDS = frozenset({"embedding"})
SCORES = frozenset({"embedding", "rerank"})  # cross-encoders, or cosine over embeddings
POOLS = frozenset({"embedding", "rerank"})


@dataclass(frozen=True)
class Route:
    path: str
    # The model must have one of these (capabilities its files decide); None: any model.
    needs: frozenset[str] | None
    action: str  # for "x does not support <action>"
    body: type[Relayed]  # what vllama reads of the body
    derived_defaults: bool = False  # a derived model's system prompt and options apply


ROUTES = (
    Route("/v1/chat/completions", GENERATES, "chat", ChatCompletionRequest, derived_defaults=True),
    Route("/v1/completions", GENERATES, "completion", CompletionRequest, derived_defaults=True),
    Route("/v1/embeddings", EMBEDS, "embeddings", EmbeddingRequest),
    Route("/v1/messages", GENERATES, "messages", MessagesRequest),
    Route("/v1/messages/count_tokens", GENERATES, "messages", MessagesRequest),
    Route("/v1/responses", GENERATES, "responses", ResponsesRequest),
    Route("/tokenize", None, "tokenize", VllmRequest),
    Route("/detokenize", None, "detokenize", VllmRequest),
    Route("/pooling", POOLS, "pooling", VllmRequest),
    Route("/classify", POOLS, "classify", VllmRequest),
    Route("/score", SCORES, "score", VllmRequest),
    Route("/v1/score", SCORES, "score", VllmRequest),
    Route("/rerank", SCORES, "rerank", VllmRequest),
    Route("/v1/rerank", SCORES, "rerank", VllmRequest),
    Route("/v2/rerank", SCORES, "rerank", VllmRequest),
    Route("/v2/embed", EMBEDS, "embeddings", EmbeddingRequest),
)


def apply_derived(payload: JsonObject, derived: DerivedModel) -> None:
    """A derived model's system prompt and parameters, under what the request sets itself."""
    try:
        defaults = map_options(derived.parameters)
    except BadRequest:  # validated at /api/create; a hand-edited store must not break requests
        defaults = {}
    # Sampling's values are numbers, strings and lists of strings: JSON all.
    for key, value in cast(dict[str, Json], defaults).items():
        payload.setdefault(key, value)
    messages = payload.get("messages")
    if derived.system and isinstance(messages, list):
        if not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
            payload["messages"] = [{"role": "system", "content": derived.system}, *messages]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def relay_handler(route: Route) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body, payload = await read_json_object(request)
        parsed = route.body.parse(payload)
        requested = parsed.model
        backend = await backend_for(request, requested)
        if route.needs is not None:
            await backend.check_files(request, route.needs, route.action)
        upstream = backend.upstream_model
        derived = backend.derived if route.derived_defaults else None
        rewrite = payload["model"] != upstream or derived is not None
        if rewrite:
            payload["model"] = upstream
            if derived is not None:
                apply_derived(payload, derived)
        fields = BUDGET_FIELDS.get(route.path)
        if fields is not None:  # a default where it sets none, capped at the context (budget)
            default, context = backend.output_default(request), backend.served_context(request)
            rewrite = fit(payload, fields, default, context) or rewrite
        if rewrite:
            body = json.dumps(payload).encode()
        served = backend.scheduled_name
        watch = (
            _RESPONSE_IDS.watcher(served)
            if route.path == "/v1/responses" and served is not None
            else None
        )
        # A streamed answer is held to stream_idle_timeout; a whole one has no deadline.
        async with send_fitted(
            request, backend, route.path, payload, body, stream=parsed.stream
        ) as answer:
            return await relay_response(request, answer.response, watch)

    return handler


# -- the Responses API's stored responses, by id ----------------------------------------------

_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_-]{1,128})"')


class ResponseIds:
    """Which model made a response (`resp_...`), so GET and cancel by id reach its worker.

    Bounded: the oldest ids are forgotten first. vLLM keeps responses only when its worker runs
    with `VLLM_ENABLE_RESPONSES_API_STORE=1`; otherwise the worker itself answers 404.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._models: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def watcher(self, model: str) -> Callable[[bytes], bool]:
        """Looks for the id in the answer's bytes; returns True once found (then not called)."""

        def watch(chunk: bytes) -> bool:
            match = _RESPONSE_ID.search(chunk)
            if match is None:
                return False
            self._models[match.group(1).decode()] = model
            while len(self._models) > self._limit:
                self._models.popitem(last=False)
            return True

        return watch

    def model_of(self, response_id: str) -> str | None:
        return self._models.get(response_id)


_RESPONSE_IDS = ResponseIds()


def _by_response_id(suffix: str, method: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["response_id"]
        model = _RESPONSE_IDS.model_of(response_id)
        if model is None:
            raise web.HTTPNotFound()
        path = f"/v1/responses/{response_id}{suffix}"
        async with worker_request(request, model, path, b"", method=method) as leased:
            return await relay_response(request, leased.response, counts_tokens=False)

    return handler


# -- model listing ----------------------------------------------------------------------------


class ModelCard(TypedDict, total=False):
    id: Required[str]
    object: Required[str]
    created: Required[int]
    owned_by: Required[str]
    max_model_len: int  # the context, as vLLM's own /v1/models gives it (a local model's)


def _model_card(name: str, owner: str = "vllama", context: int | None = None) -> ModelCard:
    card: ModelCard = {"id": name, "object": "model", "created": _CREATED, "owned_by": owner}
    if context is not None:
        card["max_model_len"] = context
    return card


async def list_models(request: web.Request) -> web.Response:
    """Every servable model once: configured ones by their configured name, the rest (found on
    disk, derived) by their Ollama name."""
    available = await services(request).registry.available()

    def listed_name(name: str, resolved: Resolved) -> str:
        configured = resolved.source == "config" and not resolved.derived
        return resolved.upstream_model if configured else name

    listed = await in_listing_order(request, ((listed_name(n, r), r) for n, r in available.items()))
    cards = [_model_card(n, context=await model_context(request, r)) for n, r, _ in listed]
    cards += [_model_card(name, owner) for name, owner in remote.model_cards(request)]
    return web.json_response({"object": "list", "data": cards})


async def get_model(request: web.Request) -> web.Response:
    requested = request.match_info["model"]
    backend = await backend_for(request, requested)
    context = await backend.context_length(request)
    return web.json_response(_model_card(requested, backend.owner, context))


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_post(route.path, relay_handler(route))
    app.router.add_get("/v1/responses/{response_id}", _by_response_id("", "GET"))
    app.router.add_post("/v1/responses/{response_id}/cancel", _by_response_id("/cancel", "POST"))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
