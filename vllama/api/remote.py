"""Requests for a peer's models (`remote/peers.py`): sent to the peer, answered as a local
worker's are.

The OpenAI paths relay the peer's answer as a worker's (`relay_response`). The Ollama paths pass
through unchanged to a peer that speaks Ollama's API (another vllama, an Ollama), and are
translated here, as for a local worker, when the peer speaks only OpenAI's. A peer known to be
down is a 503 at once (Retry-After: until its next check); one that does not take the connection
is a 502 and is checked again at once, and so is one whose answer is not HTTP. An answer is held
whole only to `max_answer_bytes` (`relay.read_answer`): past it, a 502. No lease, no queue: the
peer schedules its own models.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from vllama.api.errors import ApiError
from vllama.api.keys import services
from vllama.api.observe import mark_first_byte
from vllama.api.ollama.response import Details, ModelEntry
from vllama.api.relay import count_usage, held, read_answer, send_upstream, worker_error
from vllama.api.upstream import UpstreamAnswer
from vllama.catalog.names import normalize_name, strip_latest
from vllama.remote.peers import Peer

log = structlog.get_logger("vllama.remote")

# A peer on the network, not a local process: a connection it does not take within this is down.
PEER_CONNECT_TIMEOUT = 5.0
_PASSED_HEADERS = ("Content-Type", "Cache-Control")


@contextlib.asynccontextmanager
async def peer_request(
    request: web.Request,
    peer: Peer,
    path: str,
    body: bytes,
    stream: bool = False,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST `body` to the peer's `path` and yield its response (status not checked)."""
    if not peer.up:
        raise ApiError(
            503,
            f"peer {peer.name!r} ({peer.url}) is down: {peer.error}",
            code="peer_unavailable",
            headers={"Retry-After": str(max(1, round(services(request).peers.interval)))},
        )
    try:
        upstream = await send_upstream(
            request, "POST", peer.url + path, body, stream, PEER_CONNECT_TIMEOUT, peer.headers
        )
    except aiohttp.ClientConnectionError as exc:
        services(request).peers.recheck(peer)
        raise ApiError(
            502, f"peer {peer.name!r} ({peer.url}) did not answer: {exc}", code="peer_unreachable"
        ) from None
    except aiohttp.ClientError as exc:  # an answer whose head is not HTTP's
        services(request).peers.recheck(peer)
        raise ApiError(
            502,
            f"peer {peer.name!r} ({peer.url}) answered with something that is not HTTP: {exc}",
            code="peer_bad_answer",
        ) from None
    with held(request, upstream):
        yield upstream


async def pass_through(request: web.Request, upstream: UpstreamAnswer) -> web.StreamResponse:
    """An Ollama-speaking peer's answer, as it came: NDJSON line by line as it arrives, errors
    in Ollama's own format. A peer failing mid-stream ends the stream with an error line, as
    Ollama's server does."""
    headers = {k: upstream.headers[k] for k in _PASSED_HEADERS if k in upstream.headers}
    if upstream.headers.get("Content-Type", "").startswith("application/json"):  # one object
        try:
            payload = await read_answer(request, upstream)
        except aiohttp.ClientError as exc:
            raise worker_error(request, exc, "mid-response") from None
        if upstream.status == 200:
            _count_ollama_usage(request, payload)
        return web.Response(status=upstream.status, body=payload, headers=headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    mark_first_byte(request)
    last = b""
    while True:
        try:
            chunk = await upstream.content.readany()
        except aiohttp.ClientError as exc:
            error = worker_error(request, exc, "mid-stream")
            await response.write(json.dumps({"error": error.message}).encode() + b"\n")
            break
        if not chunk:
            break
        await response.write(chunk)
        last = (last + chunk)[-4096:]  # the last line carries the token counts
    if upstream.status == 200:
        _count_ollama_usage(request, last)
    await response.write_eof()
    return response


def _count_ollama_usage(request: web.Request, tail: bytes) -> None:
    line = tail.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        final = json.loads(line)
    except ValueError:
        return
    if not isinstance(final, dict) or final.get("done") is not True:
        return
    usage = {
        "prompt_tokens": final.get("prompt_eval_count"),
        "completion_tokens": final.get("eval_count"),
    }
    count_usage(request, usage)  # Ollama's counts, under OpenAI's names


# -- listing ----------------------------------------------------------------------------------


def tag_entries(request: web.Request, details: Details, modified_at: str) -> list[ModelEntry]:
    """`/api/tags` entries for the peers' models, marked as Ollama marks remote models."""
    return [
        {
            "name": normalize_name(model),
            "model": normalize_name(model),
            "remote_model": model,
            "remote_host": peer.url,
            "modified_at": modified_at,
            "size": 0,
            "digest": "",
            "details": details,
        }
        for model, peer in services(request).peers.served()
    ]


def ps_entries(request: web.Request, expires_at: str) -> list[ModelEntry]:
    """`/api/ps` entries for what the peers that are up have loaded (sizes are theirs, not
    this host's: 0 here)."""
    entries: list[ModelEntry] = []
    served = {strip_latest(model): peer for model, peer in services(request).peers.served()}
    for view in services(request).peers.views():
        for model in view.loaded:
            peer = served.get(strip_latest(model))
            if not view.up or peer is None or peer.name != view.name:
                continue
            entries.append(
                {
                    "name": normalize_name(model),
                    "model": normalize_name(model),
                    "remote_model": model,
                    "remote_host": view.url,
                    "size": 0,
                    "size_vram": 0,
                    "expires_at": expires_at,
                }
            )
    return entries


def model_cards(request: web.Request) -> list[tuple[str, str]]:
    """(name, owner) for `/v1/models`: each peer's models, owned by the peer."""
    return [(model, owner(peer)) for model, peer in services(request).peers.served()]


def owner(peer: Peer) -> str:
    """A peer's models' `owned_by` on `/v1/models`."""
    return f"peer:{peer.name}"


async def show(
    request: web.Request, peer: Peer, requested: str, details: Details
) -> web.StreamResponse:
    """`/api/show` for a peer's model: the peer's own answer when it speaks Ollama, else what
    an OpenAI-compatible server says of a model (its name)."""
    if peer.kind == "ollama":
        body = json.dumps({"model": peer.name_for(requested)}).encode()
        async with peer_request(request, peer, "/api/show", body) as answer:
            return await pass_through(request, answer)
    return web.json_response(
        {
            "license": "",
            "modelfile": f"FROM {peer.name_for(requested)}\n",
            "parameters": "",
            "template": "",
            "details": details,
            "model_info": {},
            "capabilities": ["completion"],
            "remote_model": peer.name_for(requested),
            "remote_host": peer.url,
        }
    )
