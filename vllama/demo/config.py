"""The configuration `vllama serve` uses when no config file is given: the local demo models.

No model hub is assumed: the demo models are built locally on first use (a few seconds, ~3 MB) and
cached in the models folder. They have random weights, so their text is gibberish, but every byte
of it comes from a real vLLM engine. The chat model's context is 65,536 tokens, and its answers end
on their own about 50 tokens in (a clock in its weights: `vllama.demo.build._end_answers`), with
thinking on, after closing a thinking block about 22 tokens in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_CHAT_MODEL = "tiny"
DEMO_EMBED_MODEL = "tiny-embed"
DEMO_RERANK_MODEL = "tiny-rerank"

# Eager mode skips torch.compile (about half of a CPU start-up); float32 is the checkpoints' own
# dtype (vLLM's "auto" picks bf16/fp16 on CPU and warns per weight); a 1 GiB KV cache is plenty
# for these toys (524,288 tokens of the chat model: 8 full 65,536-token contexts) and keeps each
# worker near 3 GB of host RAM on the CPU engine.
# Thinking is off unless a request asks for it (Claude Code does; Ollama's `think`, OpenAI's
# `chat_template_kwargs` can): the answer is then ~22 tokens of thinking, a `</think>` its weights
# emit, and ~25 of content. Off by default, a plain request's whole ~50-token answer is content.
DEMO_ARGS = (
    "--enforce-eager",
    "--dtype",
    "float32",
    "--default-chat-template-kwargs",
    '{"enable_thinking": false}',
)
DEMO_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def demo_models_spec(paths: dict[str, Path]) -> dict[str, Any]:
    """`paths`: what `ensure_demo_models` built, by kind."""
    names = {"chat": DEMO_CHAT_MODEL, "embed": DEMO_EMBED_MODEL, "rerank": DEMO_RERANK_MODEL}
    return {
        names[kind]: {"model": str(path), "args": list(DEMO_ARGS), "env": dict(DEMO_ENV)}
        for kind, path in paths.items()
    }


def demo_config_data(models_dir: Path) -> dict[str, Any]:
    from vllama.demo.build import ensure_demo_models

    return {"models": demo_models_spec(ensure_demo_models(models_dir))}
