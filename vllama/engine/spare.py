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

Before it is ready, a spare of a module forks its zygote (engine/zygote.py), which the engine's
own `spawn`s (vLLM's engine core and workers) then come from; a line `SPARE_NOTE reason` says why
not, where it is not safe to. A spare of vLLM's CPU build first executes itself again with what
vLLM will set for its engine processes (engine/engine_env.py): a zygote forks only spawns whose
import-time environment is its own. For the same reason it starts a second zygote with the OpenMP
binding vLLM gives its worker (`--spawn-env` names such variables for other engines: tests).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import runpy
import sys
from collections.abc import Callable, Mapping

from vllama.engine import engine_env, zygote

READY = "SPARE_READY"
UNFIT = "SPARE_UNFIT"
NOTE = "SPARE_NOTE"
# Set in the spare executed again with engine_env's preset: what those variables were before.
PRESET_MARK = "VLLAMA_SPARE_PRESET"
# What vLLM's engine core and executor workers import beyond its API server.
VLLM_PRELOAD = (
    "vllm.v1.engine.core",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.cpu_worker",
)


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


def import_changes(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str | None]:
    """What importing the engine did to the environment (None: removed)."""
    changes: dict[str, str | None] = {k: v for k, v in after.items() if before.get(k) != v}
    changes.update({k: None for k in before if k not in after})
    return changes


def with_import_changes(
    env: Mapping[str, str], before: Mapping[str, str], changes: Mapping[str, str | None]
) -> dict[str, str]:
    """`env` as it would be once the engine is imported under it: the same changes (the spare
    fits `env` only where the variables read at import are the same), except where `env` itself
    sets a variable otherwise than the spare started with."""
    result = dict(env)
    for name, value in changes.items():
        if env.get(name) != before.get(name):
            continue
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def _title_setter() -> Callable[[str], None]:
    """setproctitle's setter, primed now: it finds the memory to rewrite through the original
    environment, which the spare replaces later. A no-op where it is not installed."""
    try:
        import setproctitle  # a dependency of vLLM
    except ImportError:
        return lambda title: None
    setproctitle.setproctitle(setproctitle.getproctitle())
    return setproctitle.setproctitle


def _zygote(
    command: list[str], target: str, started: Mapping[str, str], spawn_env: Mapping[str, str]
) -> zygote.Zygote | None:
    """The zygote for `target`'s spawns, None (and why, on stdout) where it is not safe; and a
    second one for the spawns the engine makes with `spawn_env` (engine/engine_env.py) set,
    started from this spare's environment as it `started`."""
    preload = [m for m in VLLM_PRELOAD if target.startswith("vllm.") and _importable(m)]
    first = zygote.start(preload, " ".join(["vllama.engine.spare zygote --", *command]))
    if isinstance(first, str):
        print(f"{NOTE} no zygote: {first}", flush=True)
        return None
    atexit.register(first.remove_folder)
    if spawn_env:
        title = " ".join(["vllama.engine.spare second zygote --", *command])
        why = zygote.start_second(first, {**started, **spawn_env}, preload, title)
        if why is not None:
            print(f"{NOTE} no second zygote: {why}", flush=True)
    return first


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def environment_before_preset() -> dict[str, str]:
    """The environment the spare was started with: its own, less the preset (PRESET_MARK), which
    then counts as a change the engine's import made (`with_import_changes` gives it to the
    model's environment, as vLLM would have to the engine's processes)."""
    mark = os.environ.pop(PRESET_MARK, None)
    before = dict(os.environ)
    if mark is not None:
        for name, value in json.loads(mark).items():
            if value is None:
                before.pop(name, None)
            else:
                before[name] = value
    return before


def _exec_with_preset(argv: list[str]) -> None:
    """Execute this spare again with engine_env's preset in its environment, where there is one
    (vLLM's CPU build) and this is not already the spare executed again."""
    if PRESET_MARK in os.environ:
        return
    preset = engine_env.spare_preset(os.environ)
    if not preset:
        return
    originals = {name: os.environ.get(name) for name in preset}
    env = {**os.environ, **preset, PRESET_MARK: json.dumps(originals)}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "vllama.engine.spare", *argv], env)


USAGE = (
    "usage: python -m vllama.engine.spare [--no-zygote] [--spawn-env NAME=VALUE]... -- COMMAND..."
)


def _options(argv: list[str]) -> tuple[bool, dict[str, str], list[str]] | None:
    """(with a zygote, what the engine sets for its spawns, the engine command), None if the
    command line is not the spare's. `--no-zygote`: benchmarks/cold_start.py compares the two.
    `--spawn-env`: for an engine whose spawns engine_env does not know (tests)."""
    with_zygote, spawn_env = True, {}
    rest = list(argv)
    while rest and rest[0] != "--":
        option = rest.pop(0)
        if option == "--no-zygote":
            with_zygote = False
        elif option == "--spawn-env" and rest and "=" in rest[0]:
            name, _, value = rest.pop(0).partition("=")
            spawn_env[name] = value
        else:
            return None
    if len(rest) < 2:
        return None
    return with_zygote, spawn_env, rest[1:]


def main(argv: list[str]) -> int:
    options = _options(argv)
    if options is None:
        print(USAGE, file=sys.stderr)
        return 2
    with_zygote, spawn_env, command = options
    kind, target = parse_command(command)
    zygotes = kind == "module" and with_zygote
    vllm = zygotes and target.startswith("vllm.")
    if vllm:
        _exec_with_preset(argv)
    set_title = _title_setter()
    before = environment_before_preset()
    started = dict(os.environ)  # with the preset
    if kind == "module":
        importlib.import_module(target)
    warm = None
    if _cuda_initialized():
        print(f"{UNFIT} importing {target} initialised CUDA", flush=True)
    else:
        if zygotes:
            if vllm:
                spawn_env = {**engine_env.vllm_worker_env(), **spawn_env}
            warm = _zygote(command, target, started, spawn_env)
        print(READY, flush=True)
    imported = import_changes(before, dict(os.environ))  # the zygote's preloads' changes, too
    line = sys.stdin.readline()
    if not line:
        return 0  # the daemon no longer needs this spare
    order = json.loads(line)
    engine_args = [str(arg) for arg in order["argv"]]
    os.environ.clear()
    os.environ.update(
        with_import_changes({str(k): str(v) for k, v in order["env"].items()}, before, imported)
    )
    set_title(" ".join([*command, *engine_args]))
    if warm is not None:
        warm.use()
    sys.argv = [target, *engine_args]
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
