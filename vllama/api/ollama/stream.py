"""Ollama's wire formats: NDJSON out (answers and progress), vLLM's SSE in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

import orjson
from aiohttp import web

from vllama.api.errors import AnswerTooLarge, WorkerFailed, http_error, upstream_refusal
from vllama.api.ollama.wire import Chunk
from vllama.api.upstream import UpstreamAnswer

# What goes out as a line: an Ollama object (a TypedDict), a progress update, an error.
Line = Mapping[str, object]

NDJSON = "application/x-ndjson"


# orjson for every line in and out of a stream: it is what a translated stream spends most of its
# CPU on (ai/DECISIONS.md). Python's json stays the answer for what orjson refuses: an event with
# NaN or Infinity (Python's json takes them, and vLLM writes with it), an integer past 64 bits.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_LINE = orjson.OPT_APPEND_NEWLINE


def ndjson(obj: Line) -> bytes:
    try:
        return orjson.dumps(obj, option=_LINE)
    except TypeError:  # an integer past 64 bits, a key that is not a string
        return _COMPACT.encode(obj).encode() + b"\n"


def ndjson_lines(objs: Sequence[Line]) -> bytes:
    """Several NDJSON lines as one piece, to go out in one write."""
    return b"".join([ndjson(obj) for obj in objs])


async def sse_events(
    upstream: UpstreamAnswer, limit: int, whole: bool = False
) -> AsyncIterator[list[Chunk]]:
    """The JSON objects of an SSE stream, until `[DONE]`, as they arrive: each item holds the
    events that one read of the stream completed (all at once when the worker is ahead), so the
    caller can answer them in one write.

    vLLM reports a failure after the stream began as an in-band event, `data: {"error": {...,
    "code": 500}}`: it raises as `upstream_refusal` of that code, so it reaches the client as the
    same error (400, 502, 503) a refusal before the stream would have been. The events before it
    come first. A broken or silent connection raises `aiohttp.ClientError`.

    An event not ended within `limit` bytes raises `AnswerTooLarge`, and so does a stream past
    `limit` in all when the caller holds it `whole` (to answer it in one piece).
    """
    buffer = b""
    size = 0
    while True:
        chunk = await upstream.content.readany()
        if not chunk:
            return
        size += len(chunk)
        *events, buffer = (buffer + chunk).split(b"\n\n")
        if len(buffer) > limit or (whole and size > limit):
            raise AnswerTooLarge(limit)
        batch: list[Chunk] = []
        try:
            done = _decode(events, batch)
        except Exception:
            if batch:  # what came before the failure goes out first
                yield batch
            raise
        if batch:
            yield batch
        if done:
            return


def _decode(events: list[bytes], into: list[Chunk]) -> bool:
    """The events' JSON objects, appended to `into`; True at `[DONE]` (the rest is ignored)."""
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return True
            try:
                obj = _loads(data)
            except (ValueError, RecursionError) as exc:  # not vLLM: a peer that is broken
                raise WorkerFailed(f"the upstream sent an event that is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise WorkerFailed("the upstream sent an event that is not a JSON object")
            if "error" in obj and "choices" not in obj:
                raise upstream_refusal(_error_status(obj["error"]), data)
            into.append(cast(Chunk, obj))
    return False


def _loads(data: bytes) -> Any:
    """`json.loads(data)`, at orjson's cost for what vLLM sends; anything orjson refuses goes to
    json.loads itself, for its answer or its error. (orjson reads an integer past 64 bits as a
    float; vLLM's events carry none: ids are strings, counts and timestamps small.)"""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _error_status(error: object) -> int:
    """The HTTP status an in-band error event carries (vLLM's `code`), 500 when it has none."""
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return 500


async def respond_progress(
    request: web.Request, streaming: bool, updates: AsyncIterator[Line]
) -> web.StreamResponse:
    """Ollama's progress protocol: NDJSON updates, or just the last one with `stream: false`.

    An error before the first update is a proper HTTP error; after it, a last `{"error": ...}`
    line, as Ollama does.
    """
    if not streaming:
        last: Line = {}
        async for update in updates:
            last = update
        return web.json_response(last)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    first = True
    try:
        async for update in updates:
            if first:
                await response.prepare(request)
                first = False
            await response.write(ndjson(update))
    except Exception as exc:
        error = http_error(exc, request.path)
        if first or error is None:
            raise
        await response.write(ndjson({"error": error.message}))
    await response.write_eof()
    return response
