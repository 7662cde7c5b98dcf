"""Pure construction of a worker's command line and environment.

Model names and user arguments only ever become argv items: nothing here goes through a shell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vllama.config.settings import ModelSpec

# Variables the daemon's environment may carry that must not reach a worker: systemd's notify socket
# (a worker writing READY=1 there would confuse systemd about the daemon's own state) and its
# watchdog settings.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")


def build_argv(
    command: Sequence[str],
    name: str,
    spec: ModelSpec,
    host: str,
    port: int,
    placement: Sequence[str] = (),
) -> list[str]:
    """`placement`: arguments the scheduler adds (a memory share), after the model's own."""
    return [
        *command,
        "--model",
        spec.model,
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        # vllama logs every request itself (with its request id); the worker's uvicorn access
        # log would repeat each one, and relaying those lines costs the daemon CPU per request.
        "--disable-uvicorn-access-log",
        *spec.args,
        *placement,
    ]


def build_env(
    base: Mapping[str, str], spec: ModelSpec, placement: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`placement`: what the scheduler pins (CUDA_VISIBLE_DEVICES); it wins over the model's."""
    env = {key: value for key, value in base.items() if key not in _NOT_INHERITED}
    # Python buffers a pipe's output; the supervisor reads it line by line for progress and errors.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec.env)
    env.update(placement or {})
    return env
