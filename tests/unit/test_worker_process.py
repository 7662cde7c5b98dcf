"""One worker's process group on its own (vllama/engine/process.py): its output and its stop."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import psutil
import pytest

from tests.component.fakes import eventually
from vllama.engine.process import OUTPUT_LINE_LIMIT, WorkerProcess


async def test_a_line_over_the_limit_is_cut_and_the_output_goes_on() -> None:
    # vLLM prints whole config dumps on one line: one longer than the reader's limit must not
    # end the reading (the tail, a crash's only explanation, would stop there).
    script = (
        f"import sys; sys.stdout.write('x' * {2 * OUTPUT_LINE_LIMIT} + '\\n'); "
        "print('after the long line', flush=True)"
    )
    seen: list[str] = []
    worker = await WorkerProcess.spawn(
        [sys.executable, "-c", script], dict(os.environ), 50, seen.append
    )
    assert await worker.wait() == 0
    report = await worker.stop(grace=5)
    assert report.survivors == ()
    tail = worker.tail()
    assert tail[-1] == "after the long line" and seen[-1] == "after the long line"
    assert all(len(line) <= OUTPUT_LINE_LIMIT for line in tail)
    assert any(line.startswith("x") for line in tail)


async def test_a_stop_reaches_a_descendant_that_left_the_group() -> None:
    # vLLM's processes may start their own sessions; the stop remembers the leader's tree first
    # and signals those too, else one outlives the worker.
    script = (
        "import subprocess, time; p = subprocess.Popen(['sleep', '60'], start_new_session=True); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    seen: list[str] = []
    worker = await WorkerProcess.spawn(
        [sys.executable, "-c", script], dict(os.environ), 50, seen.append
    )
    await eventually(lambda: seen, within=30, what="the runaway's pid", every=0.05)
    runaway = int(seen[0])
    try:
        assert os.getpgid(runaway) != worker.pgid  # it did leave the group
        report = await worker.stop(grace=5)
        assert report.survivors == ()
        assert not _alive(runaway)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(runaway, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def test_a_spare_reads_its_order_on_stdin_and_others_take_no_input() -> None:
    echo = "import sys; print('order:', sys.stdin.read().strip(), flush=True)"
    spare = await WorkerProcess.spawn(
        [sys.executable, "-c", echo], dict(os.environ), takes_input=True
    )
    await spare.send(b"serve m\n")
    assert await spare.wait() == 0
    await spare.stop(grace=5)
    assert spare.tail() == ["order: serve m"]
    plain = await WorkerProcess.spawn([sys.executable, "-c", echo], dict(os.environ))
    with pytest.raises(RuntimeError, match="not started to take input"):
        await plain.send(b"serve m\n")
    assert await plain.wait() == 0
    await plain.stop(grace=5)
    assert plain.tail() == ["order:"]  # its stdin is empty
