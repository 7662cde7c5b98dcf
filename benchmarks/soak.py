"""A soak with real vLLM: two models under steady traffic while a random worker is SIGKILLed every
45-90 s, SIGHUP storms reload a config rewritten between signals, and clients create derived
models (`/api/create`) all along. Passes when every model serves again after each kill and at the
end, every create that succeeded is in the derived store's file, and every vLLM and guard process
under the daemon belongs to a model `/api/ps` lists (or is one of its warm spares).

Reported: per model, requests answered 200 / 503 / other, the longest run of seconds without a
200, and whether each model served a request after the last kill; reload storms and signals
sent; creates answered 200 / other; processes unaccounted for. The issue (#11) that asked for it
saw one model refuse everything for the last 409 s of 10 minutes before the crash policy; issue
25 added the reloads, the creates and the final accounting.

Usage: .venv/bin/python benchmarks/soak.py [--minutes 10 | --seconds 120] [--out report.json]
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
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, free_port, write_config  # noqa: E402
from tests.e2e.helpers import workers  # noqa: E402  (the API servers: what the soak kills)
from vllama.demo.build import ensure_demo_models  # noqa: E402
from vllama.demo.config import DEMO_ARGS, DEMO_ENV  # noqa: E402

MODELS = ("tiny-a", "tiny-b")
RECOVERY = 150  # seconds kept free of kills at the end: a restart takes 25-80 s on 2 busy cores
WARM_SPARES = 1
CREATORS = 2  # clients calling /api/create at once


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


def write_soak_config(folder: Path, spec: dict[str, Any], turn: int) -> Path:
    """The soak's config; each turn differs (`max_output_tokens`, read per request, and a third
    model that comes and goes), so every reload has something to apply, without a change that
    restarts a worker (any engine setting does, `keep_alive` included: a replacement)."""
    models: dict[str, dict[str, Any]] = {
        name: {**spec, "max_output_tokens": 64 + turn % 2} for name in MODELS
    }
    if turn % 3 == 0:
        models["tiny-extra"] = dict(spec)  # configured, never asked for: nothing loads
    server = {
        "load_stall_timeout": 240,
        "runtime_dir": str(folder / "run"),
        "models_dir": str(folder / "models"),
        "warm_spares": WARM_SPARES,
    }
    return write_config(folder / "vllama.toml", server, models)


def hup_storms(
    daemon: Daemon,
    folder: Path,
    spec: dict[str, Any],
    stop: threading.Event,
    log: list[tuple[float, int]],
) -> None:
    """Every 20-40 s, 3-8 SIGHUPs a few ms to 0.5 s apart, the config rewritten before each."""
    turn = 1
    while not stop.wait(random.uniform(20, 40)):
        signals = random.randint(3, 8)
        for _ in range(signals):
            turn += 1
            write_soak_config(folder, spec, turn)
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(random.uniform(0.005, 0.5))
        log.append((time.monotonic(), signals))
    write_soak_config(folder, spec, 1)  # the last word: the models the checks expect
    daemon.proc.send_signal(signal.SIGHUP)


def creates(
    url: str, worker: int, stop: threading.Event, made: list[str], failed: list[str]
) -> None:
    """Derived models, one every 1-3 s, each with its own name (`made` holds those answered 200)."""
    count = 0
    with httpx.Client(timeout=120) as client:
        while not stop.wait(random.uniform(1, 3)):
            count += 1
            name = f"soak-{worker}-{count}"
            body = {
                "model": name,
                "from": random.choice(MODELS),
                "system": f"You are soak model {name}.",
                "parameters": {"temperature": 0.5},
                "stream": False,
            }
            try:
                reply = client.post(url + "/api/create", json=body)
            except httpx.HTTPError as exc:
                failed.append(f"{name}: {exc!r}")
                continue
            if reply.status_code == 200:
                made.append(name)
            else:
                failed.append(f"{name}: {reply.status_code} {reply.text[:200]}")


def missing_creates(folder: Path, made: list[str]) -> list[str]:
    """The creates answered 200 that the derived store's file does not hold."""
    stored = json.loads((folder / "models" / "derived-models.json").read_text())
    names = {str(entry["name"]).removesuffix(":latest") for entry in stored["models"]}
    return [name for name in made if name not in names]


def unaccounted(daemon: Daemon, listed: set[str]) -> list[str]:
    """Each process tree under the daemon (a worker's guard, or a warm spare) that is neither a
    model `/api/ps` lists nor one of the spares the config keeps."""
    problems, spares = [], 0
    trees: dict[str, int] = {}
    for top in psutil.Process(daemon.proc.pid).children():
        try:
            tree = [top, *top.children(recursive=True)]
            lines = [" ".join(p.cmdline()).split() for p in tree]
        except psutil.Error:
            continue  # gone while looked at: not running
        served = {
            line[line.index("--served-model-name") + 1]
            for line in lines
            if "--served-model-name" in line and line.index("--served-model-name") + 1 < len(line)
        }
        if not served:
            spares += 1
            continue
        for name in served:
            trees[name] = trees.get(name, 0) + 1
        for name in served - listed:
            problems.append(f"pid {top.pid} ({len(tree)} processes) serves {name}: not in /api/ps")
    problems += [f"{n} process trees serve {name}" for name, n in trees.items() if n > 1]
    if spares > WARM_SPARES:
        problems.append(f"{spares} process trees serve no model; warm_spares is {WARM_SPARES}")
    return problems


def final_checks(daemon: Daemon, settle: float = 300) -> dict[str, Any]:
    """After the traffic: every model serves, and /api/ps lists each, as the processes show
    (looked at again for up to `settle` seconds while a restart may still be under way)."""
    deadline = time.monotonic() + settle
    while True:
        final = _final_once(daemon)
        if not final["unaccounted"] or time.monotonic() > deadline:
            return final
        time.sleep(5)


def _final_once(daemon: Daemon) -> dict[str, Any]:
    serving = {}
    with httpx.Client(timeout=300) as client:
        for model in MODELS:
            body = {"model": model, "prompt": "hi", "max_tokens": 2}
            serving[model] = client.post(daemon.url + "/v1/completions", json=body).status_code
        ps = client.get(daemon.url + "/api/ps").json()["models"]
    listed = {str(m["name"]).removesuffix(":latest") for m in ps}
    return {"serving": serving, "ps": sorted(listed), "unaccounted": unaccounted(daemon, listed)}


def longest_gap(log: list[tuple[float, int]], start: float, end: float) -> float:
    gap, last_ok = 0.0, start
    for moment, status in log:
        if status == 200:
            gap = max(gap, moment - last_ok)
            last_ok = moment
    return max(gap, end - last_ok)


def run(seconds: float, out: Path | None) -> int:
    paths = ensure_demo_models(REPO / ".cache" / "test-models")
    spec = {"model": str(paths["chat"]), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV)}
    folder = Path(tempfile.mkdtemp(prefix="vllama-soak-"))
    (folder / "models").mkdir()
    config = write_soak_config(folder, spec, 1)
    logs: dict[str, list[tuple[float, int]]] = {name: [] for name in MODELS}
    kills: list[tuple[float, str]] = []
    storms: list[tuple[float, int]] = []
    made: list[str] = []
    failed: list[str] = []
    stop = threading.Event()
    # A short run keeps the same shape: kills stop a third of the way from the end at most.
    recovery = min(RECOVERY, seconds / 3)
    with Daemon(config, free_port(), folder / "vllama.log", start_timeout=60) as daemon:
        threads = [
            threading.Thread(target=traffic, args=(daemon.url, m, stop, logs[m])) for m in MODELS
        ]
        threads.append(
            threading.Thread(target=hup_storms, args=(daemon, folder, spec, stop, storms))
        )
        threads += [
            threading.Thread(target=creates, args=(daemon.url, n, stop, made, failed))
            for n in range(CREATORS)
        ]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        end = began + seconds
        try:
            while True:
                time.sleep(random.uniform(45, 90) * min(1.0, seconds / 600))
                if time.monotonic() > end - recovery:
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
        time.sleep(2)  # the last reload (the expected config) applied
        final = final_checks(daemon)
    last_kill = began + (kills[-1][0] if kills else 0)
    report: dict[str, Any] = {"seconds": seconds, "kills": kills, "models": {}}
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
    report["reloads"] = {"storms": len(storms), "signals": sum(n for _, n in storms)}
    report["creates"] = {
        "ok": len(made),
        "failed": failed[:20],
        "missing_from_store": missing_creates(folder, made),
    }
    report["final"] = final
    report["pass"] = (
        all(m["served_after_last_kill"] for m in report["models"].values())
        and all(status == 200 for status in final["serving"].values())
        and not failed
        and not report["creates"]["missing_from_store"]
        and not final["unaccounted"]
        and set(MODELS) <= set(final["ps"])
    )
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text)
    return 0 if report["pass"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10)
    length.add_argument("--seconds", type=float, help="a short run (e.g. 120), same checks")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.exit(run(args.seconds if args.seconds is not None else args.minutes * 60, args.out))


if __name__ == "__main__":
    main()
