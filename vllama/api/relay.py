"""The relay: one request to a worker, its response back to the client byte for byte.

Streams (SSE) are forwarded chunk by chunk as they arrive, never buffered or re-encoded. When the
client goes away the upstream request is closed, so vLLM aborts the generation. When the worker
dies after the first byte went out, the stream ends with an in-band error event: the status line is
already sent, and bytes already sent are never retried.

An answer held whole (a non-streamed one relayed, translated or parsed here; an error's body) is
read to `max_answer_bytes` at most: past it the request is a 502 and the connection is closed, so
a peer that answers without end costs no more memory than that. Streams pass through.

A streamed answer may not stay silent longer than `stream_idle_timeout` (no response headers, or
no next chunk): vLLM sends a stream's headers and chunks as it goes, so a silence that long is an
engine that hung with its process and `/health` still up. The request then ends with an error
(before the first byte, a 504; after it, an in-band error event) and its connection is closed, so
vLLM aborts it. A non-streamed answer keeps no deadline: vLLM sends nothing until it is done.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import structlog
from aiohttp import web

from vllama.api.errors import (
    AnswerTooLarge,
    ApiError,
    WorkerFailed,
    WorkerTimeout,
    envelope_of,
    enveloped,
    error_body,
    openai_error_body,
)
from vllama.api.keys import ANSWERED_KEY, MODEL_KEY, REQUEST_ID_KEY, TOKENS_KEY, services
from vllama.api.observe import REQUEST_ID, mark_first_byte
from vllama.api.upstream import UpstreamAnswer
from vllama.api.usage import StreamUsage, Usage, token_counts, usage_of
from vllama.scheduling.runner import WorkerLike

log = structlog.get_logger("vllama.relay")

# Upstream requests have no total deadline (a generation may run for minutes); a worker that does
# not accept the connection promptly is broken.
_CONNECT_TIMEOUT = 10.0
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT)
_JSON_HEADERS = {"Content-Type": "application/json"}
_PASSED_HEADERS = ("Content-Type", "Cache-Control")
A = TypeVar("A", bound=UpstreamAnswer)


def new_upstream_session() -> aiohttp.ClientSession:
    # limit=0: no connection cap, so concurrent requests are never queued behind each other here.
    # keepalive_timeout under uvicorn's 5 s: a pooled connection the worker is about to close
    # would fail the next request on it (it is retried, but that costs a health probe).
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
    return aiohttp.ClientSession(
        connector=connector, timeout=UPSTREAM_TIMEOUT, auto_decompress=False
    )


@dataclass(frozen=True)
class Leased:
    """A worker's answer to one request, and when the request got the worker and went out."""

    worker: WorkerLike
    response: UpstreamAnswer
    sent_ns: int  # perf_counter_ns when the worker was leased (after any load) and the request sent


@contextlib.asynccontextmanager
async def worker_request(
    request: web.Request,
    model: str,
    path: str,
    body: bytes,
    keep_alive: float | None = None,
    method: str = "POST",
    stream: bool = False,
) -> AsyncIterator[Leased]:
    """Lease the model's worker, POST `body` to it, and yield its response (status not checked).

    The lease covers the whole block, so the request counts as in flight until the response has
    been relayed. A worker that died since it was last seen fails the connection before anything
    was sent: then the worker is settled (restarted by the next lease) and the request retried
    once, which turns "the first request after a crash fails" into "it restarts the model".
    Closing the block before the response is complete closes the upstream connection, which
    makes vLLM abort the generation (a client that went away cancels its handler).
    Scheduling refusals (`LoadError`, `QueueFull`, `ShuttingDown`) propagate as they are.
    With `stream`, the worker may stay silent `stream_idle_timeout` at most, for the response's
    headers (else `WorkerTimeout`, and no retry: the worker took the request) and between its
    chunks (then the read raises `aiohttp.SocketTimeoutError`: see `worker_error`).
    """
    scheduler = services(request).scheduler
    for attempt in range(2):
        async with scheduler.lease(model, keep_alive) as worker:
            sent = time.perf_counter_ns()
            try:
                upstream = await send_to_worker(
                    request, method, worker.base_url + path, body, stream
                )
            except aiohttp.ClientResponseError as exc:  # it took the request: no retry
                raise WorkerFailed(
                    f"the model's worker answered with something that is not HTTP: {exc}"
                ) from None
            except aiohttp.ClientConnectionError as exc:
                if attempt == 1:
                    raise WorkerFailed(f"the model's worker did not answer: {exc}") from None
                log.warning(
                    "worker connection failed before a response; retrying",
                    model=model,
                    error=str(exc),
                )
                unreachable = worker
            else:
                with held(request, upstream):
                    yield Leased(worker, upstream, sent)
                return
        await unreachable.confirm_health()


async def send_to_worker(
    request: web.Request, method: str, url: str, body: bytes, stream: bool
) -> UpstreamAnswer:
    """`send_upstream` for a worker on this host, through the lean client (`api.upstream`)."""
    svc = services(request)
    idle = svc.config.server.stream_idle_timeout if stream else None
    # vLLM takes X-Request-Id as its own request id: one id in both logs.
    sent = {**_JSON_HEADERS, REQUEST_ID: request.get(REQUEST_ID_KEY, "")}
    pending = svc.workers.request(method, url, body, sent, _CONNECT_TIMEOUT, idle)
    return await _unless_cut(request, pending)


async def _unless_cut(request: web.Request, pending: Awaitable[A]) -> A:
    """The answer's headers, unless the drain cuts the wait first (503 `shutting_down`); a
    silence past the read timeout is a `WorkerTimeout` (see `worker_error`)."""
    in_flight = services(request).in_flight
    try:
        upstream = await in_flight.unless_cut(pending)
    except aiohttp.SocketTimeoutError as exc:  # a ClientConnectionError: the request went out
        raise worker_error(request, exc, "before answering") from None
    if upstream is None:
        raise ApiError(503, in_flight.cut_reason or "", code="shutting_down")
    return upstream


async def send_upstream(
    request: web.Request,
    method: str,
    url: str,
    body: bytes,
    stream: bool,
    connect_timeout: float = _CONNECT_TIMEOUT,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """One request to a worker or a peer; its response, status not checked. Unless the drain
    cuts it first (503 `shutting_down`). With `stream`, the other side may stay silent
    `stream_idle_timeout` at most, for the response's headers (else `WorkerTimeout`) and between
    its chunks (then the read raises `aiohttp.SocketTimeoutError`: see `worker_error`). A
    connection that fails raises `aiohttp.ClientConnectionError`, for the caller to judge."""
    # aiohttp's sock_read restarts on every byte received, and covers the wait for headers.
    idle = services(request).config.server.stream_idle_timeout if stream else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=idle)
    # vLLM takes X-Request-Id as its own request id: one id in both logs.
    sent = {**_JSON_HEADERS, REQUEST_ID: request.get(REQUEST_ID_KEY, ""), **(headers or {})}
    session = services(request).upstream
    return await _unless_cut(
        request, session.request(method, url, data=body, headers=sent, timeout=timeout)
    )


@contextlib.contextmanager
def held(request: web.Request, upstream: UpstreamAnswer) -> Iterator[None]:
    """While the block runs, `upstream` is one of the answers the drain's cut ends; after it,
    the connection goes back to the pool when the answer was read to its end, else it is closed
    (which makes vLLM abort the generation)."""
    try:
        with services(request).in_flight.track(upstream):
            yield
    finally:
        if upstream.content.is_eof():
            upstream.release()
        else:
            upstream.close()


async def relay_response(
    request: web.Request,
    upstream: UpstreamAnswer,
    watch: Callable[[bytes], bool] | None = None,
    counts_tokens: bool = True,
) -> web.StreamResponse:
    """The worker's response to the client, byte for byte; SSE chunk by chunk. `watch` sees the
    bytes as they pass until it returns True (it must not keep them). The answer's usage is
    counted unless `counts_tokens` is False (a stored response read again generated nothing)."""
    headers = {k: upstream.headers[k] for k in _PASSED_HEADERS if k in upstream.headers}
    if not upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
        try:
            payload = await read_answer(request, upstream)
        except aiohttp.ClientError as exc:
            raise worker_error(request, exc, "mid-response") from None
        if upstream.status == 200 and counts_tokens:
            count_usage(request, usage_of(payload))
            if watch is not None:
                watch(payload)
        elif upstream.status >= 400:
            payload = enveloped(request.path, upstream.status, payload)
            headers["Content-Type"] = "application/json"
        return web.Response(status=upstream.status, body=payload, headers=headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    mark_first_byte(request)  # the headers are out; tokens follow as vLLM makes them
    content = upstream.content
    usage = StreamUsage()  # whichever API's events carry it (OpenAI, Anthropic, Responses)
    answered = False
    while True:
        try:
            # Everything that has arrived, in one piece: a worker ahead of the client costs one
            # write for many events.
            chunk = await content.readany()
        except aiohttp.ClientError as exc:  # the worker went away or went silent mid-stream
            error = worker_error(request, exc, "mid-stream")
            log.warning("upstream failed mid-stream", url=str(upstream.url), error=error.message)
            await response.write_eof(sse_error_event(request.path, error))
            break
        if not chunk:
            break
        # A client that went away makes this raise, and the lease's block closes the upstream.
        # A last piece that came with the stream's end goes out with it, in one write.
        last = content.at_eof()
        await (response.write_eof(chunk) if last else response.write(chunk))
        if watch is not None and watch(chunk):
            watch = None
        usage.feed(chunk)
        if not answered and any(end in chunk for end in _TERMINAL_EVENTS):
            answered = request[ANSWERED_KEY] = True
            if counts_tokens:  # counted now: the client may leave before the stream's end
                count_usage(request, usage.usage)
        if last:
            break
    if counts_tokens and not answered:
        count_usage(request, usage.usage)
    try:
        await response.write_eof()
    except ConnectionResetError:
        # Every byte of the answer went out; the client hung up before the stream's closing
        # chunk, as Codex does once it reads `response.completed`: a whole answer, not a 499.
        pass
    return response


# The last event of a whole answer, per API: OpenAI's `[DONE]`, Anthropic's `message_stop`, the
# Responses API's `response.completed` (vLLM names each event on its `event:` line).
_TERMINAL_EVENTS = (b"data: [DONE]", b"event: message_stop", b"event: response.completed")


def answer_limit(request: web.Request) -> int:
    return services(request).config.server.max_answer_bytes


async def read_answer(request: web.Request, upstream: UpstreamAnswer) -> bytes:
    """The whole of `upstream`'s body, `AnswerTooLarge` as soon as it passes `max_answer_bytes`
    (a declared length over it is refused unread). As `read()`, it can be called again and gives
    the same bytes (it fills aiohttp's own cache of the body). A broken read raises
    `aiohttp.ClientError`, for the caller to judge."""
    if upstream._body is not None:  # read before (aiohttp's cache, which `read()` fills too)
        return upstream._body
    limit = answer_limit(request)
    if (upstream.content_length or 0) > limit:
        raise AnswerTooLarge(limit)
    pieces: list[bytes] = []
    size = 0
    async for piece in upstream.content.iter_any():
        size += len(piece)
        if size > limit:
            raise AnswerTooLarge(limit)  # the block's end closes the connection, unread
        pieces.append(piece)
    upstream._body = b"".join(pieces)
    return upstream._body


def count_usage(request: web.Request, usage: Usage | None) -> None:
    """An answer's usage (any API's names: `vllama.api.usage`) in the metrics and the request's
    record (the status page's tokens)."""
    if usage is None:
        return
    prompt, generated = token_counts(usage)
    if generated is not None:
        request[TOKENS_KEY] = generated
    services(request).metrics.count_usage(request.get(MODEL_KEY, ""), prompt, generated or 0)


def worker_error(request: web.Request, exc: aiohttp.ClientError, when: str) -> ApiError:
    """A broken read of a worker's answer, as the client sees it: a silence past
    `stream_idle_timeout` is a `WorkerTimeout` (504), an answer cut because vllama's drain ran
    out a 503 `shutting_down`, anything else a `WorkerFailed` (502)."""
    cut = services(request).in_flight.cut_reason
    if cut is not None:
        return ApiError(503, cut, code="shutting_down")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        idle = services(request).config.server.stream_idle_timeout
        return WorkerTimeout(
            f"the model's worker sent nothing for {idle:g}s {when} (stream_idle_timeout); "
            "the request was aborted"
        )
    return WorkerFailed(f"the model's worker failed {when}: {exc}")


def sse_error_event(path: str, error: ApiError) -> bytes:
    """An in-band error event in the stream format of `path`'s API."""
    if envelope_of(path) == "anthropic":
        body = error_body(path, error.status, error.message)
        return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
    body = openai_error_body(error.status, error.message, error.code, None)
    return b"data: " + json.dumps(body).encode() + b"\n\n"
