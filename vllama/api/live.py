"""What the status page's event streams share: the recent requests, when each model entered its
state, and the streams to tell.

Kept free of HTTP and of the app's keys so the access log (`observe`) and the scheduler's events
can feed it without an import cycle; `status_page` turns it into Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

from vllama.scheduling.events import Event, StateChanged

RECENT = 100  # finished requests kept for a page that connects later
_BACKLOG = 256  # notices a slow stream may fall behind by before it misses some

# ("status", None): the scheduler moved; ("request", entry): one finished; ("end", None): stop.
Notice = tuple[str, dict[str, Any] | None]
T = TypeVar("T")


class Live:
    def __init__(self, size: int = RECENT) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=size)
        self.since: dict[str, float] = {}  # model -> wall-clock time it entered its state
        self.closed = False
        self.moves = 0  # scheduler events so far: a snapshot taken before the last is stale
        self._streams: set[asyncio.Queue[Notice]] = set()

    def listen(self, event: Event) -> None:
        """A scheduler listener: every event is worth a fresh snapshot to the pages."""
        if isinstance(event, StateChanged):
            self.since[event.model] = time.time()
        self.moves += 1
        self._notify(("status", None))

    def record(self, entry: dict[str, Any]) -> None:
        """A finished request (from the access log's hook)."""
        self.recent.append(entry)
        self._notify(("request", entry))

    @contextlib.contextmanager
    def stream(self) -> Iterator[asyncio.Queue[Notice]]:
        notices: asyncio.Queue[Notice] = asyncio.Queue(maxsize=_BACKLOG)
        self._streams.add(notices)
        try:
            yield notices
        finally:
            self._streams.discard(notices)

    def close(self) -> None:
        """Shutdown: every stream ends now, so none holds the drain for `drain_timeout`."""
        self.closed = True
        for notices in self._streams:
            with contextlib.suppress(asyncio.QueueFull):
                notices.put_nowait(("end", None))

    def _notify(self, notice: Notice) -> None:
        for notices in self._streams:
            # A stream this far behind is not being read; it gets a whole snapshot at its next
            # tick anyway, so dropping a notice loses at most one request line.
            with contextlib.suppress(asyncio.QueueFull):
                notices.put_nowait(notice)


class Shared(Generic[T]):
    """One measurement for every open page: a caller within `fresh` seconds of the last one,
    with nothing moved since (`moves`), gets that one's result instead of measuring again."""

    def __init__(
        self,
        measure: Callable[[], Awaitable[T]],
        fresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._measure, self._fresh, self._clock = measure, fresh, clock
        self._last: tuple[int, float, asyncio.Future[T]] | None = None

    async def get(self, moves: int) -> T:
        last = self._last
        if last is None or not self._usable(last, moves):
            last = (moves, self._clock(), asyncio.ensure_future(self._measure()))
            self._last = last
        # Shielded: one page going away must not cancel the measurement the others wait for.
        return await asyncio.shield(last[2])

    def _usable(self, last: tuple[int, float, asyncio.Future[T]], moves: int) -> bool:
        taken_at_moves, taken_at, result = last
        failed = result.done() and (result.cancelled() or result.exception() is not None)
        return taken_at_moves == moves and self._clock() - taken_at < self._fresh and not failed
