"""A config reload as a pure diff: which models appear, change, go, or have a failure cleared.

The scheduler applies the plan (`Scheduler.reconfigure`): changed models restart once their
requests finish, removed ones stop, added ones become available, cleared ones may load again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from vllama.config.settings import ModelSpec


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    cleared: tuple[str, ...]  # unchanged, but marked FATAL: a reload retries it, as promised


def plan_reload(
    running: Mapping[str, ModelSpec],
    configured_before: Collection[str],
    configured_now: Mapping[str, ModelSpec],
    fatal: Collection[str],
) -> ReloadPlan:
    """`running`: every model the scheduler knows (configured or found on disk) and its spec."""
    added = [name for name in configured_now if name not in running]
    changed = [
        n for n, s in configured_now.items() if n in running and _engine(running[n]) != _engine(s)
    ]
    cleared = [
        n
        for n, s in configured_now.items()
        if n in running and _engine(running[n]) == _engine(s) and n in fatal
    ]
    removed = [n for n in configured_before if n not in configured_now and n in running]
    return ReloadPlan(*(tuple(sorted(names)) for names in (added, changed, removed, cleared)))


# Read per request (the registry's spec), never by the worker: a change restarts nothing.
_REQUEST_ONLY = {"max_output_tokens": None}


def _engine(spec: ModelSpec) -> ModelSpec:
    """The part of a spec its worker runs with."""
    return spec.model_copy(update=_REQUEST_ONLY)
