"""The worker's life as an explicit state machine.

STOPPED -> STARTING -> READY -> STOPPING -> STOPPED is the happy path. A start or a running worker
that breaks goes to FAILED (its process tree already cleaned up); from there the next request starts
it again (directly, or after BACKOFF), repeated fast failures end in FATAL, which only an explicit
load or a config reload clears. SLEEPING is vLLM's sleep mode on GPUs: loaded, weights offloaded.
"""

from __future__ import annotations

import enum
from typing import Literal


class WorkerState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    SLEEPING = "sleeping"
    STOPPING = "stopping"
    FAILED = "failed"
    BACKOFF = "backoff"
    FATAL = "fatal"


_S = WorkerState

ALLOWED_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _S.STOPPED: frozenset({_S.STARTING}),
    _S.STARTING: frozenset({_S.READY, _S.FAILED, _S.STOPPING}),
    _S.READY: frozenset({_S.STOPPING, _S.FAILED, _S.SLEEPING}),
    _S.SLEEPING: frozenset({_S.READY, _S.STOPPING, _S.FAILED}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.FAILED: frozenset({_S.STARTING, _S.BACKOFF, _S.FATAL, _S.STOPPED}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPED}),
    _S.FATAL: frozenset({_S.STARTING, _S.STOPPED}),
}


# Named groups, so a test of "which states" is written once.
RUNNING = frozenset({_S.READY, _S.SLEEPING})  # a live process holding the model
# Counted as loaded by placement (a sleeping worker keeps its CUDA context, and its slot).
HOLDS_MEMORY = frozenset({_S.STARTING, _S.READY, _S.SLEEPING})
DOWN = frozenset({_S.FAILED, _S.BACKOFF, _S.FATAL})  # broken; its tree already cleaned up


# Why a worker went FAILED, as a bounded label (metrics count restarts by it): its process exited,
# its health check failed, it did not wake from sleep mode, or its start failed.
FailureKind = Literal["exited", "unhealthy", "wake_failed", "load_failed"]


class IllegalTransition(RuntimeError):
    def __init__(self, model: str, current: WorkerState, target: WorkerState) -> None:
        super().__init__(f"worker {model!r}: illegal transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def check_transition(model: str, current: WorkerState, target: WorkerState) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(model, current, target)
