"""The configuration `vllama serve` uses when no config file is given: the local demo models.

No model hub is assumed: the demo models are built locally on first use (a few seconds, ~3 MB) and
cached in the models folder. They have random weights, so their text is gibberish, but every byte
of it comes from a real vLLM engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_CHAT_MODEL = "tiny"
DEMO_EMBED_MODEL = "tiny-embed"

# Eager mode skips torch.compile (about half of a CPU start-up); float32 is the checkpoints' own
# dtype (vLLM's "auto" picks bf16/fp16 on CPU and warns per weight); a 1 GiB KV cache is plenty
# for these toys and keeps each worker near 3 GB of host RAM on the CPU engine.
DEMO_ARGS = ("--enforce-eager", "--dtype", "float32")
DEMO_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def demo_models_spec(chat_path: Path, embed_path: Path) -> dict[str, Any]:
    return {
        DEMO_CHAT_MODEL: {"model": str(chat_path), "args": list(DEMO_ARGS), "env": DEMO_ENV},
        DEMO_EMBED_MODEL: {"model": str(embed_path), "args": list(DEMO_ARGS), "env": DEMO_ENV},
    }


def demo_config_data(models_dir: Path) -> dict[str, Any]:
    from vllama.demo.build import ensure_demo_models

    paths = ensure_demo_models(models_dir)
    return {"models": demo_models_spec(paths["chat"], paths["embed"])}
