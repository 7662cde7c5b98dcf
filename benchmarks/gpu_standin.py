"""A stand-in for vLLM's OpenAI server that takes real GPU memory, for hosts without vLLM.

It follows the start-up rules vLLM 0.32 applies to memory (see docs/GPU.md): the CUDA context
first, then free memory must cover total x `--gpu-memory-utilization` (0.92 by default), then it
holds that share with torch allocations until it stops (or sleeps: `POST /sleep` frees the share,
`POST /wake_up` takes it back, failing without room). It answers what vllama asks of a worker:
`/health`, `/v1/models`, `/v1/completions`, `/metrics`, the sleep endpoints.

Run by benchmarks/gpu_check.py as vllama's `engine_command`; needs torch with CUDA and aiohttp.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import torch
from aiohttp import web

CHUNK = 256 << 20  # allocate in pieces, as a real engine's tensors are


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gpu-memory-utilization", "--gpu_memory_utilization", type=float)
    parser.add_argument("--max-model-len", "--max_model_len", type=int, default=4096)
    args, _ = parser.parse_known_args(argv)
    return args


class Engine:
    def __init__(self, utilization: float) -> None:
        self.devices = list(range(torch.cuda.device_count()))
        self.utilization = utilization
        self.blocks: list[torch.Tensor] = []
        for device in self.devices:
            torch.empty(1, device=f"cuda:{device}")  # the CUDA context, outside the share
        for device in self.devices:
            free, total = torch.cuda.mem_get_info(device)
            wanted = math.ceil(total * utilization)
            if free < wanted:
                print(
                    f"ValueError: Free memory on device cuda:{device} ({free / 2**30:.2f}/"
                    f"{total / 2**30:.2f} GiB) on startup is less than desired GPU memory "
                    f"utilization ({utilization}, {wanted / 2**30:.2f} GiB)",
                    flush=True,
                )
                sys.exit(1)
        self.allocate()

    def share(self, device: int) -> int:
        _, total = torch.cuda.mem_get_info(device)
        return math.ceil(total * self.utilization)

    def allocate(self) -> None:
        for device in self.devices:
            left = self.share(device)
            while left > 0:
                size = min(CHUNK, left)
                self.blocks.append(torch.empty(size, dtype=torch.uint8, device=f"cuda:{device}"))
                left -= size

    def free(self) -> None:
        self.blocks.clear()
        torch.cuda.empty_cache()


def main() -> None:
    args = parse(sys.argv[1:])
    name = args.served_model_name or args.model
    print(f"stand-in for {name}: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
    engine = Engine(args.gpu_memory_utilization or 0.92)
    print(f"holding {args.gpu_memory_utilization} of each visible GPU", flush=True)
    sleeping = False

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def models(request: web.Request) -> web.Response:
        card = {"id": name, "object": "model", "max_model_len": args.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    async def completions(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choice = {"index": 0, "text": "x", "finish_reason": "length"}
        return web.json_response({"model": body.get("model"), "choices": [choice], "usage": usage})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def sleep(request: web.Request) -> web.Response:
        nonlocal sleeping
        engine.free()
        sleeping = True
        return web.Response()

    async def wake(request: web.Request) -> web.Response:
        nonlocal sleeping
        try:
            engine.allocate()
        except torch.cuda.OutOfMemoryError as exc:
            return web.json_response({"error": str(exc)}, status=500)
        sleeping = False
        return web.Response()

    async def is_sleeping(request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": sleeping})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/sleep", sleep)
    app.router.add_post("/wake_up", wake)
    app.router.add_get("/is_sleeping", is_sleeping)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
