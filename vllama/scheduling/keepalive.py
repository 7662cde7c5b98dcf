"""Keep-alive: when an idle model is unloaded (or put to sleep), as Ollama's keep_alive.

The timer is a thin effect (`Expiry`); what happens when it fires is a pure decision (`on_expiry`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Literal

from vllama.engine.states import WorkerState

Action = Literal["nothing", "sleep", "unload"]


def on_expiry(
    *, in_flight: int, waiting: int, state: WorkerState, sleep_when_idle: bool, sleeping: bool
) -> Action:
    """What an expired keep-alive does: nothing while the model is used or not loaded; a sleeping
    model's second keep-alive stops it, so sleep is a step on the way to unloaded."""
    if in_flight or waiting:
        return "nothing"
    if state is WorkerState.SLEEPING:
        return "nothing" if sleeping else "unload"
    if state is not WorkerState.READY:
        return "nothing"
    if sleep_when_idle:
        return "nothing" if sleeping else "sleep"
    return "unload"


class Expiry:
    """One model's keep-alive timer and the wall-clock time it fires at."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self.expires_at: float | None = None

    def arm(self, seconds: float, fire: Callable[[], None]) -> None:
        self.disarm()
        if math.isinf(seconds):
            return
        self.expires_at = time.time() + seconds
        self._timer = asyncio.get_running_loop().call_later(seconds, self._fire, fire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self.expires_at = None

    def _fire(self, fire: Callable[[], None]) -> None:
        self._timer = None
        self.expires_at = None
        fire()
