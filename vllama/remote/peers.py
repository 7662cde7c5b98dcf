"""Peers: other servers whose models this daemon serves by relaying to them (`[peers.<name>]`).

Each peer is checked in the background every `health_interval`: `GET /api/tags` first (another
vllama, or an Ollama: the peer speaks Ollama's API, so Ollama requests pass through unchanged),
else `GET /v1/models` (a vLLM server or any OpenAI-compatible one: Ollama requests are translated
here, as for a local worker). The check also reads the peer's models, unless the config lists
them, and, for an Ollama-speaking peer, which of them it has loaded (`/api/ps`).

Every read of a check is bounded (`LISTING_LIMIT`), and whatever a check meets (no answer, an
answer too large or nested too deep to parse, a bug) makes the peer down with the reason, logged
when it goes down, and the checks go on. A peer that fails its check is down: requests for its
models get a 503 at once, with Retry-After until the next check. Local models always win a name: a
peer's model with a local name is not served (the config refuses such a name when it is listed; one
the peer reports is logged once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import structlog

from vllama.catalog.names import strip_latest  # names match as Ollama's: `tiny` is `tiny:latest`
from vllama.config.settings import PeerSpec

log = structlog.get_logger("vllama.peers")

PeerKind = Literal["ollama", "openai"]
CHECK_TIMEOUT = 5.0  # a peer that takes longer to list its models is down for our clients
# A model list larger than this is no real one (~40,000 entries): the peer fails its check.
LISTING_LIMIT = 8 * 1024 * 1024


class BadListing(Exception):
    """A peer's answer to a check that is not a list of models (its path and why)."""


@dataclass(frozen=True)
class PeerView:
    """A peer as the API and metrics show it."""

    name: str
    url: str
    up: bool
    kind: PeerKind | None
    models: tuple[str, ...]  # as the peer names them
    loaded: tuple[str, ...]  # what it has in memory (an OpenAI server: everything it lists)
    error: str | None
    checked_at: float | None  # time.time() of the last check


class Peer:
    def __init__(self, name: str, spec: PeerSpec) -> None:
        self.name = name
        self.spec = spec
        self.url = spec.url
        self.kind: PeerKind | None = None
        self.up = False
        self.models: tuple[str, ...] = spec.models
        self.loaded: tuple[str, ...] = ()
        self.error: str | None = "not checked yet"
        self.checked_at: float | None = None
        self.checked = asyncio.Event()  # set after each check; the first one matters

    @property
    def headers(self) -> dict[str, str]:
        if self.spec.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.spec.api_key}"}

    def name_for(self, requested: str) -> str:
        """The name the peer knows `requested` by."""
        key = strip_latest(requested)
        return next((m for m in self.models if strip_latest(m) == key), requested)

    def view(self) -> PeerView:
        loaded = self.models if self.kind == "openai" and self.up else self.loaded
        return PeerView(
            self.name,
            self.url,
            self.up,
            self.kind,
            self.models,
            loaded,
            self.error,
            self.checked_at,
        )


class PeerDirectory:
    def __init__(
        self,
        peers: Mapping[str, PeerSpec],
        session: aiohttp.ClientSession,
        is_local: Callable[[str], bool],
        interval: float,
    ) -> None:
        self._peers = {name: Peer(name, spec) for name, spec in peers.items()}
        self._session = session
        self._is_local = is_local
        self._interval = interval
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self._peers}
        self._clashes_logged: set[str] = set()

    @property
    def interval(self) -> float:
        return self._interval

    def start(self) -> None:
        for peer in self._peers.values():
            self._tasks.append(asyncio.create_task(self._watch(peer), name=f"peer-{peer.name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def views(self) -> list[PeerView]:
        return [peer.view() for peer in self._peers.values()]

    def find(self, requested: str) -> Peer | None:
        """The peer serving `requested`, if a peer lists it and no local model has its name."""
        key = strip_latest(requested)
        for peer in self._peers.values():
            if any(strip_latest(m) == key for m in peer.models) and not self._is_local(requested):
                return peer
        return None

    def served(self) -> list[tuple[str, Peer]]:
        """Every (model name, peer) a client may ask for here, first peer first for a name."""
        seen: set[str] = set()
        out = []
        for peer in self._peers.values():
            for model in peer.models:
                key = strip_latest(model)
                if key in seen or self._is_local(model):
                    continue
                seen.add(key)
                out.append((model, peer))
        return out

    def recheck(self, peer: Peer) -> None:
        """Check `peer` now (a request to it failed to connect)."""
        self._wake[peer.name].set()

    async def _watch(self, peer: Peer) -> None:
        while True:
            try:
                await self.check(peer)
            except Exception:  # a bug here, not the peer: logged, and the checks go on
                log.exception("peer check failed", peer=peer.name)
            wake = self._wake[peer.name]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._interval)
            wake.clear()

    async def check(self, peer: Peer) -> None:
        """One health check: the peer's API, models and loaded models, or why it is down."""
        was_up = peer.up
        try:
            kind, models, loaded = await self._probe(peer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the peer answered, the checks go on
            expected = isinstance(exc, aiohttp.ClientError | TimeoutError | BadListing)
            peer.up, peer.error = False, _describe(exc)
            if was_up or peer.checked_at is None:
                log.warning(
                    "peer down",
                    peer=peer.name,
                    url=peer.url,
                    error=peer.error,
                    exc_info=None if expected else exc,
                )
        else:
            peer.up, peer.error, peer.kind, peer.loaded = True, None, kind, loaded
            if not peer.spec.models:
                peer.models = models
            if not was_up:
                log.info("peer up", peer=peer.name, url=peer.url, api=kind, models=peer.models)
            self._log_clashes(peer)
        peer.checked_at = time.time()
        peer.checked.set()

    async def _probe(self, peer: Peer) -> tuple[PeerKind, tuple[str, ...], tuple[str, ...]]:
        tags = await self._get_json(peer, "/api/tags")
        if isinstance(tags, dict) and isinstance(tags.get("models"), list):
            names = _names(tags["models"], "name")
            ps = await self._get_json(peer, "/api/ps")
            running = ps.get("models") if isinstance(ps, dict) else None
            loaded = _names(running, "name") if isinstance(running, list) else ()
            return "ollama", names, loaded
        listing = await self._get_json(peer, "/v1/models", required=True)
        if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
            raise BadListing("/v1/models did not answer with a model list")
        return "openai", _names(listing["data"], "id"), ()

    async def _get_json(self, peer: Peer, path: str, required: bool = False) -> Any:
        """The JSON a GET answers with; None for a 4xx/5xx or a body that is not JSON, unless
        `required` (then it raises `BadListing`). An answer over `LISTING_LIMIT`, or JSON too
        deep to parse, always raises: it is no list of models, and it is read no further."""
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        async with self._session.get(
            peer.url + path, headers=peer.headers, timeout=timeout
        ) as response:
            if response.status != 200:
                if required:
                    raise BadListing(f"{path} answered {response.status}")
                return None
            body = await _read_bounded(response, path)
        try:
            return json.loads(body)
        except RecursionError:
            raise BadListing(f"{path} answered JSON nested too deep to read") from None
        except ValueError as exc:  # not JSON (UnicodeDecodeError included)
            if required:
                raise BadListing(f"{path} did not answer JSON: {exc}") from None
            return None

    def _log_clashes(self, peer: Peer) -> None:
        for model in peer.models:
            if self._is_local(model) and model not in self._clashes_logged:
                self._clashes_logged.add(model)
                log.warning(
                    "a peer's model has a local model's name; the local one is served",
                    peer=peer.name,
                    model=model,
                )


async def _read_bounded(response: aiohttp.ClientResponse, path: str) -> bytes:
    """The answer's body, or `BadListing` as soon as it passes `LISTING_LIMIT`."""
    pieces: list[bytes] = []
    size = 0
    async for piece in response.content.iter_any():
        size += len(piece)
        if size > LISTING_LIMIT:
            raise BadListing(f"{path} answered more than {LISTING_LIMIT // 2**20} MiB")
        pieces.append(piece)
    return b"".join(pieces)


def _names(entries: list[Any], key: str) -> tuple[str, ...]:
    """The names of the peer's own models. Those it lists as another server's (`remote_host`,
    as vllama lists its own peers' and Ollama its cloud models) are left out: relayed twice
    they could come back here, and two vllamas peering each other would pass a request for a
    model gone from both around in a circle."""
    return tuple(
        entry[key]
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get(key), str)
        and "remote_host" not in entry
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g}s"
    if isinstance(exc, aiohttp.ClientError | BadListing):
        return str(exc) or type(exc).__name__
    return f"its check failed: {type(exc).__name__}: {exc}"
