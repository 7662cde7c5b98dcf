"""Where a model's requests go: one interface for a local model and a peer's.

`backend_for` finds the model behind a name: a local one (configured, derived or on disk; a model
with replicas is one backend, the scheduler picks the replica at each lease) or, when no local
model has the name, the peer that serves it. Handlers use the `Backend` they get without asking
which kind it is: what differs (whose worker answers, what the model is called there, whether an
Ollama request can pass as it came) is the backend's to say.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from vllama.api.common import (
    check_files_capability,
    model_context,
    servable_model,
    served_traits,
)
from vllama.api.keys import MODEL_KEY, services
from vllama.api.relay import worker_request
from vllama.api.remote import owner, peer_request
from vllama.api.upstream import UpstreamAnswer
from vllama.catalog.derived import DerivedModel as Derived
from vllama.catalog.names import strip_latest
from vllama.catalog.registry import ModelNotFound, ModelTraits, Resolved
from vllama.remote.peers import Peer


@dataclass(frozen=True)
class Answer:
    """The upstream's response to one request, and when the request went out (perf_counter_ns,
    after any load)."""

    response: UpstreamAnswer
    sent_ns: int


class Backend(Protocol):
    @property
    def upstream_model(self) -> str:
        """The `model` field the upstream serves it by."""

    @property
    def scheduled_name(self) -> str | None:
        """The name this daemon schedules it by; None when another server schedules it."""

    @property
    def derived(self) -> Derived | None:
        """A derived model's defaults, applied to the request here."""

    @property
    def owner(self) -> str:
        """Who serves it, as `/v1/models` says (`owned_by`)."""

    @property
    def passes_ollama(self) -> bool:
        """An Ollama request goes as it came: the upstream speaks Ollama's API itself."""

    async def traits(self, request: web.Request) -> ModelTraits: ...

    def served_context(self, request: web.Request) -> int | None:
        """The context its worker served when last ready; None when not known here (no I/O)."""

    async def context_length(self, request: web.Request) -> int | None:
        """The context it serves, or will once loaded; None when not known here."""

    def output_default(self, request: web.Request) -> int | None:
        """The output budget of a request that sets none (None: the upstream's own)."""

    async def check_files(
        self, request: web.Request, needs: frozenset[str], action: str
    ) -> None: ...

    def send(
        self,
        request: web.Request,
        path: str,
        body: bytes,
        keep_alive: float | None = None,
        stream: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[Answer]: ...

    async def load(self, request: web.Request, keep_alive: float | None) -> int | None:
        """Ready the model without a request to it; when it was ready (None: not ours to load)."""

    def unload(self, request: web.Request) -> None: ...


async def backend_for(request: web.Request, requested: str) -> Backend:
    """A local model (made schedulable), else the peer that serves the name (`ModelNotFound`
    when neither does): local names always win."""
    try:
        return LocalModel(requested, await servable_model(request, requested))
    except ModelNotFound:
        peer = services(request).peers.find(requested)
        if peer is None:
            raise
        request[MODEL_KEY] = requested  # the metrics label and access-log field
        return PeerModel(requested, peer)


def scheduled_name(request: web.Request, requested: str) -> str | None:
    """The model the scheduler runs under `requested` when the catalog no longer finds it (a
    models-folder model whose folder has gone while it ran): the folder it was pulled into, or
    the name itself (without `:latest`), for a derived model its base's. None when the
    scheduler has no such model."""
    registry, scheduler = services(request).registry, services(request).scheduler
    names = [requested]
    while len(names) < 5 and (derived := registry.derived.get(names[-1])) is not None:
        names.append(derived.base)
    for name in names:
        for candidate in (registry.pulled.get(name), strip_latest(name), name):
            if candidate and scheduler.model_status(candidate) is not None:
                return candidate
    return None


@dataclass(frozen=True)
class LocalModel:
    """A model this daemon runs: its requests lease its worker (a replica, where it has them)."""

    requested: str
    resolved: Resolved
    owner: str = "vllama"
    passes_ollama: bool = False

    @property
    def upstream_model(self) -> str:
        return self.resolved.upstream_model

    @property
    def scheduled_name(self) -> str:
        return self.resolved.served_name

    @property
    def derived(self) -> Derived | None:
        return self.resolved.derived

    async def traits(self, request: web.Request) -> ModelTraits:
        return await served_traits(request, self.resolved)

    def served_context(self, request: web.Request) -> int | None:
        return services(request).scheduler.context_length(self.resolved.served_name)

    async def context_length(self, request: web.Request) -> int | None:
        return await model_context(request, self.resolved)

    def output_default(self, request: web.Request) -> int | None:
        return services(request).registry.output_default(self.resolved)

    async def check_files(self, request: web.Request, needs: frozenset[str], action: str) -> None:
        await check_files_capability(request, self.resolved, self.requested, needs, action)

    @contextlib.asynccontextmanager
    async def send(
        self,
        request: web.Request,
        path: str,
        body: bytes,
        keep_alive: float | None = None,
        stream: bool = False,
    ) -> AsyncIterator[Answer]:
        served = self.resolved.served_name
        async with worker_request(request, served, path, body, keep_alive, stream=stream) as leased:
            yield Answer(leased.response, leased.sent_ns)

    async def load(self, request: web.Request, keep_alive: float | None) -> int:
        scheduler = services(request).scheduler
        async with scheduler.lease(self.resolved.served_name, keep_alive, explicit=True):
            return time.perf_counter_ns()

    def unload(self, request: web.Request) -> None:
        services(request).scheduler.expire(self.resolved.served_name)


@dataclass(frozen=True)
class PeerModel:
    """A model another server runs: no lease, no queue, the peer schedules its own models."""

    requested: str
    peer: Peer
    scheduled_name: None = None
    derived: None = None

    @property
    def upstream_model(self) -> str:
        return self.peer.name_for(self.requested)

    @property
    def owner(self) -> str:
        return owner(self.peer)

    @property
    def passes_ollama(self) -> bool:
        return self.peer.kind == "ollama"

    async def traits(self, request: web.Request) -> ModelTraits:
        # No model files to read here: the peer's own validation answers for its models.
        return ModelTraits(self.upstream_model, described=False)

    def served_context(self, request: web.Request) -> int | None:
        return None  # the peer's worker, not ours: its refusal says (see api/budget)

    async def context_length(self, request: web.Request) -> int | None:
        return None

    def output_default(self, request: web.Request) -> int | None:
        return None  # the peer applies its own

    async def check_files(self, request: web.Request, needs: frozenset[str], action: str) -> None:
        return None  # the peer answers for what its models can do

    @contextlib.asynccontextmanager
    async def send(
        self,
        request: web.Request,
        path: str,
        body: bytes,
        keep_alive: float | None = None,
        stream: bool = False,
    ) -> AsyncIterator[Answer]:
        async with peer_request(request, self.peer, path, body, stream) as response:
            yield Answer(response, time.perf_counter_ns())

    async def load(self, request: web.Request, keep_alive: float | None) -> None:
        return None  # a peer's models are its own to load and unload

    def unload(self, request: web.Request) -> None:
        return None
