"""Crash-loop policy, pure: how a failure counts, when to restart, when to give up.

A failure soon after a worker's start (within `window`) is "fast"; fast failures in a row grow
the restart delay exponentially, and `limit` of them mark the model FATAL until an explicit load
or a config reload. A worker that ran longer than `window` before failing starts the count anew.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    backoff: float  # seconds before the restart after the first fast failure
    backoff_max: float
    limit: int  # fast failures in a row that mark the model FATAL
    window: float  # a failure before READY or within this many seconds after it is fast
    fatal_backoff: float = 10.0  # a FATAL model is retried on its own after this...
    fatal_backoff_max: float = 300.0  # ...doubling per retry up to this (CrashLoopBackOff)


def count_failure(previous: int, up_for: float | None, policy: RestartPolicy) -> int:
    """Consecutive fast failures after one more failure; `up_for` None = it never got ready."""
    fast = up_for is None or up_for < policy.window
    return previous + 1 if fast else 1


def is_crash_loop(failures: int, policy: RestartPolicy) -> bool:
    return failures >= policy.limit


def restart_delay(failures: int, policy: RestartPolicy) -> float:
    """Seconds to wait before the next start: 0, then backoff, 2 x backoff, ... up to the max."""
    if failures <= 0:
        return 0.0
    return float(min(policy.backoff * 2 ** (failures - 1), policy.backoff_max))


def fatal_retry_delay(retries: int, policy: RestartPolicy) -> float:
    """Seconds a FATAL model waits before vllama retries it on its own (`retries` so far)."""
    return float(min(policy.fatal_backoff * 2 ** max(retries, 0), policy.fatal_backoff_max))
