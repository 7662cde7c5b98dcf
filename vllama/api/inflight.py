"""The worker answers being relayed right now, so that a shutdown whose `drain_timeout` runs out
can end each with an error its client reads (an in-band event, a last NDJSON line, a 503) rather
than a connection cut without a word."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator

import aiohttp


class InFlight:
    def __init__(self) -> None:
        self._answers: set[aiohttp.ClientResponse] = set()
        self._cut = asyncio.Event()
        self.cut_reason: str | None = None  # set once the drain ran out

    async def unless_cut(
        self, pending: Awaitable[aiohttp.ClientResponse]
    ) -> aiohttp.ClientResponse | None:
        """The worker's answer (its headers), or None when the drain runs out first: a whole
        (non-streamed) answer sends nothing until it is done, so there is no answer to close."""
        answer = asyncio.ensure_future(pending)
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait((answer, cut), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client went away: so does the request
            answer.cancel()
            raise
        finally:
            cut.cancel()
        if answer.done():
            return answer.result()  # or its exception, as awaiting it would raise
        answer.cancel()  # closes the connection: vLLM aborts the request
        await asyncio.gather(answer, return_exceptions=True)
        if not answer.cancelled() and answer.exception() is None:
            answer.result().close()  # it arrived as it was cancelled
        return None

    @contextlib.contextmanager
    def track(self, answer: aiohttp.ClientResponse) -> Iterator[None]:
        self._answers.add(answer)
        try:
            yield
        finally:
            self._answers.discard(answer)

    def cut(self, reason: str) -> int:
        """Close every answer being relayed (vLLM aborts each); the relays see a broken read and
        report `reason`. Returns how many were cut."""
        self.cut_reason = reason
        self._cut.set()
        answers = list(self._answers)
        for answer in answers:
            answer.close()
        return len(answers)
