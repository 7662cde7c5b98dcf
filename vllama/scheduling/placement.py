"""Who fits where, and who is evicted: a pure function of a snapshot of devices and loaded models.

No I/O, no clocks, no randomness: the caller measures (`vllama.devices`), builds a `Snapshot`, asks
`decide()`, and carries out the decision. The same snapshot always gives the same decision, so the
policy is tested without processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from vllama.scheduling.devices import DeviceKind

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class DeviceState:
    id: str
    kind: DeviceKind
    budget: int  # bytes vllama may use here: the operator's memory limit, or the total
    free: int  # measured free now: other tenants' usage is already taken out


@dataclass(frozen=True)
class LoadedModel:
    name: str
    devices: tuple[str, ...]
    footprint: int  # bytes on each of its devices, measured or estimated
    in_flight: int
    pinned: bool
    last_used: float  # monotonic seconds
    starting: bool = False  # a load in progress: its memory is spoken for, it cannot be stopped


@dataclass(frozen=True)
class Request:
    name: str
    kind: DeviceKind
    device_count: int  # GPUs one worker spans; 1 on cpu
    need: int  # bytes per device
    # Only these devices will do: a sleeping worker wakes where its process lives.
    on: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.device_count < 1:
            raise ValueError(f"device_count must be at least 1, got {self.device_count}")
        if self.need < 0:
            raise ValueError(f"need must not be negative, got {self.need}")


@dataclass(frozen=True)
class Snapshot:
    devices: tuple[DeviceState, ...]
    loaded: tuple[LoadedModel, ...]
    max_loaded: int | None


@dataclass(frozen=True)
class Place:
    """Stop the `evict` models (in this order), then start the request on `devices`."""

    devices: tuple[str, ...]
    evict: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """It would fit once the `blocking` models are idle (or started): wait, then decide again."""

    blocking: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Refuse:
    """It cannot fit whatever is unloaded."""

    reason: str


Decision = Place | Wait | Refuse


def decide(snapshot: Snapshot, request: Request) -> Decision:
    devices = sorted(
        (d for d in snapshot.devices if d.kind == request.kind), key=lambda d: _id_key(d.id)
    )
    # The caller asks only for a model that is not loaded; a stale entry must not evict itself.
    loaded = tuple(m for m in snapshot.loaded if m.name != request.name)
    n = request.device_count
    if len(devices) < n:
        have = f"this host has {len(devices)}" if devices else "this host has none"
        return Refuse(f"model {request.name!r} needs {n} {request.kind} device(s); {have}")

    unpinned = [m for m in loaded if not m.pinned]
    must_evict = 0 if snapshot.max_loaded is None else len(loaded) - snapshot.max_loaded + 1
    if must_evict > len(unpinned):
        return Refuse(
            f"model {request.name!r} cannot load: max_loaded is {snapshot.max_loaded} "
            f"and {len(loaded) - len(unpinned)} pinned model(s) are loaded"
        )

    idle = sorted((m for m in unpinned if _evictable(m)), key=_lru_key)
    busy = sorted((m for m in unpinned if not _evictable(m)), key=_lru_key)
    plan = _best_plan(devices, loaded, request, idle, must_evict)
    if plan is not None:
        return Place(plan.devices, tuple(m.name for m in plan.evict))

    # Busy and starting models go last in the pool, so a plan uses them only where idle ones
    # cannot do; those it uses are what the caller waits for.
    plan = _best_plan(devices, loaded, request, idle + busy, must_evict)
    if plan is not None:
        blocking = tuple(m.name for m in plan.evict if not _evictable(m))
        return Wait(
            blocking,
            f"model {request.name!r} ({format_bytes(request.need)} per device) fits once "
            f"{', '.join(repr(b) for b in blocking)} are idle",
        )
    return Refuse(_memory_reason(devices, loaded, request))


def format_bytes(n: int) -> str:
    sign, n = ("-", -n) if n < 0 else ("", n)
    if n >= GiB:
        return f"{sign}{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{sign}{n / MiB:.0f} MiB"
    if n >= KiB:
        return f"{sign}{n / KiB:.0f} KiB"
    return f"{sign}{n} B"


# -- policy internals ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    devices: tuple[str, ...]
    evict: tuple[LoadedModel, ...]


def _evictable(model: LoadedModel) -> bool:
    return not model.pinned and not model.starting and model.in_flight == 0


def _lru_key(model: LoadedModel) -> tuple[float, int, str]:
    return (model.last_used, model.footprint, model.name)


def _id_key(device_id: str) -> tuple[str, int, str]:
    # "gpu:10" sorts after "gpu:2".
    kind, _, index = device_id.partition(":")
    return (kind, int(index), "") if index.isdigit() else (kind, -1, index)


def _available(device: DeviceState, loaded: Iterable[LoadedModel], evicted: Collection[str]) -> int:
    used = freed = 0
    for model in loaded:
        if device.id in model.devices:
            used += model.footprint
            if model.name in evicted:
                freed += model.footprint
    # The budget bounds vllama's own share; only memory measured free is really there. What an
    # evicted model frees comes back in both (the caller waits for it to be measured free).
    return min(device.budget - used + freed, device.free + freed)


def _best_plan(
    devices: Sequence[DeviceState],
    loaded: tuple[LoadedModel, ...],
    request: Request,
    pool: Sequence[LoadedModel],
    must_evict: int,
) -> _Plan | None:
    best: tuple[tuple[object, ...], _Plan] | None = None
    for combo in itertools.combinations(devices, request.device_count):
        if request.on is not None and {d.id for d in combo} != set(request.on):
            continue
        evict = _evictions_for(combo, loaded, request.need, pool, must_evict)
        if evict is None:
            continue
        names = {m.name for m in evict}
        after = [_available(d, loaded, names) for d in combo]
        key = (
            sum(not _evictable(m) for m in evict),
            len(evict),
            # Evict old models rather than recent ones: compare the most recent victim first.
            tuple(sorted((m.last_used for m in evict), reverse=True)),
            sum(m.footprint * len(m.devices) for m in evict),
            tuple(sorted(names)),
            -min(after),
            -sum(after),
            tuple(_id_key(d.id) for d in combo),
        )
        if best is None or key < best[0]:
            best = (key, _Plan(tuple(d.id for d in combo), evict))
    return None if best is None else best[1]


def _evictions_for(
    combo: Sequence[DeviceState],
    loaded: tuple[LoadedModel, ...],
    need: int,
    pool: Sequence[LoadedModel],
    must_evict: int,
) -> tuple[LoadedModel, ...] | None:
    """Models from `pool` (in its order of preference) to stop so the request fits on `combo`."""
    ids = {d.id for d in combo}

    def fits(evicted: Collection[str]) -> bool:
        return all(_available(d, loaded, evicted) >= need for d in combo)

    chosen: list[LoadedModel] = []
    for model in pool:
        if fits({m.name for m in chosen}):
            break
        if ids.intersection(model.devices):
            chosen.append(model)
    if not fits({m.name for m in chosen}):
        return None
    # A later, larger victim can make earlier ones unnecessary: spare them, most recent first.
    # Fitting only gets easier with more evicted, so every model left is needed.
    for model in reversed(list(chosen)):
        rest = [m for m in chosen if m is not model]
        if fits({m.name for m in rest}):
            chosen = rest
    # max_loaded counts models anywhere: top up with the next in line, wherever they are.
    for model in pool:
        if len(chosen) >= must_evict:
            break
        if all(m.name != model.name for m in chosen):
            chosen.append(model)
    if len(chosen) < must_evict:
        return None
    order = {m.name: i for i, m in enumerate(pool)}
    return tuple(sorted(chosen, key=lambda m: order[m.name]))


def _memory_reason(
    devices: Sequence[DeviceState], loaded: tuple[LoadedModel, ...], request: Request
) -> str:
    unpinned = {m.name for m in loaded if not m.pinned}
    reach = sorted(
        ((_available(d, loaded, unpinned), d) for d in devices),
        key=lambda pair: (-pair[0], _id_key(pair[1].id)),
    )
    best, device = reach[request.device_count - 1]
    n = request.device_count
    where = f"{request.kind} memory" if n == 1 else f"{request.kind} memory on {n} devices"
    pinned = sum(m.footprint for m in loaded if m.pinned and device.id in m.devices)
    notes = [f"budget {format_bytes(device.budget)}"]
    if pinned:
        notes.append(f"pinned models hold {format_bytes(pinned)}")
    if best < device.budget - pinned:
        notes.append("other processes hold the rest")
    return (
        f"model {request.name!r} needs {format_bytes(request.need)} per device; the most "
        f"{where} vllama can free is {format_bytes(max(best, 0))} ({', '.join(notes)})"
    )
