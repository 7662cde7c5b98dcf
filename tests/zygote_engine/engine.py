"""The engine: spawns a child (and the child a grandchild, as vLLM's engine core spawns its
workers), one that exits 3, and one that is terminated; prints one JSON line `RESULT {...}`."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from tests.zygote_engine import marker


def seen() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "forked": marker.IMPORTED_BY != os.getpid(),
        "order_env": os.environ.get("ZYGOTE_TEST_ORDER"),
        "cwd": os.getcwd(),
        "parent_title": _title(os.getppid()),
        "hash_seed": os.environ.get("PYTHONHASHSEED"),
    }


def _title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().replace(b"\0", b" ").decode(errors="replace")


def child(pipe: Connection, nested: bool) -> None:
    report = seen()
    if nested:
        ctx = multiprocessing.get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        grandchild = ctx.Process(target=child, args=(writer, False))
        grandchild.start()
        report["child"] = reader.recv()
        grandchild.join(60)
        report["child_exitcode"] = grandchild.exitcode
    pipe.send(report)


def exit_three() -> None:
    sys.exit(3)


def sleep() -> None:
    time.sleep(60)


def main() -> None:
    # As vLLM's platform does for the processes it starts: set only in the spawner's environment.
    name, _, value = os.environ.get("ZYGOTE_TEST_CHILD_ENV", "").partition("=")
    if name:
        os.environ[name] = value
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    first = ctx.Process(target=child, args=(writer, True))
    first.start()
    result: dict[str, Any] = {"parent": os.getpid(), "child": reader.recv()}
    first.join(60)
    result["child_exitcode"] = first.exitcode
    failing = ctx.Process(target=exit_three)
    failing.start()
    failing.join(60)
    result["exit_three"] = failing.exitcode
    sleeper = ctx.Process(target=sleep)
    sleeper.start()
    time.sleep(0.5)
    sleeper.terminate()
    sleeper.join(60)
    result["terminated"] = sleeper.exitcode
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
