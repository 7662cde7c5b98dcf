"""Ollama's wire formats: NDJSON out (answers and progress), vLLM's SSE in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from vllama.api.errors import http_error, upstream_refusal

NDJSON = "application/x-ndjson"


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def sse_events(upstream: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE stream, until `[DONE]`.

    vLLM reports a failure after the stream began as an in-band event, `data: {"error": {...,
    "code": 500}}`: it raises as `upstream_refusal` of that code, so it reaches the client as the
    same error (400, 502, 503) a refusal before the stream would have been. A broken or silent
    connection raises `aiohttp.ClientError`.
    """
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
                    raise upstream_refusal(_error_status(obj["error"]), data)
                yield obj


def _error_status(error: object) -> int:
    """The HTTP status an in-band error event carries (vLLM's `code`), 500 when it has none."""
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return 500


async def respond_progress(
    request: web.Request, streaming: bool, updates: AsyncIterator[dict[str, Any]]
) -> web.StreamResponse:
    """Ollama's progress protocol: NDJSON updates, or just the last one with `stream: false`.

    An error before the first update is a proper HTTP error; after it, a last `{"error": ...}`
    line, as Ollama does.
    """
    if not streaming:
        last: dict[str, Any] = {}
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
