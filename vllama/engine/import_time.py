"""Which environment variables are read while the engine's stack is imported: a process that
imported it under other values cannot stand in for one started under these (a warm spare
becoming a model, engine/spares.py; its zygote forking an engine process, engine/zygote.py)."""

from __future__ import annotations

from collections.abc import Mapping

# Environment variables read while Python, torch, transformers or vLLM are imported (or that
# change what is imported).
IMPORT_TIME_PREFIXES = (
    "PYTHON",
    "LD_",
    "OMP_",
    "MKL_",
    "KMP_",
    "GOMP_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "TORCH",
    "PYTORCH_",
    "TRITON_",
    "CUDA_HOME",
    "CUDA_MODULE_LOADING",
    "NCCL_",
    "VLLM_LOGGING",
    "VLLM_CONFIGURE_LOGGING",
    "VLLM_PLUGINS",
    "VLLM_USE_MODELSCOPE",
    "VLLM_TARGET_DEVICE",
    "XDG_CACHE_HOME",
    "HOME",
)


def unfit_variable(imported_env: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    """The first variable read at import that `env` sets differently, else None."""
    for name in sorted(set(imported_env) | set(env)):
        if imported_env.get(name) != env.get(name) and name.startswith(IMPORT_TIME_PREFIXES):
            return name
    return None
