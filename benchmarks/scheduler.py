"""What the supervisor adds to a cold start, and what a swap costs.

1. Cold start: time from a request for an unloaded model to its first streamed token, through
   vllama, against starting the same vLLM server by hand (spawn, poll /health every 0.1 s, send
   the same request). Alternated, several rounds; the difference is vllama's own overhead.
2. Swap: on a host-RAM budget that holds one model, a request for B while A is loaded (evict A,
   confirm its tree is gone, load B, first token).

Usage: .venv/bin/python benchmarks/scheduler.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, free_port, write_config  # noqa: E402
from vllama.config.vllm_args import SERVER_MODULE  # noqa: E402
from vllama.demo.build import ensure_demo_models  # noqa: E402
from vllama.demo.config import DEMO_ARGS, DEMO_ENV  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": True}


def first_token(url: str, model: str, began: float) -> float:
    """Seconds from `began` to the first streamed chunk with content."""
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**BODY, "model": model}, timeout=600
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                return time.perf_counter() - began
    raise RuntimeError("no token")


def by_hand(model_path: Path) -> float:
    port = free_port()
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", str(model_path)]
    argv += ["--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port)]
    argv += list(DEMO_ARGS)
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **DEMO_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return first_token(url, "tiny", began)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def through_vllama(daemon: Daemon, model: str) -> float:
    httpx.post(daemon.url + "/api/generate", json={"model": model, "keep_alive": 0}, timeout=60)
    while any(model in " ".join(p) for p in _worker_cmdlines(daemon)):
        time.sleep(0.1)
    time.sleep(1.0)  # let the previous tree's memory settle, as by hand
    return first_token(daemon.url, model, time.perf_counter())


def _worker_cmdlines(daemon: Daemon) -> list[list[str]]:
    import psutil

    lines = []
    for child in psutil.Process(daemon.proc.pid).children():
        try:
            lines.append(child.cmdline())
        except psutil.Error:
            continue
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = ensure_demo_models(REPO / ".cache" / "test-models")
    spec = {"model": str(models["chat"]), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = {"memory_limit_cpu": "4.5GiB", "models_dir": str(folder / "models")}
        config = write_config(folder / "b.toml", server, {"a": spec, "b": spec})
        with Daemon(config, free_port(), folder / "b.log") as daemon:
            hand, ours = [], []
            for _ in range(args.rounds):
                hand.append(by_hand(models["chat"]))
                ours.append(through_vllama(daemon, "a"))
            swaps = []
            for _ in range(args.rounds):
                first_token(daemon.url, "a", time.perf_counter())  # A loaded
                swaps.append(first_token(daemon.url, "b", time.perf_counter()))  # evict A, load B
                httpx.post(daemon.url + "/api/generate", json={"model": "b", "keep_alive": 0})
                time.sleep(2)
    print(f"cold start to first token, {args.rounds} alternating rounds:")
    print(f"  by hand: {[round(t, 2) for t in hand]} s, median {statistics.median(hand):.2f} s")
    print(f"  vllama:  {[round(t, 2) for t in ours]} s, median {statistics.median(ours):.2f} s")
    overhead = [o - h for h, o in zip(hand, ours, strict=True)]
    print(
        f"  vllama overhead per round: {[round(o, 2) for o in overhead]} s, "
        f"median {statistics.median(overhead):.2f} s"
    )
    print(
        f"swap (evict A, load B, first token): {[round(t, 2) for t in swaps]} s, "
        f"median {statistics.median(swaps):.2f} s"
    )


if __name__ == "__main__":
    main()
