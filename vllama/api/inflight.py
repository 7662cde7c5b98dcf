"""The worker answers being relayed right now, so that a shutdown whose `drain_timeout` runs out
can end each with an error its client reads (an in-band event, a last NDJSON line, a 503) rather
than a connection cut without a word."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from vllama.api.upstream import UpstreamAnswer

A = TypeVar("A", bound=UpstreamAnswer)


class InFlight:
    def __init__(self) -> None:
        self._answers: set[UpstreamAnswer] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # handlers waiting for a worker's headers
        self._cut_tasks: set[asyncio.Task[Any]] = set()  # of those, the ones the cut cancelled
        self.cut_reason: str | None = None  # set once the drain ran out

    async def unless_cut(self, pending: Awaitable[A]) -> A | None:
        """The worker's answer (its headers), or None when the drain runs out first: a whole
        (non-streamed) answer sends nothing until it is done, so there is no answer to close.

        Awaited in the handler's own task, which the cut cancels (closing the connection, so vLLM
        aborts the request), as `asyncio.timeout` does: no task or future of its own per request.
        """
        if self.cut_reason is not None:
            asyncio.ensure_future(pending).cancel()  # never sent (awaiting it would send it)
            return None
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._waiting.add(task)
        try:
            return await pending
        except asyncio.CancelledError:
            # The cut's own cancellation ends here; any other (the client went away) goes on.
            if task in self._cut_tasks and task.uncancel() <= cancelling:
                return None
            raise
        finally:
            self._waiting.discard(task)
            self._cut_tasks.discard(task)

    @contextlib.contextmanager
    def track(self, answer: UpstreamAnswer) -> Iterator[None]:
        self._answers.add(answer)
        try:
            yield
        finally:
            self._answers.discard(answer)

    def __len__(self) -> int:
        """Answers being relayed plus handlers still waiting for a worker's headers."""
        return len(self._answers) + len(self._waiting)

    def cut(self, reason: str) -> int:
        """Close every answer being relayed (vLLM aborts each) and cancel every wait for one;
        the relays see a broken read and report `reason`. Returns how many answers were cut."""
        self.cut_reason = reason
        for task in self._waiting:
            self._cut_tasks.add(task)
            task.cancel()
        answers = list(self._answers)
        for answer in answers:
            answer.close()
        return len(answers)
