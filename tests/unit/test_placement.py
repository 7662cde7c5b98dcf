from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from vllama.scheduling.devices import DeviceKind
from vllama.scheduling.placement import (
    DeviceState,
    GiB,
    LoadedModel,
    Place,
    Refuse,
    Request,
    Snapshot,
    Wait,
    decide,
    format_bytes,
)

G = GiB


def model(
    name: str,
    last_used: float,
    footprint: int = 25 * G,
    devices: tuple[str, ...] = ("gpu:0",),
    in_flight: int = 0,
    pinned: bool = False,
    starting: bool = False,
) -> LoadedModel:
    return LoadedModel(name, devices, footprint, in_flight, pinned, last_used, starting)


def snap(
    loaded: Iterable[LoadedModel],
    devices: Iterable[str] = ("gpu:0",),
    total: int = 80 * G,
    other: Mapping[str, int] | None = None,
    max_loaded: int | None = None,
) -> Snapshot:
    """Devices whose measured free memory is what the models (and other tenants) leave."""
    loaded = tuple(loaded)
    states = []
    for d in devices:
        used = sum(m.footprint for m in loaded if d in m.devices) + (other or {}).get(d, 0)
        kind: DeviceKind = "cpu" if d == "cpu" else "gpu"
        states.append(DeviceState(d, kind, total, max(total - used, 0)))
    return Snapshot(tuple(states), loaded, max_loaded)


def req(name: str = "new", need: int = 20 * G, count: int = 1, kind: DeviceKind = "gpu") -> Request:
    return Request(name, kind, count, need)


THREE = [model("a", 1), model("b", 2), model("c", 3)]  # 75 of 80 GiB used


def test_fourth_model_evicts_the_least_recently_used() -> None:
    assert decide(snap(THREE), req()) == Place(("gpu:0",), ("a",))


def test_pinned_model_stays_and_the_next_lru_goes() -> None:
    loaded = [model("a", 1, pinned=True), model("b", 2), model("c", 3)]
    assert decide(snap(loaded), req()) == Place(("gpu:0",), ("b",))


def test_busy_model_is_skipped_for_an_idle_one() -> None:
    loaded = [model("a", 1, in_flight=2), model("b", 2), model("c", 3)]
    assert decide(snap(loaded), req()) == Place(("gpu:0",), ("b",))


def test_wait_names_the_busy_model_that_stands_in_the_way() -> None:
    loaded = [model("a", 1, in_flight=1), model("b", 2, pinned=True), model("c", 3, pinned=True)]
    decision = decide(snap(loaded), req())
    assert isinstance(decision, Wait)
    assert decision.blocking == ("a",)


def test_wait_names_only_the_busy_one_when_idle_ones_go_too() -> None:
    loaded = [model("a", 1, in_flight=1), model("b", 2), model("c", 3, pinned=True)]
    decision = decide(snap(loaded), req(need=40 * G))
    assert isinstance(decision, Wait)
    assert decision.blocking == ("a",)


def test_starting_model_is_not_evicted_but_waited_for() -> None:
    loaded = [model("a", 1, starting=True), model("b", 2), model("c", 3)]
    assert decide(snap(loaded), req()) == Place(("gpu:0",), ("b",))
    only = [model("a", 1, starting=True), model("b", 2, pinned=True)]
    decision = decide(snap(only, total=55 * G), req())
    assert isinstance(decision, Wait)
    assert decision.blocking == ("a",)


def test_fewest_evictions_beat_strict_lru() -> None:
    loaded = [model("small", 1, footprint=5 * G), model("big", 2, footprint=70 * G)]
    assert decide(snap(loaded), req(need=40 * G)) == Place(("gpu:0",), ("big",))


def test_tensor_parallel_request_uses_two_gpus_and_evicts_on_both() -> None:
    loaded = [
        model("a", 1, footprint=50 * G, devices=("gpu:0",)),
        model("b", 2, footprint=50 * G, devices=("gpu:1",)),
        model("c", 3, footprint=30 * G, devices=("gpu:1",)),
    ]
    decision = decide(snap(loaded, ("gpu:0", "gpu:1")), req(need=40 * G, count=2))
    assert decision == Place(("gpu:0", "gpu:1"), ("a", "b"))


def test_evicting_a_tensor_parallel_model_frees_every_gpu_it_spans() -> None:
    loaded = [
        model("tp", 1, footprint=60 * G, devices=("gpu:0", "gpu:1")),
        model("small", 2, footprint=10 * G, devices=("gpu:0",)),
    ]
    decision = decide(snap(loaded, ("gpu:0", "gpu:1")), req(need=50 * G, count=2))
    assert decision == Place(("gpu:0", "gpu:1"), ("tp",))


def test_max_loaded_forces_an_eviction_with_memory_to_spare() -> None:
    loaded = [model(n, t, footprint=1 * G) for n, t in (("a", 1), ("b", 2), ("c", 3))]
    assert decide(snap(loaded, max_loaded=3), req()) == Place(("gpu:0",), ("a",))
    assert decide(snap(loaded, max_loaded=4), req()) == Place(("gpu:0",), ())


def test_max_loaded_with_only_pinned_models_is_refused() -> None:
    loaded = [model("a", 1, footprint=G, pinned=True)]
    decision = decide(snap(loaded, max_loaded=1), req())
    assert isinstance(decision, Refuse)
    assert "max_loaded" in decision.reason


def test_need_above_every_budget_is_refused_with_bytes() -> None:
    decision = decide(snap(THREE, ("gpu:0", "gpu:1")), req(need=100 * G))
    assert isinstance(decision, Refuse)
    assert "100.0 GiB" in decision.reason
    assert "80.0 GiB" in decision.reason


def test_a_refused_multi_device_request_names_what_its_devices_can_all_give() -> None:
    # Two GPUs are needed: the second-best GPU bounds what the pair can free, not the best one.
    pinned = [
        model("p", 1, footprint=10 * G, devices=("gpu:0",), pinned=True),
        model("q", 2, footprint=30 * G, devices=("gpu:1",), pinned=True),
    ]
    decision = decide(snap(pinned, ("gpu:0", "gpu:1")), req(need=60 * G, count=2))
    assert isinstance(decision, Refuse)
    assert "can free is 50.0 GiB" in decision.reason and "on 2 devices" in decision.reason


def test_refusal_counts_pinned_models() -> None:
    loaded = [model("p", 1, footprint=30 * G, pinned=True)]
    decision = decide(snap(loaded), req(need=60 * G))
    assert isinstance(decision, Refuse)
    assert "50.0 GiB" in decision.reason
    assert "pinned" in decision.reason


def test_other_tenant_limits_placement() -> None:
    # Budget alone says gpu:0 is emptier; measured free says gpu:1.
    loaded = [model("a", 1, footprint=30 * G, devices=("gpu:1",))]
    s = snap(loaded, ("gpu:0", "gpu:1"), other={"gpu:0": 60 * G})
    assert decide(s, req(need=40 * G)) == Place(("gpu:1",), ())
    # The budget would fit it without evicting; measured free would not.
    s = snap([model("a", 1, footprint=20 * G)], other={"gpu:0": 50 * G})
    assert decide(s, req(need=25 * G)) == Place(("gpu:0",), ("a",))
    decision = decide(snap([], other={"gpu:0": 50 * G}), req(need=40 * G))
    assert isinstance(decision, Refuse)
    assert "other processes" in decision.reason


def test_cpu_request_considers_only_the_cpu_device() -> None:
    loaded = [
        model("g", 1, devices=("gpu:0",)),
        model("c1", 2, footprint=10 * G, devices=("cpu",)),
        model("c2", 3, footprint=10 * G, devices=("cpu",)),
    ]
    s = snap(loaded, ("cpu", "gpu:0"), total=24 * G)
    assert decide(s, req(need=8 * G, kind="cpu")) == Place(("cpu",), ("c1",))
    assert isinstance(decide(s, req(need=8 * G, count=2, kind="cpu")), Refuse)


def test_no_eviction_prefers_most_available_then_lowest_id() -> None:
    devices = [f"gpu:{i}" for i in (10, 2, 1)]
    assert decide(snap([], devices), req()) == Place(("gpu:1",), ())
    loaded = [model("a", 1, devices=("gpu:1",))]
    assert decide(snap(loaded, devices), req()) == Place(("gpu:2",), ())


def test_requested_model_in_loaded_is_ignored() -> None:
    assert decide(snap([*THREE, model("new", 0)]), req()) == Place(("gpu:0",), ("a",))


def test_too_few_devices_is_refused() -> None:
    decision = decide(snap([], ("cpu",)), req())
    assert isinstance(decision, Refuse)
    assert "gpu" in decision.reason


def test_helpers() -> None:
    assert format_bytes(12 * G) == "12.0 GiB"
    assert format_bytes(512 << 20) == "512 MiB"
    assert format_bytes(3) == "3 B"
    assert (format_bytes(1023), format_bytes(1024), format_bytes(3 << 10)) == (
        "1023 B",
        "1 KiB",
        "3 KiB",
    )
    assert format_bytes(1 << 20) == "1 MiB"
    assert format_bytes(-2 * G) == "-2.0 GiB"  # a device over its budget


# -- properties ------------------------------------------------------------------------------


def available(s: Snapshot, device: str, loaded: Iterable[LoadedModel], gone: set[str]) -> int:
    state = next(d for d in s.devices if d.id == device)
    on = [m for m in loaded if device in m.devices]
    used = sum(m.footprint for m in on)
    freed = sum(m.footprint for m in on if m.name in gone)
    return min(state.budget - used + freed, state.free + freed)


def fits(s: Snapshot, r: Request, devices: Iterable[str], gone: set[str]) -> bool:
    loaded = [m for m in s.loaded if m.name != r.name]
    count_ok = s.max_loaded is None or len(loaded) - len(gone) < s.max_loaded
    return count_ok and all(available(s, d, loaded, gone) >= r.need for d in devices)


def possible(s: Snapshot, r: Request, gone: set[str]) -> bool:
    ids = [d.id for d in s.devices if d.kind == r.kind]
    return any(fits(s, r, c, gone) for c in itertools.combinations(ids, r.device_count))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Snapshot, Request]:
    gpus = [f"gpu:{i}" for i in range(draw(st.integers(0, 3)))]
    ids = ["cpu", *gpus]
    models = []
    for i in range(draw(st.integers(0, 7))):
        kind_ids = ["cpu"] if not gpus or draw(st.booleans()) else gpus
        devices = draw(st.lists(st.sampled_from(kind_ids), min_size=1, max_size=2, unique=True))
        models.append(
            LoadedModel(
                name=f"m{i}",
                devices=tuple(devices),
                footprint=draw(st.integers(0, 40)) * G,
                in_flight=draw(st.sampled_from([0, 0, 0, 1])),
                pinned=draw(st.sampled_from([False, False, False, True])),
                last_used=draw(st.integers(0, 5)),
                starting=draw(st.sampled_from([False, False, False, True])),
            )
        )
    states = []
    for d in ids:
        total = draw(st.sampled_from([24, 48, 80])) * G
        used = sum(m.footprint for m in models if d in m.devices)
        other = draw(st.integers(0, 10)) * G
        budget = draw(st.sampled_from([total, total // 2]))
        device_kind: DeviceKind = "cpu" if d == "cpu" else "gpu"
        states.append(DeviceState(d, device_kind, budget, max(total - used - other, 0)))
    max_loaded = draw(st.none() | st.integers(1, 5))
    kind: DeviceKind = "gpu" if draw(st.booleans()) else "cpu"
    count = 1 if kind == "cpu" else draw(st.integers(1, 3))
    name = draw(st.sampled_from(["new", "m0"]))
    request = Request(name, kind, count, draw(st.integers(0, 40)) * G)
    return Snapshot(tuple(states), tuple(models), max_loaded), request


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_decide_properties(case: tuple[Snapshot, Request]) -> None:
    s, r = case
    decision = decide(s, r)
    by_name = {m.name: m for m in s.loaded}
    unpinned = {m.name for m in s.loaded if not m.pinned and m.name != r.name}

    idle = {n for n in unpinned if not by_name[n].starting and by_name[n].in_flight == 0}
    # Placed exactly when idle models suffice; refused exactly when only pinned ones would.
    assert isinstance(decision, Place) == possible(s, r, idle)
    assert isinstance(decision, Refuse) == (not possible(s, r, unpinned))

    if isinstance(decision, Place):
        kinds = {d.id: d.kind for d in s.devices}
        assert len(set(decision.devices)) == len(decision.devices) == r.device_count
        assert all(kinds[d] == r.kind for d in decision.devices)
        assert len(set(decision.evict)) == len(decision.evict)
        assert r.name not in decision.evict
        for name in decision.evict:
            m = by_name[name]
            assert not m.pinned and not m.starting and m.in_flight == 0
        gone = set(decision.evict)
        assert fits(s, r, decision.devices, gone)
        # Nothing evicted in vain: every victim (the last one included) is needed.
        for name in decision.evict:
            assert not fits(s, r, decision.devices, gone - {name})
        if not decision.evict:
            assert possible(s, r, set())
        if possible(s, r, set()):
            assert decision.evict == ()

    if isinstance(decision, Wait):
        assert decision.blocking
        for name in decision.blocking:
            m = by_name[name]
            assert not m.pinned and (m.starting or m.in_flight > 0)
        assert r.name not in decision.blocking
        assert possible(s, r, idle | set(decision.blocking))

    # Deterministic, whatever order the snapshot lists things in.
    shuffled = dataclasses.replace(s, devices=s.devices[::-1], loaded=s.loaded[::-1])
    assert decide(shuffled, r) == decision
