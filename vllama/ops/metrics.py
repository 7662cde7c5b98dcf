"""Prometheus metrics: vllama's own, its workers' vLLM metrics, and device memory, one scrape.

Counters and histograms are updated where things happen: requests in the API middleware; loads,
evictions and restarts from the scheduler's events (`listen`). Gauges are read at scrape time from
the scheduler's status view and from the last background sample (device memory, each worker's own
`/metrics`), so a scrape never waits on a worker or on NVML and answers while every worker is down
or loading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar, cast

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from vllama.engine.states import WorkerState
from vllama.remote.peers import PeerView
from vllama.scheduling.devices import Devices
from vllama.scheduling.events import Event, LoadFailed, ModelLoaded, ModelUnloaded, ModelWoken
from vllama.scheduling.status import SchedulerStatus

StatusSource = Callable[[], SchedulerStatus]

log = structlog.get_logger("vllama.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LOAD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_WAKE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SAMPLE_INTERVAL = 10.0
_WORKER_SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=3)


_M = TypeVar("_M", Counter, Histogram)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.loads = Counter(
            "vllama_model_loads", "Model loads by result", ["model", "result"], registry=r
        )
        self.load_seconds = Histogram(
            "vllama_model_load_duration_seconds",
            "Time from a load's start to its worker being ready",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.wake_seconds = Histogram(
            "vllama_model_wake_duration_seconds",
            "Time for a sleeping worker to wake and serve its warm-up (sleep mode)",
            ["model"],
            buckets=_WAKE_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "vllama_model_evictions", "Workers stopped by vllama", ["model", "reason"], registry=r
        )
        self.restarts = Counter(
            "vllama_worker_restarts",
            "Starts of a model whose previous worker failed",
            ["model", "reason"],
            registry=r,
        )
        self.requests = Counter(
            "vllama_requests",
            "Requests by endpoint and status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "vllama_request_duration_seconds",
            "Request duration, to the last byte",
            ["model", "endpoint"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "vllama_time_to_first_token_seconds",
            "Time from a request's arrival to its first streamed byte of output",
            ["model", "endpoint"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllama_prompt_tokens", "Prompt tokens (from vLLM's usage)", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "vllama_generated_tokens",
            "Generated tokens (from vLLM's usage)",
            ["model"],
            registry=r,
        )
        self._live = _LiveCollector()
        r.register(self._live)
        # Each label set's child, found once: `labels()` checks the values and takes a lock on
        # every call, and every request records three to five of them. As bounded as the
        # children themselves (prometheus_client keeps a label set's child for good either way).
        self._children: dict[tuple[object, ...], Counter | Histogram] = {}

    def attach(
        self,
        status: StatusSource,
        devices: Devices,
        peers: Callable[[], list[PeerView]] = list,
    ) -> None:
        """Read gauges from `status` and `peers`, and sample `devices` (before the first scrape)."""
        self._live.status, self._live.devices, self._live.peers = status, devices, peers

    def listen(self, event: Event) -> None:
        """The scheduler's events, as counters and histograms."""
        if isinstance(event, ModelLoaded):
            self.loads.labels(event.model, "ok").inc()
            self.load_seconds.labels(event.model).observe(event.seconds)
            if event.restarted_after is not None:
                self.restarts.labels(event.model, event.restarted_after).inc()
        elif isinstance(event, ModelWoken):
            self.wake_seconds.labels(event.model).observe(event.seconds)
        elif isinstance(event, LoadFailed):
            self.loads.labels(event.model, "failed").inc()
        elif isinstance(event, ModelUnloaded):
            self.evictions.labels(event.model, event.why).inc()

    def count_request(
        self, model: str, endpoint: str, status: str, seconds: float, ttft: float | None
    ) -> None:
        """A finished request: its count, its duration, its time to first byte where it had
        one (no `ttft` child otherwise: a label set appears when first observed)."""
        self._child(self.requests, model, endpoint, status).inc()
        self._child(self.request_seconds, model, endpoint).observe(seconds)
        if ttft is not None:
            self._child(self.ttft_seconds, model, endpoint).observe(ttft)

    def count_usage(self, model: str, prompt: int, generated: int) -> None:
        self._child(self.prompt_tokens, model).inc(prompt)
        self._child(self.generated_tokens, model).inc(generated)

    def _child(self, metric: _M, *labels: str) -> _M:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return cast(_M, child)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def sample(self, http: aiohttp.ClientSession) -> None:
        """Refresh device memory and the workers' own metrics (what scrapes then serve)."""
        await self._live.sample(http)

    async def sample_forever(self, http: aiohttp.ClientSession) -> None:
        """`sample` every SAMPLE_INTERVAL, in the background, off the scrape path."""
        while True:
            try:
                await self.sample(http)
            except Exception as exc:  # a failed sample must not end sampling
                log.warning("metrics sample failed", error=str(exc))
            await asyncio.sleep(SAMPLE_INTERVAL)


class _LiveCollector(Collector):
    """Gauges read at scrape time from the status view and the last background sample."""

    def __init__(self) -> None:
        self.status: StatusSource | None = None
        self.devices: Devices | None = None
        self._devices: list[tuple[str, int, int]] = []  # id, total, free
        self._usage: dict[str, dict[str, int]] = {}  # model -> device -> bytes
        self._worker_families: list[Metric] = []
        self.peers: Callable[[], list[PeerView]] = list

    async def sample(self, http: aiohttp.ClientSession) -> None:
        if self.status is None or self.devices is None:
            return
        memory = await self.devices.snapshot_async()
        self._devices = [(d.id, d.total, d.free) for d in memory]
        usage: dict[str, dict[str, int]] = {}
        texts: list[str] = []
        for model in self.status().models:
            if not model.running or model.url is None or model.pid is None:
                continue
            usage[model.name] = await self.devices.worker_usage(
                model.pid, model.devices, model.footprint
            )
            text = await _fetch(http, model.url + "/metrics")
            if text:
                texts.append(text)
        self._usage = usage
        # vLLM's exposition runs to thousands of lines; parsing it is pure Python: not on the
        # event loop, where it would stall every request for its duration.
        self._worker_families = await asyncio.to_thread(_merge, texts)

    def collect(self) -> Iterator[Metric]:
        if self.status is None:
            return
        status = self.status()
        state = GaugeMetricFamily(
            "vllama_model_state",
            "1 for the state each model's worker is in",
            labels=["model", "state"],
        )
        in_flight = GaugeMetricFamily(
            "vllama_requests_in_flight", "Requests being served", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "vllama_requests_waiting", "Requests waiting for their model", labels=["model"]
        )
        for model in status.models:
            for option in WorkerState:
                state.add_metric([model.name, option.value], float(model.state is option))
            in_flight.add_metric([model.name], model.in_flight)
            waiting.add_metric([model.name], model.waiting)
        yield state
        yield in_flight
        yield waiting
        yield GaugeMetricFamily(
            "vllama_queue_depth", "Requests waiting for models, all models", value=status.queued
        )
        yield GaugeMetricFamily(
            "vllama_spares",
            "Warm spares idle, vLLM imported, ready for a load",
            value=status.spares,
        )
        yield GaugeMetricFamily(
            "vllama_spare_memory_bytes",
            "Host memory the idle warm spares hold (counted in the CPU budget)",
            value=status.spare_bytes,
        )
        memory = GaugeMetricFamily(
            "vllama_model_memory_bytes",
            "Measured memory of each loaded model's worker tree",
            labels=["model", "device"],
        )
        share: dict[str, int] = {}
        for name, devices in self._usage.items():
            for device, size in devices.items():
                if size:
                    memory.add_metric([name, device], size)
                    share[device] = share.get(device, 0) + size
        yield memory
        total = GaugeMetricFamily("vllama_device_memory_total_bytes", "", labels=["device"])
        used = GaugeMetricFamily("vllama_device_memory_used_bytes", "", labels=["device"])
        ours = GaugeMetricFamily(
            "vllama_device_memory_vllama_bytes", "Used by vllama's workers", labels=["device"]
        )
        for device, size, free in self._devices:
            total.add_metric([device], size)
            used.add_metric([device], size - free)
            ours.add_metric([device], share.get(device, 0))
        yield from (total, used, ours)
        peer_up = GaugeMetricFamily(
            "vllama_peer_up", "1 when the peer passed its last health check", labels=["peer"]
        )
        for peer in self.peers():
            peer_up.add_metric([peer.name], float(peer.up))
        yield peer_up
        yield from self._worker_families


async def _fetch(http: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with http.get(url, timeout=_WORKER_SCRAPE_TIMEOUT) as response:
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def _merge(texts: Iterable[str]) -> list[Metric]:
    """Workers' expositions as one set of families (vLLM labels each sample with model_name)."""
    families: dict[str, Metric] = {}
    for text in texts:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("unparsable worker metrics", error=str(exc))
            continue
        for family in parsed:
            # Only vLLM's own families carry `model_name`; the process_/python_/http_ families
            # of several workers would collide into duplicate series.
            if not family.name.startswith("vllm:"):
                continue
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples.extend(family.samples)
    return list(families.values())
