"""The lean client for the workers (`vllama.api.upstream`) against raw loopback servers that
answer exactly as each test needs: keep-alive, chunked bodies, answers that are not HTTP, bodies
cut short, silence, and the daemon's own event loop (uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import uvloop

from vllama.api.upstream import WorkerClient

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


class Server:
    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.connections = 0
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def started(serve: Serve) -> tuple[Server, asyncio.Server, str]:
    server = Server(serve)
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    return server, listening, f"http://127.0.0.1:{port}"


async def read_all(answer_body: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in answer_body])


async def test_a_streamed_answer_and_keep_alive() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            server.heads.append(await read_head(reader))
            writer.write(CHUNKED_HEAD)
            for i in range(3):
                writer.write(chunk(f"data: {i}\n\n".encode()))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    server, listening, url = await started(serve)
    client = WorkerClient()
    try:
        for _ in range(2):
            answer = await client.request(
                "POST", url + "/v1/x", b"{}", {"X-Request-Id": "r1"}, 5, 5
            )
            assert answer.status == 200
            assert answer.headers["content-type"] == "text/event-stream"
            assert await read_all(answer.content.iter_any()) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert answer.content.at_eof()
            answer.release()
        assert server.connections == 1  # the second request went on the first's connection
        assert b"POST /v1/x HTTP/1.1" in server.heads[0]
        assert b"X-Request-Id: r1" in server.heads[0]
        assert b"Content-Length: 2" in server.heads[0]
    finally:
        await client.close()
        listening.close()


async def test_an_answer_that_is_not_http() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    _, listening, url = await started(serve)
    client = WorkerClient()
    try:
        with pytest.raises(aiohttp.ClientResponseError):
            await client.request("POST", url + "/v1/x", b"{}", {}, 5, 5)
    finally:
        await client.close()
        listening.close()


async def test_a_body_cut_short_and_a_silent_worker() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: 0\n\n"))
        await writer.drain()
        if b"/silent" in head:
            await asyncio.sleep(5)  # no next chunk

    _, listening, url = await started(serve)
    client = WorkerClient()
    try:
        answer = await client.request("POST", url + "/cut", b"{}", {}, 5, 5)
        assert await answer.content.readany() == b"data: 0\n\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.content.readany()
        silent = await client.request("POST", url + "/silent", b"{}", {}, 5, 0.3)
        assert await silent.content.readany() == b"data: 0\n\n"
        with pytest.raises(aiohttp.SocketTimeoutError):
            await silent.content.readany()
        silent.close()
    finally:
        await client.close()
        listening.close()


async def test_nobody_listening_is_a_connection_error() -> None:
    _, listening, url = await started(read_head)  # type: ignore[arg-type]
    listening.close()
    await listening.wait_closed()
    client = WorkerClient()
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.request("POST", url + "/v1/x", b"{}", {}, 5, 5)


def test_under_uvloop() -> None:
    """The daemon runs on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def main() -> bytes:
        _, listening, url = await started(serve)
        client = WorkerClient()
        try:
            answer = await client.request("GET", url + "/health", b"", {}, 5, 5)
            return await read_all(answer.content.iter_any())
        finally:
            await client.close()
            listening.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == b"ok"
