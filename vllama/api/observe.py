"""Per-request observability: a request id on every log line and response, metrics, access log."""

from __future__ import annotations

import asyncio
import random
import re
import time

import structlog
from aiohttp import web

from vllama.api.errors import Handler
from vllama.api.keys import (
    ANSWERED_KEY,
    FIRST_BYTE_KEY,
    MODEL_KEY,
    REQUEST_ID_KEY,
    STARTED_KEY,
    TOKENS_KEY,
    services,
)
from vllama.ops.metrics import CONTENT_TYPE

log = structlog.get_logger("vllama.access")

REQUEST_ID = "X-Request-Id"
CLIENT_CLOSED = 499  # nginx's and Ollama's status for "client closed the request"
# A client's own id is kept (so its logs and ours join up) if it is short and plain.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


# A random (version 4) UUID's bits. Not uuid.uuid4(): its os.urandom is a system call per
# request, and an id needs to be unique, not unguessable.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random UUID, as 32 hex digits (what `uuid.uuid4().hex` gives)."""
    return f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID, "")
    request_id = given if _CLIENT_ID.match(given) else new_request_id()
    request[REQUEST_ID_KEY] = request_id
    request[STARTED_KEY] = time.perf_counter()
    # Each request runs in its own task, so this binding is the request's alone.
    structlog.contextvars.bind_contextvars(request_id=request_id)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = _left(request)  # the client went away; not a server error
        raise
    except ConnectionResetError:
        # The client went away while its answer was being written: a 499 in the access log,
        # not a 500 with a traceback. Nothing more of this response will reach anyone.
        status = _left(request)
        return web.Response(status=CLIENT_CLOSED)
    finally:
        _record(request, status)


def _left(request: web.Request) -> int:
    """The status of a request whose client went away: 200 if its whole answer had gone out (a
    client such as Codex leaves once it reads `response.completed`, before the stream's end),
    else 499."""
    return 200 if request.get(ANSWERED_KEY) else CLIENT_CLOSED


def _record(request: web.Request, status: int) -> None:
    seconds = time.perf_counter() - request[STARTED_KEY]
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    model = request.get(MODEL_KEY, "")
    first = request.get(FIRST_BYTE_KEY)
    ttft = first - request[STARTED_KEY] if first is not None else None
    services(request).metrics.count_request(model, endpoint, str(status), seconds, ttft)
    if model:  # a model's request, for the status page (not its own polls and streams)
        services(request).live.record(
            {
                "time": time.time(),
                "model": model,
                "method": request.method,
                "endpoint": endpoint,
                "status": status,
                "seconds": round(seconds, 4),
                "ttft": round(ttft, 4) if ttft is not None else None,
                "tokens": request.get(TOKENS_KEY),
            }
        )
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=status,
        model=model or None,
        seconds=round(seconds, 4),
    )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: streamed responses get the header too (set before their first byte)."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers[REQUEST_ID] = request_id


def mark_first_byte(request: web.Request) -> None:
    if FIRST_BYTE_KEY not in request:
        request[FIRST_BYTE_KEY] = time.perf_counter()


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = services(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
