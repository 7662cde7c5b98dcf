"""The next daemon stops what a killed one left, whatever the wall clock did meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vllama.engine import leftovers
from vllama.engine.leftovers import Leftovers, boot_id, start_ticks, ticks_since_boot


def _orphan_group() -> subprocess.Popen[bytes]:
    """A process group standing in for a worker tree a killed daemon left behind."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def _gone(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("step", [-3600.0, 0.0, 3600.0])
def test_a_leftover_group_is_stopped_after_the_wall_clock_is_stepped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    orphan = _orphan_group()
    try:
        path = tmp_path / "workers-11434.json"
        Leftovers(path).record(orphan.pid)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + step)  # NTP or `date -s` stepped it
        stopped = Leftovers(path).reap(wait=5)
        assert stopped == [orphan.pid]
        assert _gone(orphan)
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)
            orphan.wait()


@pytest.mark.parametrize(
    "offset",
    [
        # The recorded leader started later than the process now holding its number.
        1,
        # The recorded leader died and the number went to a new process started since: a start
        # between the record and now is no proof of ours. Linux hands out a number only once no
        # group uses it, so a live process under it that is not the recorded leader is a stranger.
        -100,
    ],
)
def test_a_stranger_that_reused_the_group_number_is_left_alone(tmp_path: Path, offset: int) -> None:
    stranger = _orphan_group()
    try:
        path = tmp_path / "workers-11434.json"
        ticks = start_ticks(stranger.pid)
        assert ticks is not None and ticks + offset > 0
        record = {
            "boot_id": boot_id(),
            "groups": [{"pgid": stranger.pid, "started": ticks + offset}],
        }
        path.write_text(json.dumps(record))
        assert Leftovers(path).reap(wait=1) == []
        assert stranger.poll() is None and psutil.pid_exists(stranger.pid)
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


def test_a_record_from_before_a_reboot_stops_nothing(tmp_path: Path) -> None:
    stranger = _orphan_group()
    try:
        path = tmp_path / "workers-11434.json"
        Leftovers(path).record(stranger.pid)
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "boot_id": "another-boot"}))
        assert Leftovers(path).reap(wait=1) == []
        assert stranger.poll() is None
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


def test_start_ticks_of_a_live_and_a_missing_process() -> None:
    mine = start_ticks(os.getpid())
    assert mine is not None and 0 < mine <= ticks_since_boot()
    assert start_ticks(2**22 + 12345) is None  # no such process


def test_a_process_started_after_the_reap_began_is_not_a_leftover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what started between the record and this daemon's start can be a previous daemon's.
    group = _orphan_group()
    try:
        path = tmp_path / "workers-11434.json"
        Leftovers(path).record(group.pid)
        ticks = start_ticks(group.pid)
        assert ticks is not None
        monkeypatch.setattr(leftovers, "ticks_since_boot", lambda: ticks - 1)
        assert Leftovers(path).reap(wait=1) == []
        assert group.poll() is None
    finally:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait()


def test_a_leftover_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    # A wedged engine ignores SIGTERM: the reap must go on to SIGKILL after its wait.
    ignore = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True)"
    )
    stubborn = subprocess.Popen(
        [sys.executable, "-c", ignore + "; time.sleep(60)"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline()  # SIGTERM is ignored
        path = tmp_path / "workers-11434.json"
        Leftovers(path).record(stubborn.pid)
        assert Leftovers(path).reap(wait=1) == [stubborn.pid]
        assert _gone(stubborn)
    finally:
        if stubborn.poll() is None:
            os.killpg(stubborn.pid, signal.SIGKILL)
            stubborn.wait()
