"""A soak with real vLLM: two models under steady traffic while a random worker is SIGKILLed every
45-90 s. Passes when every model serves again after each kill, and at the end.

Reported: per model, requests answered 200 / 503 / other, the longest run of seconds without a
200, and whether each model served a request after the last kill. The issue (#11) that asked for
it saw one model refuse everything for the last 409 s of 10 minutes before the crash policy.

Usage: .venv/bin/python benchmarks/soak.py [--minutes 10] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, free_port, write_config  # noqa: E402
from tests.e2e.helpers import workers  # noqa: E402  (the API servers: what the soak kills)
from vllama.demo.build import ensure_demo_models  # noqa: E402
from vllama.demo.config import DEMO_ARGS, DEMO_ENV  # noqa: E402

MODELS = ("tiny-a", "tiny-b")
RECOVERY = 150  # seconds kept free of kills at the end: a restart takes 25-80 s on 2 busy cores


def traffic(url: str, model: str, stop: threading.Event, log: list[tuple[float, int]]) -> None:
    body = {"model": model, "prompt": "hi", "max_tokens": 4}
    with httpx.Client(timeout=300) as client:
        while not stop.is_set():
            try:
                status = client.post(url + "/v1/completions", json=body).status_code
            except httpx.HTTPError:
                status = 0
            log.append((time.monotonic(), status))
            time.sleep(0.5)


def longest_gap(log: list[tuple[float, int]], start: float, end: float) -> float:
    gap, last_ok = 0.0, start
    for moment, status in log:
        if status == 200:
            gap = max(gap, moment - last_ok)
            last_ok = moment
    return max(gap, end - last_ok)


def run(minutes: float, out: Path | None) -> int:
    paths = ensure_demo_models(REPO / ".cache" / "test-models")
    spec = {"model": str(paths["chat"]), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV)}
    folder = Path(tempfile.mkdtemp(prefix="vllama-soak-"))
    config = write_config(
        folder / "vllama.toml",
        {"load_stall_timeout": 240, "runtime_dir": str(folder / "run")},
        {name: spec for name in MODELS},
    )
    logs: dict[str, list[tuple[float, int]]] = {name: [] for name in MODELS}
    kills: list[tuple[float, str]] = []
    stop = threading.Event()
    with Daemon(config, free_port(), folder / "vllama.log", start_timeout=60) as daemon:
        threads = [
            threading.Thread(target=traffic, args=(daemon.url, m, stop, logs[m])) for m in MODELS
        ]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        end = began + minutes * 60
        try:
            while True:
                time.sleep(random.uniform(45, 90))
                if time.monotonic() > end - RECOVERY:
                    break  # the last kill leaves time for a restart under load
                running = workers(daemon)
                if running:
                    name, victim = random.choice(sorted(running.items()))
                    victim.send_signal(signal.SIGKILL)
                    kills.append((time.monotonic() - began, name))
                    print(f"{time.monotonic() - began:6.0f} s: killed {name}", flush=True)
            while time.monotonic() < end:
                time.sleep(1)
        finally:  # also on Ctrl-C: the traffic threads must end for the daemon to be stopped
            stop.set()
            for thread in threads:
                thread.join()
        finished = time.monotonic()
    last_kill = began + (kills[-1][0] if kills else 0)
    report: dict[str, Any] = {"minutes": minutes, "kills": kills, "models": {}}
    for name, log in logs.items():
        statuses = [status for _, status in log]
        served_after = any(m > last_kill and s == 200 for m, s in log)
        report["models"][name] = {
            "ok": statuses.count(200),
            "503": statuses.count(503),
            "other": len(statuses) - statuses.count(200) - statuses.count(503),
            "longest_seconds_without_200": round(longest_gap(log, began, finished), 1),
            "served_after_last_kill": served_after,
        }
    report["pass"] = all(m["served_after_last_kill"] for m in report["models"].values())
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text)
    return 0 if report["pass"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.exit(run(args.minutes, args.out))


if __name__ == "__main__":
    main()
