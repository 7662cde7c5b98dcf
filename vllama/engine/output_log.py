"""A worker's output lines in the daemon's log, tagged with the model and rate-limited."""

from __future__ import annotations

import time

import structlog

log = structlog.get_logger("vllama.worker")

BURST = 200  # a vLLM start prints ~100 lines
RATE = 20.0  # lines per second after the burst


class OutputLog:
    """A token bucket (a burst of `BURST`, then `RATE` lines per second) keeps a chatty or
    crash-looping engine from flooding journald; suppressed lines are counted, and every line
    stays in the tail the worker keeps for errors and `vllama logs`."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._tokens = float(BURST)
        self._at = time.monotonic()
        self._suppressed = 0

    def line(self, line: str) -> None:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._at) * RATE)
        self._at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        if self._suppressed:
            log.warning("worker output suppressed", model=self._model, lines=self._suppressed)
            self._suppressed = 0
        log.info("worker output", model=self._model, line=line)
