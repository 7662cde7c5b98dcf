"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from vllama.config import Config
from vllama.registry import Registry
from vllama.scheduler import Scheduler

CONFIG = web.AppKey("config", Config)
SCHEDULER = web.AppKey("scheduler", Scheduler)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
REGISTRY = web.AppKey("registry", Registry)
