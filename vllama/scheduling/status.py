"""A frozen view of what the scheduler runs, for everything that reports on it.

`/api/ps`, `/metrics`, the systemd status line, the CLI (through the API) and logs read this view,
never the scheduler's own state, so nothing outside scheduling can change it by accident and its
internals can change without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllama.engine.states import RUNNING, WorkerState


@dataclass(frozen=True)
class ModelStatus:
    name: str
    state: WorkerState
    reason: str  # why it is in that state (the last transition's reason)
    devices: tuple[str, ...]  # where its worker runs; () when none runs
    footprint: int  # bytes per device it holds: measured (NVML, or the load's drop in free
    # memory where NVML sees no pid), else estimated; 0 when none runs
    in_flight: int
    waiting: int  # requests waiting for it to be ready (or for a max_parallel permit)
    keep_alive: float  # seconds; math.inf = never unloaded
    expires_at: float | None  # wall-clock time of the planned unload, while idle
    context_length: int | None  # what vLLM serves, once it has been ready
    pid: int | None  # its worker's process (the root of its tree) while one runs
    url: str | None  # its worker's base URL while it has a port
    ray_nodes: tuple[str, ...] = ()  # a multi-node model: the Ray cluster's nodes, at its start

    @property
    def running(self) -> bool:
        return self.state in RUNNING


@dataclass(frozen=True)
class SchedulerStatus:
    models: tuple[ModelStatus, ...]
    queued: int  # requests waiting for a model, all models together
    spares: int = 0  # warm spares idle, ready to become a model's worker
    spare_bytes: int = 0  # host memory they hold

    def model(self, name: str) -> ModelStatus | None:
        return next((m for m in self.models if m.name == name), None)

    def loaded(self) -> list[str]:
        return sorted(m.name for m in self.models if m.state is WorkerState.READY)
