"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from vllama.api.live import Shared
from vllama.api.services import Services

# Everything the handlers share: one typed object (`services(request)`).
SERVICES = web.AppKey("services", Services)
# The status page's snapshot, measured once for every open page (status_page.SHARED_FOR).
SNAPSHOTS: web.AppKey[Shared[dict[str, Any]]] = web.AppKey("snapshots")


def services(request: web.Request) -> Services:
    """The daemon's services (`vllama.services`), as `server.serve` or `app.build_app` set them."""
    return request.app[SERVICES]


# Per-request values, set by the observability middleware and the handlers.
REQUEST_ID_KEY = web.RequestKey("request_id", str)
STARTED_KEY = web.RequestKey("started", float)
FIRST_BYTE_KEY = web.RequestKey("first_byte", float)
TOKENS_KEY = web.RequestKey("tokens", int)  # tokens generated, where the answer counted them
# The answer's terminal event went out (`[DONE]`, `message_stop`, `response.completed`): a client
# that leaves after it got the whole answer, even before the stream's own end.
ANSWERED_KEY = web.RequestKey("answered", bool)
MODEL_KEY = web.RequestKey("model", str)  # the model's served name: metrics label, access log
