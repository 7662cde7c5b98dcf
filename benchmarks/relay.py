"""What the relay costs: throughput and time to first token, direct vs. through vllama.

Two measurements, each side by side in one run (the machines are shared and noisy, so only ratios
taken in the same run mean anything):

1. Real engine. vllama serves the tiny demo model with real vLLM; once its worker is up, the same
   streaming load (64 concurrent chat completions, 32 tokens each, `ignore_eos`) goes alternately
   straight to the worker's port and through vllama, for several rounds. Reported: the median
   throughput ratio (vllama / direct) and the median added time to first token.
2. Relay CPU. vllama in front of an instant fake upstream (tests/fake_vllm.py, no token delay), so
   the engine's cost doesn't hide the relay's: the daemon's own CPU time (user + system, from
   /proc) divided by the number of relayed streams. Two paths, one after the other on the same
   daemon: OpenAI passthrough (`/v1/chat/completions`, SSE relayed byte for byte) and Ollama
   translation (`/api/chat`, vLLM's SSE turned into NDJSON lines), the same tokens per stream.

With `--compare TREE` (another checkout of vllama, e.g. a `git worktree` of an older commit), the
relay CPU measurement alternates between this tree and TREE, several rounds each, in one run.

Usage: .venv/bin/python benchmarks/relay.py [--rounds 5] [--skip-engine] [--streams 2000]
       .venv/bin/python benchmarks/relay.py --skip-engine --compare ../old-vllama [--cpu-rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, free_port, write_config  # noqa: E402
from vllama.demo.build import ensure_demo_models  # noqa: E402
from vllama.demo.config import DEMO_ARGS, DEMO_ENV  # noqa: E402

FAKE = [sys.executable, str(REPO / "tests" / "fake_vllm.py")]


@dataclass
class Round:
    seconds: float
    tokens: int
    ttfts: list[float]
    events: int

    @property
    def throughput(self) -> float:
        return self.tokens / self.seconds


async def one_stream(
    session: aiohttp.ClientSession, url: str, model: str, tokens: int
) -> tuple[float, int, int]:
    """One streamed chat completion (OpenAI SSE): its TTFT, generated tokens and events."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": tokens,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    began = time.perf_counter()
    ttft = -1.0
    generated = 0
    events = 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                events += 1
                if event == b"data: [DONE]":
                    continue
                data = json.loads(event[6:])
                if ttft < 0 and data.get("choices") and data["choices"][0]["delta"].get("content"):
                    ttft = time.perf_counter() - began
                if data.get("usage"):
                    generated = data["usage"]["completion_tokens"]
    return ttft, generated, events


async def one_ollama_stream(
    session: aiohttp.ClientSession, url: str, model: str, tokens: int
) -> tuple[float, int, int]:
    """One streamed Ollama chat (`/api/chat`, NDJSON): its TTFT, generated tokens and lines."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "stream": True,
        "options": {"num_predict": tokens},
    }
    began = time.perf_counter()
    ttft = -1.0
    generated = 0
    events = 0
    async with session.post(url + "/api/chat", json=body) as response:
        response.raise_for_status()
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                events += 1
                data = json.loads(line)
                if ttft < 0 and data.get("message", {}).get("content"):
                    ttft = time.perf_counter() - began
                if data.get("done"):
                    generated = data["eval_count"]
    return ttft, generated, events


Stream = Callable[[aiohttp.ClientSession, str, str, int], Awaitable[tuple[float, int, int]]]
# The relay CPU's paths: name, what one stream is, how a client sends it.
PATHS: tuple[tuple[str, str, Stream], ...] = (
    ("openai", "OpenAI passthrough (/v1/chat/completions, SSE events)", one_stream),
    ("ollama", "Ollama translation (/api/chat, NDJSON lines)", one_ollama_stream),
)


async def load_round(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    concurrency: int,
    tokens: int,
    stream: Stream = one_stream,
) -> Round:
    began = time.perf_counter()
    results = await asyncio.gather(
        *(stream(session, url, model, tokens) for _ in range(concurrency))
    )
    seconds = time.perf_counter() - began
    return Round(
        seconds=seconds,
        tokens=sum(r[1] for r in results),
        ttfts=[r[0] for r in results],
        events=sum(r[2] for r in results),
    )


def worker_url(daemon: Daemon, model: str) -> str:
    for child in psutil.Process(daemon.proc.pid).children():
        cmdline = child.cmdline()
        if "--served-model-name" in cmdline and model in cmdline:
            return f"http://127.0.0.1:{cmdline[cmdline.index('--port') + 1]}"
    raise RuntimeError(f"no worker for {model}")


async def engine_benchmark(rounds: int, concurrency: int, tokens: int, folder: Path) -> None:
    models = ensure_demo_models(REPO / ".cache" / "test-models")
    spec = {"model": str(models["chat"]), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV)}
    # No warm spare: a worker started from one has no model in its argv (see worker_url).
    server = {"load_stall_timeout": 240, "warm_spares": 0}
    config = write_config(folder / "engine.toml", server, {"tiny": spec})
    with Daemon(config, free_port(), folder / "engine.log") as daemon:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await load_round(session, daemon.url, "tiny", 4, 4)  # load the model, warm up
            direct_url = worker_url(daemon, "tiny")
            await load_round(session, direct_url, "tiny", concurrency, tokens)  # warm up
            direct: list[Round] = []
            relayed: list[Round] = []
            for _ in range(rounds):
                direct.append(await load_round(session, direct_url, "tiny", concurrency, tokens))
                relayed.append(await load_round(session, daemon.url, "tiny", concurrency, tokens))
    ratios = [r.throughput / d.throughput for d, r in zip(direct, relayed, strict=True)]
    added = [
        statistics.median(r.ttfts) - statistics.median(d.ttfts)
        for d, r in zip(direct, relayed, strict=True)
    ]
    print(f"engine: {rounds} alternating rounds of {concurrency} streams x {tokens} tokens")
    print(f"  direct  throughput tok/s per round: {[round(d.throughput) for d in direct]}")
    print(f"  vllama  throughput tok/s per round: {[round(r.throughput) for r in relayed]}")
    print(f"  throughput ratio vllama/direct: median {statistics.median(ratios):.3f}")
    print(
        "  median TTFT direct "
        f"{statistics.median([statistics.median(d.ttfts) for d in direct]) * 1000:.1f} ms, "
        f"vllama {statistics.median([statistics.median(r.ttfts) for r in relayed]) * 1000:.1f} ms"
    )
    print(f"  added median TTFT per round (ms): {[round(a * 1000, 2) for a in added]}")
    print(f"  added median TTFT: median {statistics.median(added) * 1000:.2f} ms")


async def cpu_benchmark(
    streams: int, concurrency: int, tokens: int, folder: Path, source: Path | None = None
) -> dict[str, float]:
    """The daemon's CPU milliseconds per relayed stream, by path (printed, and returned)."""
    config = write_config(
        folder / "fake.toml",
        # No warm spare: a worker started from one has no model in its argv (see worker_url).
        {"engine_command": FAKE, "health_interval": 3600, "warm_spares": 0},
        {"instant": {"model": "fake/instant", "keep_alive": -1}},
    )
    rounds = streams // concurrency
    done = rounds * concurrency
    where = f" ({source})" if source else ""
    print(f"relay CPU{where}: {done} streams of {tokens} tokens per path, {concurrency} at a time")
    per_stream: dict[str, float] = {}
    with Daemon(config, free_port(), folder / "fake.log", source=source) as daemon:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            proc = psutil.Process(daemon.proc.pid)
            for name, title, stream in PATHS:
                # Not measured: the model's load (before the first path) and a warm-up.
                await load_round(session, daemon.url, "instant", concurrency, tokens, stream)
                before = proc.cpu_times()
                began = time.perf_counter()
                events = 0
                for _ in range(rounds):
                    round_ = await load_round(
                        session, daemon.url, "instant", concurrency, tokens, stream
                    )
                    events += round_.events
                wall = time.perf_counter() - began
                after = proc.cpu_times()
                cpu = (after.user - before.user) + (after.system - before.system)
                per_stream[name] = cpu / done * 1000
                print(f"  {title}: {events / done:.0f} per stream")
                print(f"    vllama CPU per relayed stream: {per_stream[name]:.3f} ms")
                print(f"    wall: through vllama {wall:.2f} s")
            # The same OpenAI streams straight to the fake, for the wall-clock comparison.
            direct_url = worker_url(daemon, "instant")
            began = time.perf_counter()
            for _ in range(rounds):
                await load_round(session, direct_url, "instant", concurrency, tokens)
            print(f"  wall: OpenAI streams direct to the fake {time.perf_counter() - began:.2f} s")
    return per_stream


async def compare_cpu(streams: int, tokens: int, folder: Path, other: Path, rounds: int) -> None:
    """This tree and `other`, alternately, so both see the same machine conditions."""
    mine: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(rounds):
        mine.append(await cpu_benchmark(streams, 16, tokens, folder))
        theirs.append(await cpu_benchmark(streams, 16, tokens, folder, source=other))
    print(f"relay CPU per stream, median of {rounds} alternating rounds:")
    for name, title, _ in PATHS:
        this = [m[name] for m in mine]
        that = [t[name] for t in theirs]
        ratio = statistics.median(m / o for m, o in zip(this, that, strict=True))
        print(f"  {title}:")
        print(f"    this tree {statistics.median(this):.3f} ms {[round(m, 3) for m in this]}")
        print(f"    {other} {statistics.median(that):.3f} ms {[round(t, 3) for t in that]}")
        print(f"    ratio this/other: median {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--compare", type=Path, help="another vllama source tree to measure")
    parser.add_argument("--cpu-rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.compare is not None:
            other = args.compare.resolve()
            asyncio.run(compare_cpu(args.streams, args.tokens, folder, other, args.cpu_rounds))
        elif not args.skip_cpu:
            asyncio.run(cpu_benchmark(args.streams, 16, args.tokens, folder))
        if not args.skip_engine:
            asyncio.run(engine_benchmark(args.rounds, args.concurrency, args.tokens, folder))


if __name__ == "__main__":
    main()
