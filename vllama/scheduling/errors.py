"""What the scheduler refuses with, each a typed outcome with its own bounded `code`.

A failed start is the engine's `LoadError` (or `MemoryRefused`); the scheduler adds the outcomes in
which nothing was started: placement found no room, or the model is in a crash loop. Handlers map
all of them to 503 (`api/errors.http_error`); metrics count them by `code`.
"""

from __future__ import annotations

from vllama.engine.worker import LoadError


class PlacementRefused(LoadError):
    """No room for the model (it cannot fit, busy models did not finish in time, or an extra
    replica would have to evict): nothing was started."""

    code = "placement_refused"


class CrashLoop(LoadError):
    """The model failed too often in a row and is FATAL until its next retry: not started."""

    code = "crash_loop"


class Replaced(Exception):
    """The runner a request waited on was replaced or removed by a config reload: the request
    asks the scheduler's table again (it never reaches a handler)."""


class ShuttingDown(Exception):
    """The daemon is stopping and takes no new work."""


class QueueFull(Exception):
    """Too many requests are waiting for models already (Ollama's OLLAMA_MAX_QUEUE)."""
