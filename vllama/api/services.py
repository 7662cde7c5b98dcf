"""What the request handlers share, built in one place and stopped in one order.

`server.serve` builds the services, starts them before it listens and closes them after the
runner has drained requests in flight; `api.app.build_app` does the same around an in-process
application's start and cleanup (tests). The handlers reach them through `api.keys.services`.
Nothing here imports another api module that reaches them (`keys`, `relay`): the upstream pool
comes in built (`relay.new_upstream_session`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import aiohttp

from vllama.api.inflight import InFlight
from vllama.api.live import Live
from vllama.api.upstream import WorkerClient
from vllama.catalog.facts import ModelFacts
from vllama.catalog.registry import Registry
from vllama.config.settings import Config, ModelSpec
from vllama.engine.argv import base_env
from vllama.engine.leftovers import Leftovers
from vllama.engine.spares import SparePool
from vllama.ops.metrics import Metrics
from vllama.remote.peers import PeerDirectory
from vllama.scheduling.coordinator import FactsSource
from vllama.scheduling.devices import Devices
from vllama.scheduling.footprints import FOOTPRINTS_FILE, Footprints
from vllama.scheduling.scheduler import Scheduler, process_workers


@dataclass(eq=False)
class Services:
    """The daemon's parts. `build` wires them (nothing runs yet), `start` sets them going,
    `close` stops them: sampler, peer checks, every worker (each tree confirmed gone), NVML,
    then the upstream pools."""

    config: Config  # as served: library names (`model = "qwen3:8b"`) made folders or repos
    registry: Registry
    devices: Devices
    metrics: Metrics
    in_flight: InFlight
    live: Live  # the status page's streams and recent requests
    upstream: aiohttp.ClientSession  # to peers, and the workers' health and metrics
    workers: WorkerClient  # requests relayed to the workers (the hot path)
    spares: SparePool
    scheduler: Scheduler
    peers: PeerDirectory
    _sampler: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(
        cls,
        config: Config,
        upstream: aiohttp.ClientSession,
        devices: Devices | None = None,
        weight_bytes: Callable[[ModelSpec], int] | None = None,
        leftovers: Leftovers | None = None,
    ) -> Services:
        """Blocking: the models folder is scanned. `upstream` (the pool requests to workers
        and peers go through) is closed by `close`. `devices` and `weight_bytes` replace the
        real NVML/psutil boundary and the size of the model's files, for tests that play a GPU
        host."""
        registry = Registry(config)
        config = registry.config
        devices = devices if devices is not None else Devices()
        facts = registry.facts
        sized = _with_sizes(facts, weight_bytes) if weight_bytes is not None else facts
        spares = SparePool(config.server, base_env(os.environ), leftovers)
        scheduler = Scheduler(
            config,
            process_workers(config.server, upstream, leftovers, spares),
            devices=devices,
            facts=sized,
            spares=spares,
            # Hidden in the models folder (scans skip it), where it outlives the daemon.
            learned=Footprints(config.server.models_dir.expanduser() / FOOTPRINTS_FILE),
        )
        metrics, live = Metrics(), Live()
        scheduler.events.subscribe(metrics.listen)
        scheduler.events.subscribe(live.listen)
        peers = PeerDirectory(
            config.peers, upstream, registry.is_configured, config.server.health_interval
        )
        metrics.attach(scheduler.status, devices, peers.views)
        return cls(
            config=config,
            registry=registry,
            devices=devices,
            metrics=metrics,
            in_flight=InFlight(),
            live=live,
            upstream=upstream,
            workers=WorkerClient(),
            spares=spares,
            scheduler=scheduler,
            peers=peers,
        )

    async def start(self) -> None:
        """The metrics sampler and peer checks run, configured preloads begin, spares warm up."""
        self._sampler = asyncio.create_task(
            self.metrics.sample_forever(self.upstream), name="metrics-sampler"
        )
        self.peers.start()
        self.scheduler.preload()
        self.spares.refill()

    async def close(self) -> None:
        """After requests in flight have drained (also after a `start` that never ran)."""
        if self._sampler is not None:
            self._sampler.cancel()
        await self.peers.close()
        await self.scheduler.stop_all()
        self.devices.close()
        await self.upstream.close()
        await self.workers.close()


def _with_sizes(facts: FactsSource, weight_bytes: Callable[[ModelSpec], int]) -> FactsSource:
    """A test's model sizes in place of the files' (a pretend GPU host with big models)."""

    async def sized(spec: ModelSpec) -> ModelFacts:
        return replace(await facts(spec), weight_bytes=weight_bytes(spec))

    return sized
