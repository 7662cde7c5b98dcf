from __future__ import annotations

import pytest

from vllama.scheduling.restarts import (
    RestartPolicy,
    count_failure,
    fatal_retry_delay,
    is_crash_loop,
    restart_delay,
)

POLICY = RestartPolicy(backoff=1.0, backoff_max=10.0, limit=3, window=60.0)


def test_fast_failures_count_up_and_a_long_run_starts_over() -> None:
    assert count_failure(0, None, POLICY) == 1  # never got ready: fast
    assert count_failure(1, 5.0, POLICY) == 2  # died 5 s after it was ready: fast
    assert count_failure(2, 3600.0, POLICY) == 1  # ran an hour: a new count


def test_the_limit_marks_a_crash_loop() -> None:
    assert not is_crash_loop(2, POLICY)
    assert is_crash_loop(3, POLICY)


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]
)
def test_backoff_doubles_up_to_the_max(failures: int, delay: float) -> None:
    assert restart_delay(failures, POLICY) == delay


def test_a_fatal_model_is_retried_later_each_time_up_to_a_cap() -> None:
    policy = RestartPolicy(backoff=1, backoff_max=60, limit=3, window=5)
    assert [fatal_retry_delay(n, policy) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
