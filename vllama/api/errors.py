"""One error mapping for every endpoint, in each API's own envelope.

Each path speaks its API's envelope (`envelope_of`): Anthropic's `{"type": "error", "error":
{"type", "message"}}` on `/v1/messages*`, OpenAI's `{"error": {"message", "type", "param",
"code"}}` on the rest of `/v1/*` and on vLLM's own routes (`/tokenize`, `/rerank`, ...), and
Ollama's `{"error": "..."}` everywhere else. Handlers raise `ApiError` (or `BadRequest`,
`WorkerFailed`, `WorkerTimeout`) or let a domain error from below propagate (`ModelNotFound`,
`LoadError`, `QueueFull`, `ShuttingDown`, `PullError`, the stores' `StoreRefused` (400),
`StoreFull` (507) and `StoreError` (500)); `http_error` is the one place that turns
either into a status and a message, and the middleware renders it, aiohttp's own HTTP errors
included (unknown route, wrong method, body too large).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog
from aiohttp import web

from vllama.api.keys import services
from vllama.catalog.hub import PullError
from vllama.catalog.names import InvalidName
from vllama.catalog.registry import ModelNotFound
from vllama.catalog.store import StoreError, StoreFull, StoreRefused
from vllama.engine.worker import LoadError
from vllama.scheduling.errors import QueueFull, ShuttingDown

log = structlog.get_logger("vllama.api")

_OPENAI_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


class BadRequest(ApiError):
    """The request is malformed or asks for something the model cannot do."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(400, message, param=param)


class WorkerFailed(ApiError):
    """The model's worker broke off (refused the connection, or failed mid-response)."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message, code="worker_error")


class WorkerTimeout(ApiError):
    """The model's worker went silent past `stream_idle_timeout` while streaming an answer (a
    gateway timeout: the worker is alive as far as vllama knows, but this request got nothing)."""

    def __init__(self, message: str) -> None:
        super().__init__(504, message, code="worker_timeout")


class AnswerTooLarge(ApiError):
    """An upstream's answer, to be held whole, passed `max_answer_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            502,
            f"the upstream's answer is larger than max_answer_bytes ({limit} bytes); "
            "it was not read further",
            code="answer_too_large",
        )


Envelope = Literal["ollama", "openai", "anthropic"]

# vLLM's routes outside /v1 that vllama relays; they answer in OpenAI's envelope.
VLLM_NATIVE_PATHS = frozenset(
    {"/tokenize", "/detokenize", "/pooling", "/score", "/rerank", "/classify", "/v2/rerank"}
    | {"/v2/embed"}
)
# Anthropic's error types by status (its API's "Errors" page); another 4xx is a bad request,
# another 5xx an `api_error`. vLLM's 503 (retry later) is Anthropic's overloaded (529).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_ERROR_TYPES = frozenset(_ANTHROPIC_TYPES.values()) | {"api_error"}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def envelope_of(path: str) -> Envelope:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path == "/v1" or path.startswith("/v1/") or path in VLLM_NATIVE_PATHS:
        return "openai"
    return "ollama"


def http_error(error: Exception, path: str) -> ApiError | None:
    """The HTTP error for `error` on `path`; None for an exception that is a bug."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, web.RequestPayloadError):  # a body that does not decompress, or is cut
        return BadRequest(f"request body could not be decoded: {error.__cause__ or error}")
    if isinstance(error, ModelNotFound):
        if envelope_of(path) != "ollama":
            message = f"The model `{error.name}` does not exist."
        else:
            message = f"model '{error.name}' not found"
        return ApiError(404, message, code="model_not_found", param="model")
    if isinstance(error, LoadError):
        # Every refusal says when to ask again: the scheduler's own figure where it has one
        # (a restart's back-off, a FATAL model's next try), else soon.
        retry = math.ceil(error.retry_after) if error.retry_after else 1
        headers = {"Retry-After": str(retry)}
        return ApiError(503, error.detail(), code="model_load_failed", headers=headers)
    if isinstance(error, QueueFull):
        return ApiError(503, str(error), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(error, ShuttingDown):
        return ApiError(503, str(error), code="shutting_down")
    if isinstance(error, PullError):
        return ApiError(error.status, str(error))
    if isinstance(error, InvalidName):
        return BadRequest(str(error), param="model")
    if isinstance(error, StoreRefused):
        return BadRequest(str(error))
    if isinstance(error, StoreFull):  # nothing was saved, nothing changed: free space, retry
        return ApiError(507, str(error), code="insufficient_storage")
    if isinstance(error, StoreError):
        return ApiError(500, str(error), code="store_error")
    return None


def upstream_error_message(status: int, body: bytes) -> str:
    """vLLM's error text from its JSON error body (either envelope), or the raw body."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body.decode("utf-8", "replace").strip() or f"worker answered HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return json.dumps(data)


def enveloped(path: str, status: int, body: bytes) -> bytes:
    """A worker's error answer, relayed: kept when already in `path`'s API's error envelope, else
    (FastAPI's `{"detail": ...}`, plain text, and on Anthropic's paths vLLM's own error types
    such as `BadRequestError` or its OpenAI envelope) rewritten into that envelope."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if envelope_of(path) == "anthropic":
        if _anthropic_typed(data):
            return body
    elif isinstance(data, dict) and ("error" in data or data.get("type") == "error"):
        return body
    message = upstream_error_message(status, body)
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, str):
        message = detail
    return json.dumps(error_body(path, status, message)).encode()


def _anthropic_typed(data: object) -> bool:
    """Anthropic's envelope with one of Anthropic's own error types."""
    if not isinstance(data, dict) or data.get("type") != "error":
        return False
    error = data.get("error")
    return isinstance(error, dict) and error.get("type") in ANTHROPIC_ERROR_TYPES


def upstream_refusal(status: int, body: bytes) -> ApiError:
    """A worker's error answer on a translated (Ollama) path: its message, a 400 for what vLLM
    refused as a bad request, a 503 for what it says to retry (vLLM's `RetryableRequestError`;
    the status is what tells a client or a proxy to try again), a 502 (as `WorkerFailed`) for its
    other failures (a 500: the engine broke, not the gateway's request)."""
    message = upstream_error_message(status, body)
    if status < 500:
        return BadRequest(message)
    if status == 503:
        return ApiError(503, message, code="worker_unavailable")
    return WorkerFailed(message)


def openai_error_body(
    status: int, message: str, code: str | None, param: str | None
) -> dict[str, object]:
    error_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_body(path: str, status: int, message: str, code: str | None = None) -> dict[str, object]:
    """An error in the envelope of `path`'s API."""
    envelope = envelope_of(path)
    if envelope == "openai":
        return openai_error_body(status, message, code, None)
    if envelope == "anthropic":
        kind = anthropic_error_type(status)
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": message}


def error_response(path: str, error: ApiError) -> web.Response:
    if envelope_of(path) == "openai":
        body = openai_error_body(error.status, error.message, error.code, error.param)
    else:
        body = error_body(path, error.status, error.message, error.code)
    return web.Response(
        status=error.status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=error.headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _http_message(exc, request)
        return error_response(request.path, ApiError(exc.status, message, headers=_allow(exc)))
    except Exception as exc:
        error = http_error(exc, request.path)
        if error is None:
            raise
        return error_response(request.path, error)


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = services(request).config.server.max_request_bytes
        return f"request body too large (limit {limit} bytes)"
    if isinstance(exc, web.HTTPNotFound):
        return f"{request.method} {request.path}: no such endpoint"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"method {request.method} not allowed on {request.path}"
    return exc.reason


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
