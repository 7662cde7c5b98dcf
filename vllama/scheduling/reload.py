"""A config reload as a pure diff: which models appear, change, go, or have a failure cleared.

The scheduler applies the plan (`Scheduler.reconfigure`): changed models restart once their
requests finish, retuned ones take their new vllama-side settings in place (no restart), removed
ones stop, added ones become available, cleared ones may load again.
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
    # Only vllama's own settings differ (keep_alive, pinned, ...): applied to the running
    # worker's runner, which keeps serving.
    retuned: tuple[str, ...] = ()


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
    retuned = [
        n
        for n, s in configured_now.items()
        if n in running and _engine(running[n]) == _engine(s) and running[n] != s
    ]
    removed = [n for n in configured_before if n not in configured_now and n in running]
    lists = (added, changed, removed, cleared, retuned)
    return ReloadPlan(*(tuple(sorted(names)) for names in lists))


# Settings vllama reads itself (per request, or in its own scheduling), never passed to the
# worker: a change to them alone restarts nothing. `max_parallel` is not among them: its permits
# are held by requests in flight, so a new count takes a new runner.
_VLLAMA_ONLY = {
    "max_output_tokens": None,
    "keep_alive": None,
    "aliases": (),
    "pinned": False,
    "preload": False,
}


def _engine(spec: ModelSpec) -> ModelSpec:
    """The part of a spec its worker runs with."""
    return spec.model_copy(update=_VLLAMA_ONLY)
