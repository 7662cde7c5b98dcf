"""One worker's process group on its own (vllama/engine/process.py): its output and its stop."""

from __future__ import annotations

import os
import sys

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
