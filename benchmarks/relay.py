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
With `--floor`, also the floor under it (benchmarks/relay_floor.py: aiohttp's server and vllama's
lean worker client with nothing else), on the OpenAI paths.

Usage: .venv/bin/python benchmarks/relay.py [--rounds 5] [--skip-engine] [--streams 2000]
       .venv/bin/python benchmarks/relay.py --skip-engine --compare ../old-vllama [--cpu-rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import relay_floor  # noqa: E402

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


async def load_round(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    concurrency: int,
    tokens: int,
) -> Round:
    began = time.perf_counter()
    results = await asyncio.gather(
        *(one_stream(session, url, model, tokens) for _ in range(concurrency))
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


# -- relay CPU: what a client's streams cost the daemon ---------------------------------------

KEY = "relay-benchmark-key-0123456789"  # an admin key (16+ characters) when keys are on


@dataclass(frozen=True)
class Client:
    """One kind of streamed request as a client sends it, and how its answer ends."""

    name: str
    title: str
    path: str
    body: Callable[[int], dict[str, object]]
    separator: bytes  # between events: SSE's blank line, NDJSON's newline
    whole: Callable[[bytes], bool]  # whether the last event is the one a whole stream ends with


CLIENTS = (
    Client(
        "completions",
        "OpenAI /v1/completions (SSE)",
        "/v1/completions",
        lambda n: {"model": "instant", "prompt": "Once", "max_tokens": n, "stream": True},
        b"\n\n",
        lambda last: last == b"data: [DONE]",
    ),
    Client(
        "chat",
        "OpenAI /v1/chat/completions (SSE, with usage)",
        "/v1/chat/completions",
        lambda n: {
            "model": "instant",
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": n,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        b"\n\n",
        lambda last: last == b"data: [DONE]",
    ),
    Client(
        "ollama",
        "Ollama /api/chat (NDJSON, translated)",
        "/api/chat",
        lambda n: {
            "model": "instant",
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "stream": True,
            "options": {"num_predict": n},
        },
        b"\n",
        lambda last: json.loads(last).get("done") is True,
    ),
)


async def client_stream(
    session: aiohttp.ClientSession, url: str, client: Client, tokens: int, key: str | None
) -> int:
    """One stream, read to its end as it comes; its number of events. Checked, not parsed: the
    benchmark's own process shares the machine with the daemon it measures."""
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with session.post(url + client.path, json=client.body(tokens), headers=headers) as r:
        pieces = [piece async for piece in r.content.iter_any()]
        data = b"".join(pieces)
        if r.status != 200 or not client.whole(data.rstrip().rpartition(client.separator)[2]):
            raise RuntimeError(f"{client.path}: {r.status} {data[-300:]!r}")
        return data.count(client.separator)


class Floor:
    """benchmarks/relay_floor.py in front of an instant fake of its own: what a relay costs in
    aiohttp's server and the lean client alone. Served like a Daemon (url, proc, kill)."""

    def __init__(self, folder: Path) -> None:
        upstream, port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = (folder / "floor.log").open("wb")
        fake = [*FAKE, "--model", "fake/instant", "--served-model-name", "instant"]
        floor = [sys.executable, str(REPO / "benchmarks" / "relay_floor.py")]
        self._fake = subprocess.Popen([*fake, "--port", str(upstream)], stdout=self._log)
        self.proc = subprocess.Popen([*floor, str(upstream), str(port)], stdout=self._log)
        deadline = time.monotonic() + 60
        for url in (f"http://127.0.0.1:{upstream}/health", self.url + "/v1/completions"):
            while not _answers(url):
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"the floor did not start: {url}")
                time.sleep(0.1)

    def kill(self) -> None:
        for process in (self.proc, self._fake):
            process.terminate()
            process.wait(30)
        self._log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code > 0  # a 405 for a GET to the floor
    except httpx.HTTPError:
        return False


@dataclass
class Target:
    """One running daemon (or the floor) in front of the instant fake, measured by its /proc CPU
    times."""

    label: str
    daemon: Daemon | Floor
    key: str | None

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.daemon.proc.pid).cpu_times()  # /proc/PID/stat: its own
        return times.user + times.system

    def serves(self, client: Client) -> bool:
        return not isinstance(self.daemon, Floor) or client.path in relay_floor.PATHS


async def measure(
    session: aiohttp.ClientSession,
    target: Target,
    client: Client,
    streams: int,
    concurrency: int,
    tokens: int,
) -> tuple[float, float]:
    """`streams` streams, `concurrency` in flight all the time: (daemon CPU ms per stream,
    events per stream)."""
    left = streams
    events = 0

    async def one_slot() -> None:
        nonlocal left, events
        while left > 0:
            left -= 1
            # Not `events += await ...`: that reads `events` before the await, losing the others'.
            counted = await client_stream(session, target.daemon.url, client, tokens, target.key)
            events += counted

    before = target.cpu_seconds()
    await asyncio.gather(*(one_slot() for _ in range(concurrency)))
    return (target.cpu_seconds() - before) / streams * 1000, events / streams


def start_target(label: str, source: Path | None, keys: bool, folder: Path) -> Target:
    file = label.replace(", ", "-").replace(" ", "_")
    config = write_config(
        folder / f"{file}.toml",
        {"engine_command": FAKE, "health_interval": 3600},
        {"instant": {"model": "fake/instant", "keep_alive": -1}},
    )
    # By environment, not the config file: a tree that lacks a setting ignores it there.
    # No warm spare: a worker started from one has no model in its argv (see worker_url).
    env = {"VLLAMA_WARM_SPARES": "0"}
    if keys:
        env["VLLAMA_API_KEY"] = KEY
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        daemon = Daemon(config, free_port(), folder / f"{file}.log", source=source)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Target(label, daemon, KEY if keys else None)


async def cpu_benchmark(
    trees: list[tuple[str, Path | None]],
    floor: bool,
    keys: list[bool],
    clients: tuple[Client, ...],
    rounds: int,
    streams: int,
    concurrency: int,
    tokens: int,
    folder: Path,
) -> dict[tuple[str, str], list[float]]:
    """Every (tree, keys) daemon at once; each round measures every client's streams on each
    daemon in turn (the order rotating), so all see the same machine. Returns the CPU ms per
    stream by (client, target label), one figure per round."""
    targets: list[Target] = []
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for name, source in trees:
            for with_keys in keys:
                label = f"{name}, keys {'on' if with_keys else 'off'}"
                targets.append(start_target(label, source, with_keys, folder))
        if floor:
            targets.append(Target("aiohttp + lean client only", Floor(folder), None))
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            events: dict[str, float] = {}
            for target in targets:  # the model's load and a warm-up, not measured
                for client in clients:
                    if target.serves(client):
                        await measure(session, target, client, concurrency, concurrency, tokens)
            for round_ in range(rounds):
                for client in clients:
                    shift = round_ % len(targets)
                    for target in targets[shift:] + targets[:shift]:
                        if not target.serves(client):
                            continue
                        ms, per = await measure(
                            session, target, client, streams, concurrency, tokens
                        )
                        events[client.name] = per
                        results.setdefault((client.name, target.label), []).append(ms)
                print(f"  round {round_ + 1}/{rounds} done", flush=True)
    finally:
        for target in targets:
            target.daemon.kill()
    print(
        f"relay CPU: vllama's own CPU (user + system, /proc) per stream of {tokens} tokens; "
        f"{streams} streams per figure, {concurrency} in flight; {rounds} rounds, alternating"
    )
    for client in clients:
        print(f"  {client.title}: {events.get(client.name, 0):.0f} events per stream")
        for target in targets:
            if not target.serves(client):
                continue
            figures = results[(client.name, target.label)]
            print(
                f"    {target.label:<28} median {statistics.median(figures):.3f} ms  "
                f"{[round(f, 3) for f in figures]}"
            )
        if len(trees) == 2:
            for with_keys in keys:
                on = "on" if with_keys else "off"
                mine = results.get((client.name, f"{trees[0][0]}, keys {on}"))
                theirs = results.get((client.name, f"{trees[1][0]}, keys {on}"))
                if mine and theirs:
                    ratios = [m / t for m, t in zip(mine, theirs, strict=True)]
                    print(
                        f"    ratio {trees[0][0]}/{trees[1][0]}, keys {on}: median "
                        f"{statistics.median(ratios):.3f} {[round(r, 3) for r in ratios]}"
                    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="real engine: alternating rounds")
    parser.add_argument("--concurrency", type=int, default=64, help="streams in flight")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=640, help="relay CPU: streams per figure")
    parser.add_argument("--cpu-rounds", type=int, default=3)
    parser.add_argument(
        "--clients",
        default=",".join(c.name for c in CLIENTS),
        help="relay CPU: which requests (" + ", ".join(c.name for c in CLIENTS) + ")",
    )
    parser.add_argument("--keys", choices=("off", "on", "both"), default="both")
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--compare", type=Path, help="another vllama source tree to measure")
    parser.add_argument("--floor", action="store_true", help="also aiohttp + the lean client only")
    args = parser.parse_args()
    clients = tuple(c for c in CLIENTS if c.name in args.clients.split(","))
    keys = {"off": [False], "on": [True], "both": [False, True]}[args.keys]
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare is not None:
        trees.append((args.compare.resolve().name, args.compare.resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_cpu:
            asyncio.run(
                cpu_benchmark(
                    trees,
                    args.floor,
                    keys,
                    clients,
                    args.cpu_rounds,
                    args.streams,
                    args.concurrency,
                    args.tokens,
                    folder,
                )
            )
        if not args.skip_engine:
            asyncio.run(engine_benchmark(args.rounds, args.concurrency, args.tokens, folder))


if __name__ == "__main__":
    main()
