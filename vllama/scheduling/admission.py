"""Admission: whether a request for a model goes on now, waits in the queue, or is refused.

A pure function beside `placement.decide`. The queue is bounded as Ollama's (`max_queue`): a
request that would have to wait is refused once that many already wait, all models together.
"""

from __future__ import annotations

from typing import Literal

# go: straight to the worker, no bookkeeping (the hot path);
# queue: counted as waiting until the model is ready and a `max_parallel` permit is free (which
#        may be at once); refuse: the queue is full.
Admission = Literal["go", "queue", "refuse"]


def admit(
    *,
    ready: bool,
    draining: bool,
    limited: bool,
    permit_free: bool,
    queued: int,
    max_queue: int,
) -> Admission:
    """`ready`: the worker is READY; `draining`: another load waits for this model to be idle;
    `limited`: the model has `max_parallel`; `queued`: requests waiting now, all models."""
    usable = ready and not draining
    if usable and not limited:
        return "go"
    if usable and permit_free:
        return "queue"  # passes through the queue without waiting
    return "refuse" if queued >= max_queue else "queue"
