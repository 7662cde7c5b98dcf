"""Which replica a request goes to, and which replicas to start (pure policy).

A model with `replicas = n` keeps n workers while it is in use: a request goes to the ready one
with the fewest requests (in flight and waiting), and the others that are neither ready nor
starting are started. With `max_replicas`, one more is started while every ready replica is busy
(`busy_at` requests each); it loads only where it fits without evicting anything, and unloads at
its keep-alive like any worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Requests in flight per replica past which an extra replica is worth starting, when the model
# sets no `max_parallel` (vLLM batches that many at once without a queue of its own forming).
BUSY_AT = 16


@dataclass(frozen=True)
class ReplicaView:
    ready: bool  # READY and not draining for another load
    starting: bool  # a load in flight
    failed: bool  # FATAL: left to its own retry timer
    busy: int  # requests in flight and waiting
    extra: bool  # past `replicas`: only while the others are busy


def route(views: Sequence[ReplicaView], busy_at: int) -> tuple[int, tuple[int, ...]]:
    """(the replica the request goes to, the replicas to start now)."""
    ready = [i for i, view in enumerate(views) if view.ready]
    if ready:
        chosen = min(ready, key=lambda i: (views[i].busy, i))
    else:  # wait for one already starting, else load the model's own slot
        chosen = next((i for i, view in enumerate(views) if view.starting), 0)
    idle = [
        i
        for i, view in enumerate(views)
        if not (view.ready or view.starting or view.failed) and i != chosen
    ]
    start = [i for i in idle if not views[i].extra]
    all_busy = bool(ready) and all(views[i].busy + 1 >= busy_at for i in ready)
    extra_starting = any(view.extra and view.starting for view in views)
    if all_busy and not extra_starting:
        start += [i for i in idle if views[i].extra][:1]
    return chosen, tuple(start)
