"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from vllama.api.inflight import InFlight
from vllama.api.live import Live, Shared
from vllama.catalog.registry import Registry
from vllama.config.settings import Config, ModelSpec
from vllama.engine.leftovers import Leftovers
from vllama.ops.metrics import Metrics
from vllama.remote.peers import PeerDirectory
from vllama.scheduling.devices import Devices
from vllama.scheduling.scheduler import Scheduler

CONFIG = web.AppKey("config", Config)
SCHEDULER = web.AppKey("scheduler", Scheduler)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
REGISTRY = web.AppKey("registry", Registry)
DEVICES = web.AppKey("devices", Devices)
WEIGHT_BYTES: web.AppKey[Callable[[ModelSpec], int]] = web.AppKey("weight_bytes")
METRICS = web.AppKey("metrics", Metrics)
LEFTOVERS = web.AppKey("leftovers", Leftovers)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
PEERS = web.AppKey("peers", PeerDirectory)
LIVE = web.AppKey("live", Live)  # the status page's streams and recent requests
# The status page's snapshot, measured once for every open page (status_page.SHARED_FOR).
SNAPSHOTS: web.AppKey[Shared[dict[str, Any]]] = web.AppKey("snapshots")

# Per-request values, set by the observability middleware and the handlers.
REQUEST_ID_KEY = web.RequestKey("request_id", str)
STARTED_KEY = web.RequestKey("started", float)
FIRST_BYTE_KEY = web.RequestKey("first_byte", float)
TOKENS_KEY = web.RequestKey("tokens", int)  # tokens generated, where the answer counted them
MODEL_KEY = web.RequestKey("model", str)  # the model's served name: metrics label, access log
