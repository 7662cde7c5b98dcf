"""Pure construction of a worker's command line and environment.

Model names and user arguments only ever become argv items: nothing here goes through a shell.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from vllama.config import vllm_args
from vllama.config.settings import ModelSpec

# Variables the daemon's environment may carry that must not reach a worker: systemd's notify socket
# (a worker writing READY=1 there would confuse systemd about the daemon's own state) and its
# watchdog settings, and the daemon's keys (admin, and the keyed list: a worker never needs them,
# and any local user may read a process's environment through a core dump or a debugger it is
# allowed).
_NOT_INHERITED = (
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "VLLAMA_API_KEY",
    "VLLAMA_API_KEYS",
)


def build_argv(
    command: Sequence[str],
    name: str,
    spec: ModelSpec,
    host: str,
    port: int,
    share: Sequence[str] = (),
) -> list[str]:
    """`share`: arguments the scheduler adds (a memory share), after the model's own."""
    own = vllm_args.has_flag(spec.args, vllm_args.EXECUTOR_BACKEND)  # the operator's choice wins
    ray = vllm_args.RAY_ARGS if spec.ray is not None and not own else ()
    return [
        *command,
        *vllm_args.server_args(spec.model, name, host, port),
        *spec.args,
        *ray,
        *share,
    ]


def guarded(argv: Sequence[str]) -> list[str]:
    """`argv` run under the worker guard (engine/guard.py), which ties the worker's process group
    to this daemon's life. The same interpreter: the guard is part of vllama."""
    return [sys.executable, "-m", "vllama.engine.guard", str(os.getpid()), "--", *argv]


def base_env(base: Mapping[str, str]) -> dict[str, str]:
    """What every worker's environment starts from (a warm spare's whole environment)."""
    env = {key: value for key, value in base.items() if key not in _NOT_INHERITED}
    # Python buffers a pipe's output; the supervisor reads it line by line for progress and errors.
    env["PYTHONUNBUFFERED"] = "1"
    # vLLM reports usage to its authors unless told not to; a daemon's workers never phone
    # home on their own. The operator's environment or the model's `env` may say otherwise.
    for name in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
        env.setdefault(name, "1")
    return env


def build_env(
    base: Mapping[str, str], spec: ModelSpec, share: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`share`: what the scheduler pins (CUDA_VISIBLE_DEVICES); it wins over the model's."""
    env = base_env(base)
    if spec.ray_address is not None:  # vLLM (its driver) joins the cluster named here
        env["RAY_ADDRESS"] = spec.ray_address
    env.update(spec.env)
    env.update(share or {})
    return env
