"""The daemon: read its configuration, build the services, serve, and shut down in a fixed order.

Signal handlers only queue work. SIGHUP asks the reload task for a pass (`Reloads`); the first
SIGTERM/SIGINT sets the stop event that `serve` waits on.

Shutdown order (first SIGTERM/SIGINT): stop taking reloads, refuse new work and abandon loads in
flight, stop listening, let requests in flight finish up to `drain_timeout`, stop every worker
(confirming each tree is gone), close the upstream pool, exit 0. A second signal SIGKILLs every
worker group and exits at once, from the handler itself.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from vllama.api.app import app_for
from vllama.api.inflight import InFlight
from vllama.api.relay import new_upstream_session
from vllama.api.services import Services
from vllama.config.settings import Config, ConfigError, ServerSettings, load_config, read_toml
from vllama.engine.leftovers import Leftovers
from vllama.engine.ports import ephemeral_overlap, ephemeral_range
from vllama.engine.support import check_engine_support
from vllama.ops.logsetup import configure_logging
from vllama.ops.systemd import Notifier, StatusLine, watchdog_loop

log = structlog.get_logger("vllama.server")

EXIT_FORCED = 130
# Seconds before drain_timeout at which answers still relayed are ended with an error: time for
# their handlers to write it before aiohttp cancels them.
CUT_MARGIN = 1.0
EXIT_BAD_CONFIG = 2


def run_daemon(config_path: Path | None, host: str | None, port: int | None) -> int:
    """`vllama serve`: flags > environment > file; with no file at all, the demo models."""
    try:
        config = resolve_config(config_path, host, port)
    except ConfigError as exc:
        print(f"vllama: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_logging(config.server.log_level, config.server.log_format)
    reload = (lambda: resolve_config(config_path, host, port)) if config.server.config else None
    try:
        return _run(serve(config, reload))
    except ConfigError as exc:  # found once the models folder is read: a library name's tag
        print(f"vllama: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG


def _cut_answers(in_flight: InFlight, drain_timeout: float) -> None:
    reason = f"vllama is stopping: drain_timeout ({drain_timeout:g}s) ran out before this answer"
    cut = in_flight.cut(reason)
    if cut:
        log.warning("drain_timeout ran out; answers in flight cut", answers=cut)


def _tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """HTTPS with the configured certificate chain and key, or None for plain HTTP."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert.expanduser(), settings.tls_key.expanduser())
    return context


def runtime_dir(settings: ServerSettings) -> Path:
    """Where the daemon keeps its runtime state: `[server] runtime_dir`, else systemd's
    RuntimeDirectory (/run/vllama with the shipped unit), else ~/.vllama/run."""
    if settings.runtime_dir is not None:
        return settings.runtime_dir.expanduser()
    systemd = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(systemd) if systemd else Path("~/.vllama/run").expanduser()


def resolve_config(config_path: Path | None, host: str | None, port: int | None) -> Config:
    """The configuration from its sources, checked against the installed engine (also what a
    SIGHUP re-reads)."""
    flags: dict[str, Any] = {"host": host, "port": port, "config": config_path}
    path_text = config_path or os.environ.get("VLLAMA_CONFIG")
    if path_text:
        path = Path(path_text).expanduser()
        config = load_config(flags, read_toml(path), base_dir=path.resolve().parent)
    else:
        from vllama.demo.config import demo_config_data  # builds the demo models if needed

        bare = load_config(flags)
        config = load_config(flags, demo_config_data(bare.server.models_dir.expanduser()))
    check_engine_support(config)
    return config


def _run(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where installed (less CPU per relayed request), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)  # measured: docs/BENCHMARKS.md


class Reloads:
    """SIGHUP's work, off the signal handler. `request` (all the handler does) asks for a pass;
    one task runs the passes, one at a time: signals that arrive during a pass make one more
    pass after it, however many they are. A pass reads and checks the file in a thread, applies
    it (`Registry.reconfigure`, then `Scheduler.reconfigure`) and waits for the model changes
    that started before the next pass may plan its own from what then runs."""

    def __init__(self, read: Callable[[], Config], services: Services, started: Config) -> None:
        self._read = read
        self._services = services
        self._server = started.server
        self._wanted = asyncio.Event()

    def request(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self._pass()
            except Exception:  # a bug here must not end reloads for the daemon's lifetime
                log.exception("config reload failed; keeping the running config")

    async def _pass(self) -> None:
        try:
            read = await asyncio.to_thread(self._read)
            fresh = self._services.registry.reconfigure(read)
        except ConfigError as exc:
            log.error("config reload failed; keeping the running config", error=str(exc))
            return
        if fresh.server != self._server:
            log.warning("server settings changed: they take effect at the next restart")
        changes = self._services.scheduler.reconfigure(fresh)
        log.info("config reloaded", models=sorted(fresh.models))
        if changes:
            await asyncio.wait(changes)
        for task in changes:  # each failure said once, here (else asyncio's "never retrieved")
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error(
                    "config reload: a model change failed", change=task.get_name(), error=str(error)
                )


async def serve(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM/SIGINT. `reload` re-reads the configuration, for SIGHUP."""
    settings = config.server
    loop = asyncio.get_running_loop()
    # Before anything loads: stop what a previous daemon on this port left running.
    leftovers = Leftovers(runtime_dir(settings) / f"workers-{settings.port}.json")
    await asyncio.to_thread(leftovers.reap)
    overlap = ephemeral_overlap(
        settings.worker_port_min, settings.worker_port_max, ephemeral_range()
    )
    if overlap is not None:
        log.warning(
            "worker ports overlap the kernel's ephemeral range: outgoing connections may take "
            "them, and a worker then starts again on the next port",
            worker_ports=f"{settings.worker_port_min}-{settings.worker_port_max}",
            overlap=f"{overlap[0]}-{overlap[1]}",
        )
    services = Services.build(config, new_upstream_session(), leftovers=leftovers)
    app = app_for(services)
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # upstream request so vLLM stops generating, even before the first byte is due.
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=settings.drain_timeout,
        access_log=None,
        # From a connection's start, and between its requests: a client that never completes
        # its headers (slowloris) is closed then too.
        keepalive_timeout=settings.idle_timeout,
    )
    # Workers must not inherit systemd's socket: a READY=1 from a worker would be the daemon's.
    notifier = Notifier.from_environment()
    Notifier.unset_environment(os.environ)
    pinger = asyncio.create_task(watchdog_loop(notifier), name="watchdog")
    await runner.setup()
    await services.start()
    # What startup built (modules, the app, its settings) lives as long as the daemon: frozen out
    # of the cyclic collector's sight, the full collections that requests in flight set off every
    # thousand or so walk what requests made, not tens of thousands of objects (50 ms each).
    gc.collect()
    gc.freeze()
    scheduler = services.scheduler
    stop = asyncio.Event()
    signals_seen = 0
    cutter: asyncio.TimerHandle | None = None
    reloads = Reloads(reload, services, config) if reload is not None else None
    reloading = asyncio.create_task(reloads.run(), name="reloads") if reloads else None

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            # How many answers the drain waits for: what an operator (and the image test) reads
            # to tell a drain from a stop that found nothing to wait for.
            log.info(
                "shutdown requested",
                signal=signal.Signals(signum).name,
                answers_in_flight=len(services.in_flight),
            )
            stop.set()
            return
        log.warning("second signal: killing every worker now", signal=signal.Signals(signum).name)
        scheduler.kill_all_now()
        os._exit(EXIT_FORCED)

    def on_hangup() -> None:
        if reloads is None:
            log.warning("SIGHUP: no config file to reload")
        elif not stop.is_set():
            reloads.request()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        try:
            tls = _tls_context(settings)
            site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls)
            await site.start()
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot listen", host=settings.host, port=settings.port, error=str(exc))
            return 1
        scheme = "https" if tls is not None else "http"
        log.info(
            "vllama listening",
            url=f"{scheme}://{settings.host}:{settings.port}",
            models=sorted(config.models),
        )
        notifier.ready(f"listening on {settings.host}:{settings.port}")
        status_line = StatusLine(notifier, scheduler.status)
        scheduler.events.subscribe(status_line.listen)
        status_line.update()
        await stop.wait()
        notifier.stopping()
        notifier.status("draining requests, then stopping workers")
        await _cancel(reloading)
        scheduler.begin_shutdown()
        # Just before aiohttp cancels what is still running at drain_timeout, end each relayed
        # answer with an error its client reads; the workers then stop as usual.
        cut_at = max(settings.drain_timeout - CUT_MARGIN, 0.0)
        cutter = loop.call_later(cut_at, _cut_answers, services.in_flight, settings.drain_timeout)
        return 0
    finally:
        await _cancel(reloading)
        # Stops the listener and waits up to drain_timeout for handlers in flight; then the
        # services close: every worker stopped, the upstream pool closed.
        await runner.cleanup()
        await services.close()
        if cutter is not None:
            cutter.cancel()
        pinger.cancel()
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        log.info("vllama stopped")


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])  # its cancellation, not ours: `serve` may be cancelled too
