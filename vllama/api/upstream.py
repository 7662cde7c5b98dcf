"""A lean HTTP/1.1 client for the workers: the relay's hot path.

aiohttp's client spends about eight Python calls on every TCP segment it receives (protocol,
stream reader, chunk bookkeeping, flow control), and vLLM sends each token as a segment of its
own: on a 32-token stream that was most of the relay's CPU (docs/BENCHMARKS.md). Here a segment
costs two Python calls (`data_received`, and the parser's `on_body`): `httptools` (llhttp, the
parser uvicorn uses) parses the answer, its body waits in a list until the relay reads it, and
flow control only acts past `_HIGH_WATER` bytes unread.

Only what relaying to a worker on this host needs: plain HTTP (no TLS, no proxies, no redirects,
no cookies, no decompression), keep-alive connections pooled per host and port, a connect
timeout and an idle read timeout. Peers, which may be remote and behind TLS, keep aiohttp's
client. Failures raise aiohttp's own exception types, so the relay judges both clients' answers
alike: `ServerDisconnectedError`/`ClientConnectorError` (connection errors: the request may be
retried), `ClientResponseError` (an answer that is not HTTP), `SocketTimeoutError` (silence past
the read timeout), `ClientPayloadError` (a body cut short).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import httptools
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL


class Body(Protocol):
    """The reads of an answer's body the relay uses (aiohttp's `StreamReader` has them too)."""

    async def readany(self) -> bytes: ...
    def iter_any(self) -> AsyncIterator[bytes]: ...
    def is_eof(self) -> bool: ...
    def at_eof(self) -> bool: ...


class UpstreamAnswer(Protocol):
    """An upstream's answer as the relay reads it: a worker's (`WorkerAnswer`) or a peer's
    (`aiohttp.ClientResponse`)."""

    _body: bytes | None  # the whole body once read (aiohttp's own cache: `relay.read_answer`)

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def url(self) -> object: ...
    @property
    def content(self) -> Body: ...
    @property
    def content_length(self) -> int | None: ...
    def release(self) -> object: ...
    def close(self) -> object: ...


# Unread body past this pauses the socket until the relay catches up (aiohttp's default is 64 KiB
# per read; a worker far ahead of a slow client must not grow the daemon's memory without end).
_HIGH_WATER = 1 << 20


class WorkerAnswer(asyncio.Protocol):
    """One connection, and the answer being read on it (one at a time: HTTP/1.1 without
    pipelining). Also the answer's `content`, with the few reads the relay uses."""

    def __init__(self, pool: WorkerClient, key: tuple[str, int]) -> None:
        self._pool, self._key = pool, key
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout: float | None = None
        self._received: list[bytes] = []  # received, not yet read
        self._unread = 0
        self._paused = False
        self._headers_done = False
        self._eof = False  # the whole answer has been received
        self._keep_alive = False  # the connection may carry another request after this answer
        self._error: Exception | None = None
        self._header_list: list[tuple[str, str]] = []
        self.idle_since = 0.0
        # What the relay reads of an answer (aiohttp.ClientResponse's names).
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.url = ""
        self.content_length: int | None = None
        self.content = self
        self._body: bytes | None = None  # the whole body, once read (`relay.read_answer`)

    # -- asyncio.Protocol, and httptools' callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not asked for
            self._fail(aiohttp.ClientPayloadError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(self._not_http(exc) if not self._headers_done else _payload_error(exc))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers = CIMultiDictProxy(CIMultiDict(self._header_list))
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._received.append(body)
        self._unread += len(body)
        if self._unread > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        # Asked now: once the message is complete, llhttp's state is reset for the next one.
        self._keep_alive = self._parser.should_keep_alive()
        self._eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._eof:
            return
        if self._headers_done and self.content_length is None and not self._chunked():
            self._eof = True  # a body delimited by the connection's end
        elif self._headers_done:
            self._fail(aiohttp.ClientPayloadError("the answer's body was cut short"))
        else:
            self._fail(aiohttp.ServerDisconnectedError())
        self._wake()

    # -- the answer, as the relay reads it ------------------------------------------------------

    async def readany(self) -> bytes:
        """Everything received and not yet read, in one piece; b"" at the end."""
        while not self._received:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            await self._wait()
        data = self._received[0] if len(self._received) == 1 else b"".join(self._received)
        self._received.clear()
        self._unread = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def is_eof(self) -> bool:
        """The whole answer has been received (some may be unread)."""
        return self._eof

    def at_eof(self) -> bool:
        """The whole answer has been received and read."""
        return self._eof and not self._received

    def release(self) -> None:
        """Done with a whole answer: the connection goes back to the pool when it may."""
        if self._eof and self._error is None and self._keep_alive:
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        """Closes the connection: a worker reading it aborts the request."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if not self._eof and self._error is None:
            self._fail(aiohttp.ClientConnectionError("connection closed"))

    # -- the request ----------------------------------------------------------------------------

    async def send(self, head: bytes, body: bytes, read_timeout: float | None) -> None:
        """Sends one request and waits for its answer's headers."""
        assert self._transport is not None
        self._read_timeout = read_timeout
        self._transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self._transport.write(body)
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    def reusable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def reset(self, url: str) -> None:
        """Ready for its next request (a pooled connection)."""
        self._parser = httptools.HttpResponseParser(self)
        self._received.clear()
        self._unread = 0
        self._headers_done = self._eof = self._keep_alive = False
        self._error = None
        self._header_list = []
        self.status = 0
        self.content_length = None
        self._body = None
        self.url = url

    # -- inside ---------------------------------------------------------------------------------

    async def _wait(self) -> None:
        """Until something arrives, or the read timeout passes in silence."""
        waiter = self._waiter = self._loop.create_future()
        timer = None
        if self._read_timeout is not None:
            timer = self._loop.call_later(self._read_timeout, self._time_out, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._wake()

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _not_http(self, exc: Exception) -> aiohttp.ClientResponseError:
        info = RequestInfo(URL(self.url), "POST", CIMultiDictProxy(CIMultiDict()), URL(self.url))
        return aiohttp.ClientResponseError(info, (), status=400, message=f"not HTTP: {exc}")


def _payload_error(exc: Exception) -> aiohttp.ClientPayloadError:
    return aiohttp.ClientPayloadError(f"the answer's body is malformed: {exc}")


class WorkerClient:
    """Keep-alive connections to the workers, per host and port."""

    def __init__(self, keepalive_timeout: float = 4.0) -> None:
        # Under uvicorn's 5 s: a pooled connection the worker is about to close would fail the
        # next request on it (it is retried, but that costs a health probe).
        self._keepalive = keepalive_timeout
        self._idle: dict[tuple[str, int], list[WorkerAnswer]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float | None,
    ) -> WorkerAnswer:
        """Sends the request; its answer once its headers are in (status not checked)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        answer = await self._connection((host, port), connect_timeout)
        answer.reset(url)
        try:
            await answer.send(head, body, read_timeout)
        except BaseException:
            answer.close()
            raise
        return answer

    def put_back(self, answer: WorkerAnswer) -> None:
        if self._closed or not answer.reusable():
            answer.close()
            return
        answer.idle_since = time.monotonic()
        self._idle.setdefault(answer._key, []).append(answer)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for answer in idle:
                answer.close()
        self._idle.clear()

    async def _connection(self, key: tuple[str, int], connect_within: float) -> WorkerAnswer:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            answer = idle.pop()  # the most recent: the least likely to be closed by the worker
            if answer.reusable() and now - answer.idle_since < self._keepalive:
                return answer
            answer.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_within):
                _, answer = await loop.create_connection(lambda: WorkerAnswer(self, key), *key)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host http://{key[0]}:{key[1]}"
            ) from None
        except OSError as exc:
            where = ConnectionKey(key[0], key[1], False, False, None, None, None)
            raise aiohttp.ClientConnectorError(where, exc) from None
        return answer
