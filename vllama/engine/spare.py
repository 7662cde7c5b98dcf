"""A warm spare: a Python process that has already imported the engine (vLLM's OpenAI server,
torch, transformers: ~10 s of a cold start on 2 cores) and touched no device, waiting for the
model it will serve.

`python -m vllama.engine.spare -- COMMAND...`, run under the worker guard like any worker.
COMMAND is the engine command (`python -m MODULE` or `python SCRIPT`): a module is imported now;
a script is only run later. When the import is done the spare prints `SPARE_READY` (or
`SPARE_UNFIT reason` if importing initialised CUDA, after which CUDA_VISIBLE_DEVICES could no
longer be honoured) and reads one JSON line on stdin: `{"argv": [...], "env": {...}}`, the
engine arguments and the whole environment of the model it now serves. It takes that
environment, names itself after the full command line (so `ps` and operators see the model's
arguments), and runs the engine as `python -m MODULE ARGS` would. End of stdin: exit 0.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from collections.abc import Callable

READY = "SPARE_READY"
UNFIT = "SPARE_UNFIT"


def parse_command(command: list[str]) -> tuple[str, str]:
    """("module", name) for `python -m name`, ("script", path) for `python path`."""
    if not command or not os.path.basename(command[0]).startswith("python"):
        raise ValueError(f"not a Python command: {command!r}")
    if len(command) >= 3 and command[1] == "-m":
        return "module", command[2]
    if len(command) >= 2 and not command[1].startswith("-"):
        return "script", command[1]
    raise ValueError(f"not an engine command a spare can run: {command!r}")


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def _title_setter() -> Callable[[str], None]:
    """setproctitle's setter, primed now: it finds the memory to rewrite through the original
    environment, which the spare replaces later. A no-op where it is not installed."""
    try:
        import setproctitle  # a dependency of vLLM
    except ImportError:
        return lambda title: None
    setproctitle.setproctitle(setproctitle.getproctitle())
    return setproctitle.setproctitle


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        print("usage: python -m vllama.engine.spare -- COMMAND...", file=sys.stderr)
        return 2
    command = argv[1:]
    kind, target = parse_command(command)
    set_title = _title_setter()
    if kind == "module":
        importlib.import_module(target)
    if _cuda_initialized():
        print(f"{UNFIT} importing {target} initialised CUDA", flush=True)
    else:
        print(READY, flush=True)
    line = sys.stdin.readline()
    if not line:
        return 0  # the daemon no longer needs this spare
    order = json.loads(line)
    engine_args = [str(arg) for arg in order["argv"]]
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in order["env"].items()})
    set_title(" ".join([*command, *engine_args]))
    sys.argv = [target, *engine_args]
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
