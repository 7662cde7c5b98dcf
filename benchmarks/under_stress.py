"""Run a test suite several times in a row beside a CPU and memory hog of our own, and report
each run's outcome: issue 22's "the component suite passes ten times in a row beside a stress
process", made repeatable.

The hog is `--spinners` processes that spin on the CPU and one that holds `--hold-gib` GiB and
touches every page of it in a loop (so the kernel cannot treat it as idle). The suite runs with
the README's Python; its pytest arguments follow `--` (default: tests/component). The first
failing run stops the loop unless `--keep-going`; the hog's processes are gone when this exits.

Usage:
  .venv/bin/python benchmarks/under_stress.py --runs 10 [--out report.json] [-- tests/component -x]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096


def spin() -> None:
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def hold(gib: float) -> None:
    block = bytearray(int(gib * 2**30))
    while True:
        for i in range(0, len(block), PAGE):
            block[i] = (block[i] + 1) & 0xFF
        time.sleep(0.5)


def start_hog(spinners: int, hold_gib: float) -> list[mp.Process]:
    procs = [mp.Process(target=spin, daemon=True) for _ in range(spinners)]
    if hold_gib > 0:
        procs.append(mp.Process(target=hold, args=(hold_gib,), daemon=True))
    for p in procs:
        p.start()
    return procs


def stop_hog(procs: list[mp.Process]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.join(timeout=10)


def summary_of(output: str) -> str:
    """pytest's last line, e.g. '420 passed, 1 failed in 35.2s'."""
    lines = [line for line in output.splitlines() if re.search(r"\b(passed|failed|error)", line)]
    return lines[-1].strip("= ") if lines else "(no summary)"


def run_once(pytest_args: list[str], log: Path) -> dict[str, Any]:
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    text = log.read_text(errors="replace")
    return {
        "rc": proc.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "summary": summary_of(text),
        "failures": re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M),
        "log": str(log),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--spinners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--hold-gib", type=float, default=4.0)
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/under_stress"))
    parser.add_argument("pytest_args", nargs="*", default=["tests/component"])
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)

    # Started in the background by a non-interactive shell, this process (and so the suite)
    # would ignore SIGINT: a run in a terminal does not, and tests send it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    hog = start_hog(args.spinners, args.hold_gib)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[dict[str, Any]] = []
    try:
        for n in range(1, args.runs + 1):
            result = run_once(args.pytest_args, args.logs / f"run-{n}.log")
            results.append(result)
            said = f"run {n}: rc={result['rc']} {result['seconds']} s  {result['summary']}"
            print(said, flush=True)
            for failure in result["failures"]:
                print(f"  {failure}", flush=True)
            if result["rc"] != 0 and not args.keep_going:
                break
    finally:
        stop_hog(hog)
    report = {
        "hog": {"spinners": args.spinners, "hold_gib": args.hold_gib},
        "pytest_args": args.pytest_args,
        "runs": results,
        "green_in_a_row": next((i for i, r in enumerate(results) if r["rc"] != 0), len(results)),
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return 0 if all(r["rc"] == 0 for r in results) and len(results) == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
