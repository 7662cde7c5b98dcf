"""The scheduler's small pure decisions: admission, the config-reload diff, keep-alive expiry."""

from __future__ import annotations

import pytest

from vllama.config.settings import ModelSpec
from vllama.engine.states import WorkerState
from vllama.scheduling.admission import admit
from vllama.scheduling.keepalive import on_expiry
from vllama.scheduling.reload import plan_reload

A, B = ModelSpec(model="org/a"), ModelSpec(model="org/b")


@pytest.mark.parametrize(
    ("ready", "draining", "limited", "permit_free", "queued", "expected"),
    [
        (True, False, False, False, 99, "go"),  # the hot path never looks at the queue
        (True, False, True, True, 99, "queue"),  # a free permit passes through at once
        (True, False, True, False, 1, "queue"),
        (True, False, True, False, 2, "refuse"),
        (True, True, False, False, 1, "queue"),  # draining for another load: wait its turn
        (True, True, False, False, 2, "refuse"),
        (False, False, False, False, 1, "queue"),
        (False, False, False, False, 2, "refuse"),
    ],
)
def test_admission(
    ready: bool, draining: bool, limited: bool, permit_free: bool, queued: int, expected: str
) -> None:
    decision = admit(
        ready=ready,
        draining=draining,
        limited=limited,
        permit_free=permit_free,
        queued=queued,
        max_queue=2,
    )
    assert decision == expected


def test_reload_diff() -> None:
    running = {"a": A, "b": B, "disk": ModelSpec(model="/models/disk"), "f": A}
    plan = plan_reload(
        running,
        configured_before=["a", "b", "f", "gone-unloaded"],
        configured_now={"a": A, "b": A, "f": A, "new": B, "disk": B},
        fatal=["f", "a-not-configured"],
    )
    assert plan.added == ("new",)
    assert plan.changed == ("b", "disk")  # a model found on disk, now configured differently
    assert plan.removed == ()
    assert plan.cleared == ("f",)
    plan = plan_reload(running, configured_before=["a", "b"], configured_now={"a": A}, fatal=[])
    assert (plan.added, plan.changed, plan.removed, plan.cleared) == ((), (), ("b",), ())
    retuned = A.model_copy(update={"keep_alive": 60.0, "pinned": True, "aliases": ("x",)})
    plan = plan_reload(running, configured_before=["a"], configured_now={"a": retuned}, fatal=[])
    assert (plan.changed, plan.retuned) == ((), ("a",))


@pytest.mark.parametrize(
    ("in_flight", "waiting", "state", "sleep_when_idle", "sleeping", "expected"),
    [
        (0, 0, WorkerState.READY, False, False, "unload"),
        (0, 0, WorkerState.READY, True, False, "sleep"),
        (0, 0, WorkerState.READY, True, True, "nothing"),  # a sleep is already under way
        (1, 0, WorkerState.READY, False, False, "nothing"),
        (0, 1, WorkerState.READY, False, False, "nothing"),
        (0, 0, WorkerState.STARTING, False, False, "nothing"),
        (0, 0, WorkerState.SLEEPING, True, False, "unload"),  # asleep a keep_alive: stopped
    ],
)
def test_keep_alive_expiry(
    in_flight: int, waiting: int, state: WorkerState, sleep_when_idle: bool, sleeping: bool,
    expected: str,
) -> None:  # fmt: skip
    action = on_expiry(
        in_flight=in_flight,
        waiting=waiting,
        state=state,
        sleep_when_idle=sleep_when_idle,
        sleeping=sleeping,
    )
    assert action == expected
