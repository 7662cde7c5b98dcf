from __future__ import annotations

import math

import pytest

from vllama.config.settings import ModelSpec
from vllama.config.units import DurationError, parse_duration
from vllama.engine.argv import build_argv, build_env
from vllama.engine.states import (
    ALLOWED_TRANSITIONS,
    IllegalTransition,
    WorkerState,
    check_transition,
)

S = WorkerState


# The worker's intended lifecycle, written out independently of ALLOWED_TRANSITIONS: each edge
# with the event that takes it (vllama/engine/worker.py). The table must allow exactly these, so a
# wrong entry in it (one too many or one missing) fails below.
LIFECYCLE: dict[tuple[WorkerState, WorkerState], str] = {
    (S.STOPPED, S.STARTING): "a request or a load starts the worker",
    (S.STARTING, S.READY): "its health check passed",
    (S.STARTING, S.FAILED): "it exited, stalled or could not bind during its start",
    (S.STARTING, S.STOPPING): "its load was cancelled (shutdown, eviction)",
    (S.READY, S.STOPPING): "keep_alive expired, evicted, unloaded or shutting down",
    (S.READY, S.FAILED): "it exited, or its engine died, while serving",
    (S.READY, S.SLEEPING): "idle for keep_alive with sleep_when_idle (GPU sleep mode)",
    (S.SLEEPING, S.READY): "woken up by a request",
    (S.SLEEPING, S.STOPPING): "a sleeping model evicted or unloaded",
    (S.SLEEPING, S.FAILED): "it exited while asleep, or failed to wake",
    (S.STOPPING, S.STOPPED): "its process tree is confirmed gone",
    (S.STOPPING, S.FAILED): "reserved: a stop that breaks (no code path takes it today)",
    (S.FAILED, S.STARTING): "the next request starts it again",
    (S.FAILED, S.BACKOFF): "a fast failure: wait restart_backoff first",
    (S.FAILED, S.FATAL): "crash_loop_failures fast failures in a row",
    (S.FAILED, S.STOPPED): "a failed model stopped (unload, reload, shutdown)",
    (S.BACKOFF, S.STARTING): "its backoff is over",
    (S.BACKOFF, S.STOPPED): "stopped while backing off",
    (S.FATAL, S.STARTING): "an explicit load, a reload or vllama's own retry",
    (S.FATAL, S.STOPPED): "a model marked failed is stopped",
}
EVERY_PAIR = [(current, target) for current in WorkerState for target in WorkerState]


@pytest.mark.parametrize(("current", "target"), EVERY_PAIR)
def test_the_table_allows_exactly_the_lifecycle(current: WorkerState, target: WorkerState) -> None:
    if (current, target) in LIFECYCLE:
        check_transition("m", current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {target.value}"):
            check_transition("m", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.STOPPED, S.READY),  # never ready without a start
        (S.STOPPED, S.STOPPING),
        (S.READY, S.STARTING),  # a running worker is not started twice
        (S.STOPPING, S.READY),
        (S.FAILED, S.READY),
        (S.FATAL, S.READY),
        (S.BACKOFF, S.READY),
        (S.SLEEPING, S.STARTING),  # a sleeping worker is woken, never started anew
        (S.READY, S.READY),  # no state changes to itself
    ],
)
def test_refused_transitions(current: WorkerState, target: WorkerState) -> None:
    assert (current, target) not in LIFECYCLE
    with pytest.raises(IllegalTransition, match=f"{current.value} -> {target.value}"):
        check_transition("m", current, target)


def test_every_state_has_a_way_out() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(WorkerState)
    assert all(ALLOWED_TRANSITIONS[state] for state in WorkerState)


def test_argv_is_a_list_of_items_never_shell_text() -> None:
    spec = ModelSpec(model="/models/my model; rm -rf /", args=("--dtype", "float32"))
    argv = build_argv(["py", "-m", "srv"], "m:latest", spec, "127.0.0.1", 41000)
    assert argv == [
        "py", "-m", "srv",
        "--model", "/models/my model; rm -rf /",
        "--served-model-name", "m:latest",
        "--host", "127.0.0.1",
        "--port", "41000",
        "--disable-uvicorn-access-log",
        "--dtype", "float32",
    ]  # fmt: skip


def test_env_drops_systemd_notify_and_adds_model_env() -> None:
    spec = ModelSpec(model="a/b", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    env = build_env({"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1"}, spec)
    assert env["PATH"] == "/bin"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env


def test_no_key_of_vllamas_reaches_a_worker() -> None:
    spec = ModelSpec(model="a/b")
    keys = '[{"key": "' + "p" * 32 + '", "scope": "inference"}]'
    base = {"PATH": "/bin", "VLLAMA_API_KEY": "k" * 32, "VLLAMA_API_KEYS": keys, "HF_TOKEN": "hf_x"}
    env = build_env(base, spec)
    assert "VLLAMA_API_KEY" not in env and "VLLAMA_API_KEYS" not in env
    assert env["HF_TOKEN"] == "hf_x"  # vLLM itself needs the Hub token for gated repos


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (1.5, 1.5),
        ("300", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("0", 0.0),
        (0, 0.0),
        (-1, math.inf),
        ("-1m", math.inf),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m", "5x", True, None, [1], "nan"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(value)


def test_workers_never_report_usage_unless_the_operator_says_so() -> None:
    env = build_env({"PATH": "/bin"}, ModelSpec(model="a/b"))
    assert (env["VLLM_NO_USAGE_STATS"], env["DO_NOT_TRACK"]) == ("1", "1")
    own = build_env({"DO_NOT_TRACK": "0"}, ModelSpec(model="a/b", env={"VLLM_NO_USAGE_STATS": "0"}))
    assert (own["VLLM_NO_USAGE_STATS"], own["DO_NOT_TRACK"]) == ("0", "0")


def test_durations_past_any_timer_mean_forever() -> None:
    assert parse_duration(10**400) == math.inf
    assert parse_duration(1e300) == math.inf
    assert parse_duration("-5m") == math.inf
    assert parse_duration(3600) == 3600.0
