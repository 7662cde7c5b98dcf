"""The relay: one request to a worker, its response back to the client byte for byte.

Streams (SSE) are forwarded chunk by chunk as they arrive, never buffered or re-encoded. When the
client goes away the upstream request is closed, so vLLM aborts the generation. When the worker
dies after the first byte went out, the stream ends with an in-band error event: the status line is
already sent, and bytes already sent are never retried.
"""

from __future__ import annotations

import json

import aiohttp
import structlog
from aiohttp import web

from vllama.api.errors import ApiError, openai_error_body

log = structlog.get_logger("vllama.relay")

# Upstream requests have no total deadline (a generation may run for minutes); a worker that does
# not accept the connection promptly is broken.
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
_JSON_HEADERS = {"Content-Type": "application/json"}
_PASSED_HEADERS = ("Content-Type", "Cache-Control")


class WorkerUnreachable(Exception):
    """The worker's connection failed before any response came back."""


def new_upstream_session() -> aiohttp.ClientSession:
    # limit=0: no connection cap, so concurrent requests are never queued behind each other here.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector, timeout=UPSTREAM_TIMEOUT, auto_decompress=False
    )


async def relay(
    request: web.Request, session: aiohttp.ClientSession, url: str, body: bytes
) -> web.StreamResponse:
    try:
        upstream = await session.post(url, data=body, headers=_JSON_HEADERS)
    except aiohttp.ClientConnectionError as exc:
        # Refused, or a pooled connection found dead before any response: the client has seen
        # nothing yet, and a dead worker finished nothing, so the caller may retry.
        raise WorkerUnreachable(str(exc)) from None
    except aiohttp.ClientError as exc:
        raise ApiError(
            502, f"the model's worker did not answer: {exc}", code="worker_error"
        ) from None
    try:
        headers = {k: upstream.headers[k] for k in _PASSED_HEADERS if k in upstream.headers}
        if not upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            try:
                payload = await upstream.read()
            except aiohttp.ClientError as exc:
                raise ApiError(
                    502, f"the model's worker failed mid-response: {exc}", code="worker_error"
                ) from None
            return web.Response(status=upstream.status, body=payload, headers=headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except aiohttp.ClientError as exc:  # the worker went away mid-stream
                log.warning("upstream failed mid-stream", url=url, error=str(exc))
                await response.write(
                    sse_error_event(f"the model's worker failed mid-stream: {exc}")
                )
                break
            if not chunk:
                break
            # A client that went away makes this raise, and `finally` closes the upstream request.
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        # After a complete response this returns the connection to the pool; after a client
        # disconnect (cancellation) or an error it closes it, which makes vLLM abort the request.
        if upstream.content.is_eof():
            upstream.release()
        else:
            upstream.close()


def sse_error_event(message: str) -> bytes:
    body = openai_error_body(502, message, "worker_error", None)
    return b"data: " + json.dumps(body).encode() + b"\n\n"
