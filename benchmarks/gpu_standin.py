"""A stand-in for vLLM's OpenAI server that takes real GPU memory, for hosts without vLLM.

It follows the start-up rules vLLM 0.32 applies to memory (see docs/GPU.md): the CUDA context
first, then free memory must cover total x `--gpu-memory-utilization` (0.92 by default), then it
holds that share with torch allocations until it stops (or sleeps: `POST /sleep` frees the share,
`POST /wake_up` takes it back, failing without room). It answers what vllama asks of a worker:
`/health`, `/v1/models`, `/v1/completions`, `/metrics`, the sleep endpoints.

Run by benchmarks/gpu_check.py as vllama's `engine_command`; needs torch with CUDA and aiohttp, or,
for the check's dry run, the simulated GPU of benchmarks/gpu_sim (`GPU_SIM_STATE` set).
`GET /standin/memory` says what it allocated by its own count, and how often it slept and woke.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Protocol

from aiohttp import web

CHUNK = 256 << 20  # allocate in pieces, as a real engine's tensors are
SIM_CONTEXT = 300 << 20  # the simulated CUDA context


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gpu-memory-utilization", "--gpu_memory_utilization", type=float)
    parser.add_argument("--max-model-len", "--max_model_len", type=int, default=4096)
    parser.add_argument("--check-only", action="store_true", help="start, report, exit")
    parser.add_argument("--total", action="store_true", help="print CUDA's total of GPU 0, exit")
    args, _ = parser.parse_known_args(argv)
    return args


class Memory(Protocol):
    """One GPU's memory as this process sees it: CUDA's, or the simulated GPU's."""

    def devices(self) -> list[int]: ...
    def open_context(self, device: int) -> None: ...
    def info(self, device: int) -> tuple[int, int]: ...  # (free, total) as cudaMemGetInfo
    def take(self, device: int, size: int) -> None: ...
    def release(self) -> None: ...
    def held(self) -> int: ...  # bytes this process allocated (the share, not the context)


class CudaMemory:
    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.blocks: list[Any] = []

    def devices(self) -> list[int]:
        return list(range(self.torch.cuda.device_count()))

    def open_context(self, device: int) -> None:
        self.torch.empty(1, device=f"cuda:{device}")

    def info(self, device: int) -> tuple[int, int]:
        free, total = self.torch.cuda.mem_get_info(device)
        return int(free), int(total)

    def take(self, device: int, size: int) -> None:
        self.blocks.append(self.torch.empty(size, dtype=self.torch.uint8, device=f"cuda:{device}"))

    def release(self) -> None:
        self.blocks.clear()
        self.torch.cuda.empty_cache()

    def held(self) -> int:
        return sum(int(self.torch.cuda.memory_reserved(d)) for d in self.devices())


class SimMemory:
    """The simulated GPU of benchmarks/gpu_sim (the check's dry run), one device."""

    def __init__(self) -> None:
        import pynvml  # the simulated one: gpu_check.py --simulate puts it first on the path

        self.gpu = pynvml
        self.pid = str(os.getpid())
        self.share = 0

    def devices(self) -> list[int]:
        return [0]

    def _add(self, size: int) -> None:
        with self.gpu.state(write=True) as data:
            total = data["total"] - data["reserved"]
            if size > total - sum(data["alloc"].values()):
                raise MemoryError("CUDA out of memory (simulated)")
            data["alloc"][self.pid] = data["alloc"].get(self.pid, 0) + size

    def open_context(self, device: int) -> None:
        self._add(SIM_CONTEXT)

    def info(self, device: int) -> tuple[int, int]:
        with self.gpu.state() as data:
            total = data["total"] - data["reserved"]
            return total - sum(data["alloc"].values()), total

    def take(self, device: int, size: int) -> None:
        self._add(size)
        self.share += size

    def release(self) -> None:
        with self.gpu.state(write=True) as data:
            data["alloc"][self.pid] = data["alloc"].get(self.pid, 0) - self.share
        self.share = 0

    def held(self) -> int:
        return self.share


class Engine:
    def __init__(self, memory: Memory, utilization: float) -> None:
        self.memory = memory
        self.utilization = utilization
        self.context = 0  # bytes the CUDA context took, measured as vLLM would see it
        for device in memory.devices():
            before = memory.info(device)[0]
            memory.open_context(device)  # the CUDA context, outside the share
            self.context = max(self.context, before - memory.info(device)[0])
        for device in memory.devices():
            free, total = memory.info(device)
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
        return math.ceil(self.memory.info(device)[1] * self.utilization)

    def allocate(self) -> None:
        for device in self.memory.devices():
            left = self.share(device)
            while left > 0:
                size = min(CHUNK, left)
                self.memory.take(device, size)
                left -= size

    def free(self) -> None:
        self.memory.release()


def main() -> None:
    args = parse(sys.argv[1:])
    name = args.served_model_name or args.model
    print(f"stand-in for {name}: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
    memory: Memory = SimMemory() if os.environ.get("GPU_SIM_STATE") else CudaMemory()
    if args.total:
        memory.open_context(0)  # cudaMemGetInfo needs one; it leaves with this process
        print(memory.info(0)[1], flush=True)
        return
    engine = Engine(memory, args.gpu_memory_utilization or 0.92)
    print(f"holding {args.gpu_memory_utilization} of each visible GPU", flush=True)
    if args.check_only:
        print(f"STARTED context={engine.context} held={memory.held()}", flush=True)
        return
    sleeping = False
    counts = {"sleeps": 0, "wakes": 0}

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
        counts["sleeps"] += 1
        return web.Response()

    async def wake(request: web.Request) -> web.Response:
        nonlocal sleeping
        try:
            engine.allocate()
        except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
            return web.json_response({"error": str(exc)}, status=500)
        sleeping = False
        counts["wakes"] += 1
        return web.Response()

    async def own_account(request: web.Request) -> web.Response:
        """What this process allocated by its own count (torch's, not NVML's), and its sleeps
        and wakes: the check compares NVML and /api/ps with this."""
        total = memory.info(0)[1]
        held = {"held": memory.held(), "context": engine.context, "cuda_total": total}
        return web.json_response({**held, **counts, "pid": os.getpid()})

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
    app.router.add_get("/standin/memory", own_account)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
