"""The floor under vllama's relay: aiohttp's server and vllama's lean worker client
(`vllama.api.upstream`), the request's body sent on as it came and the answer streamed back as
`vllama.api.relay` streams it, and nothing else (no lease, budget, request id, metrics, keys or
access log). `benchmarks/relay.py --floor` measures its CPU per stream beside vllama's.

Usage: python benchmarks/relay_floor.py UPSTREAM_PORT PORT
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllama.api.upstream import WorkerClient

PATHS = ("/v1/completions", "/v1/chat/completions")
CLIENT = web.AppKey("client", WorkerClient)


def app_for(upstream: int) -> web.Application:
    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url = f"http://127.0.0.1:{upstream}{request.path}"
        headers = {"Content-Type": "application/json"}
        answer = await request.app[CLIENT].request("POST", url, body, headers, 10, 60)
        response = web.StreamResponse(
            status=answer.status, headers={"Content-Type": answer.headers["Content-Type"]}
        )
        await response.prepare(request)
        while chunk := await answer.readany():
            last = answer.at_eof()
            await (response.write_eof(chunk) if last else response.write(chunk))
            if last:
                break
        answer.release()
        await response.write_eof()
        return response

    app = web.Application()
    app[CLIENT] = WorkerClient()
    for path in PATHS:
        app.router.add_post(path, relay)
    return app


def main(argv: list[str]) -> None:
    upstream, port = int(argv[0]), int(argv[1])
    gc.freeze()  # as vllama does after start-up
    try:
        import uvloop  # as vllama runs where it is installed

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(
        app_for(upstream), host="127.0.0.1", port=port, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main(sys.argv[1:])
