"""What the scheduler reports as it works: loads, wakes, failed loads, unloads, state changes.

The scheduler only emits; listeners (metrics, the systemd status line) subscribe. A listener that
raises is logged and never breaks scheduling. Each event is a frozen value, so a listener cannot
change what others see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from vllama.engine.states import FailureKind, WorkerState

log = structlog.get_logger("vllama.events")


@dataclass(frozen=True)
class ModelLoaded:
    model: str
    seconds: float
    restarted_after: FailureKind | None  # why the previous worker failed, when it had


@dataclass(frozen=True)
class ModelWoken:
    """A sleeping worker woke (sleep mode, the warm tier on GPUs) and served its warm-up."""

    model: str
    seconds: float


@dataclass(frozen=True)
class LoadFailed:
    """A start was attempted and failed (refusals, where nothing started, are not events)."""

    model: str
    code: str = "start_failed"  # bounded: the outcome's `LoadError.code`


@dataclass(frozen=True)
class ModelUnloaded:
    model: str
    why: str  # bounded: memory, keep_alive, requested, deleted


@dataclass(frozen=True)
class StateChanged:
    model: str
    old: WorkerState
    new: WorkerState
    reason: str


Event = ModelLoaded | ModelWoken | LoadFailed | ModelUnloaded | StateChanged
Listener = Callable[[Event], None]


class Events:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed", event=type(event).__name__)
