"""The status page: `GET /ui` (static files shipped in `vllama/ui/`) and the one stream it reads,
`GET /api/vllama/events` (Server-Sent Events, docs/API.md).

The stream sends a `status` event (the whole snapshot) at connect, on every scheduler event and
at least every `TICK` seconds (countdowns, memory), and a `request` event per finished request.
It ends when the daemon shuts down (`Live.close` from `on_shutdown`, which aiohttp runs before it
waits for handlers), so an open page never holds the drain for `drain_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from importlib import resources
from typing import Any

from aiohttp import web

from vllama.api.errors import Handler
from vllama.api.keys import SERVICES, SNAPSHOTS, services
from vllama.api.live import Shared
from vllama.config.replicas import model_of
from vllama.engine.states import DOWN
from vllama.scheduling.status import ModelStatus

TICK = 2.0  # seconds between snapshots when nothing happens
# Pages whose snapshots fall within this of each other (and of no scheduler event) share one:
# the devices and worker trees are measured once per tick, not once per open page.
SHARED_FOR = TICK / 2
ERROR_LINES = 8  # a failed model's last output lines in the snapshot

_ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}


def _asset(name: str) -> bytes:
    return (resources.files("vllama") / "ui" / name).read_bytes()


async def snapshot(app: web.Application) -> dict[str, Any]:
    """Everything the page shows but the recent requests' updates, in one JSON object."""
    parts = app[SERVICES]
    scheduler, devices, live = parts.scheduler, parts.devices, parts.live
    status = scheduler.status()
    now = time.time()
    models: list[dict[str, Any]] = []
    ours: dict[str, int] = {}  # device -> bytes held by vllama's workers
    for model in status.models:
        usage = await devices.worker_usage(model.pid, model.devices, model.footprint)
        for device, size in usage.items():
            ours[device] = ours.get(device, 0) + size
        tail = scheduler.log_tail(model.name, ERROR_LINES) if model.state in DOWN else []
        models.append(_model(model, usage, now, live.since.get(model.name), tail))
    running = {model_of(m.name) for m in status.models}
    for name in sorted(parts.config.models):
        if name not in running:
            models.append(_unloaded(name))
    memory = []
    for measured in await devices.snapshot_async():
        used = measured.total - measured.free
        mine = ours.get(measured.id, 0)
        memory.append(
            {
                "id": measured.id,
                "kind": measured.kind,
                "total": measured.total,
                "used": used,
                "vllama": mine,
                "others": max(used - mine, 0),
            }
        )
    return {
        "time": now,
        "models": models,
        "devices": memory,
        "queued": status.queued,
        "recent": list(live.recent),
    }


def _model(
    model: ModelStatus, usage: dict[str, int], now: float, since: float | None, tail: list[str]
) -> dict[str, Any]:
    keep_alive = None if math.isinf(model.keep_alive) else model.keep_alive
    return {
        "name": model.name,
        "state": model.state.value,
        "reason": model.reason,
        "seconds_in_state": round(now - since, 1) if since is not None else None,
        "devices": list(model.devices),
        "memory": usage,
        "in_flight": model.in_flight,
        "waiting": model.waiting,
        "keep_alive": keep_alive,
        "expires_in": round(model.expires_at - now, 1) if model.expires_at is not None else None,
        "context_length": model.context_length,
        "pid": model.pid,
        "last_error": tail,
    }


def _unloaded(name: str) -> dict[str, Any]:
    """A configured model with no worker yet: the page lists it, with a load button."""
    return {
        "name": name,
        "state": "stopped",  # the scheduler's word for no worker
        "reason": "",
        "seconds_in_state": None,
        "devices": [],
        "memory": {},
        "in_flight": 0,
        "waiting": 0,
        "keep_alive": None,
        "expires_in": None,
        "context_length": None,
        "pid": None,
        "last_error": [],
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    app, live = request.app, services(request).live
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must pass each event on at once
        }
    )
    await response.prepare(request)
    with live.stream() as notices:
        await response.write(_event("status", await app[SNAPSHOTS].get(live.moves)))
        while not live.closed:
            try:
                pending = [await asyncio.wait_for(notices.get(), TICK)]
            except TimeoutError:
                pending = [("status", None)]
            while not notices.empty():  # a burst of events: one snapshot for all of them
                pending.append(notices.get_nowait())
            if any(kind == "end" for kind, _ in pending):
                break
            for kind, entry in pending:
                if kind == "request" and entry is not None:
                    await response.write(_event("request", entry))
            if any(kind == "status" for kind, _ in pending):
                await response.write(_event("status", await app[SNAPSHOTS].get(live.moves)))
    await response.write_eof()
    return response


def _page(name: str) -> Handler:
    body = _asset(name)  # a few kilobytes, read once at startup
    content_type = _ASSETS[name]

    async def serve(request: web.Request) -> web.Response:
        # no-cache: a page left open across an upgrade fetches the new script on reload.
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    return serve


async def _close_streams(app: web.Application) -> None:
    app[SERVICES].live.close()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui", _page("index.html"))
    app.router.add_get("/ui/app.js", _page("app.js"))
    app.router.add_get("/ui/style.css", _page("style.css"))
    app.router.add_get("/api/vllama/events", events)
    app[SNAPSHOTS] = Shared(lambda: snapshot(app), SHARED_FOR)
    app.on_shutdown.append(_close_streams)
