"""One error mapping for both envelopes.

`/v1/*` speaks OpenAI's `{"error": {"message", "type", "param", "code"}}`; everything else speaks
Ollama's `{"error": "..."}`. Handlers raise `ApiError`; a middleware renders it in the right shape,
and also renders aiohttp's own HTTP errors (unknown route, wrong method, body too large).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from vllama.api.keys import CONFIG

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


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def openai_error_body(
    status: int, message: str, code: str | None, param: str | None
) -> dict[str, object]:
    error_type = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(path: str, error: ApiError) -> web.Response:
    if is_openai_path(path):
        body: dict[str, object] = openai_error_body(
            error.status, error.message, error.code, error.param
        )
    else:
        body = {"error": error.message}
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
    except ApiError as error:
        return error_response(request.path, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _http_message(exc, request)
        return error_response(request.path, ApiError(exc.status, message, headers=_allow(exc)))


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[CONFIG].server.max_request_bytes
        return f"request body too large (limit {limit} bytes)"
    if isinstance(exc, web.HTTPNotFound):
        return f"{request.method} {request.path}: no such endpoint"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"method {request.method} not allowed on {request.path}"
    return exc.reason


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
