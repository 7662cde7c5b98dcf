"""What the catalog hands the scheduler about a model: `ModelFacts`, read from its files, and the
one sizing rule it computes itself (KV cache bytes per token, from config.json: what a GPU share
must hold for one request of the model's context; vLLM refuses to start otherwise).

A value type and a pure function, importing nothing of vllama: scheduling may import this module
(and no other of catalog), so the type lives with the part that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFacts:
    """What the catalog reads from a model's files that starting its worker needs."""

    weight_bytes: int = 0  # the weights vLLM loads; 0 when unknown (not downloaded, offline)
    weight_files: tuple[str, ...] = ()  # their files, where they are on disk
    engine_args: tuple[str, ...] = ()  # vLLM arguments chosen for it (parsers, adapters)
    kv_bytes_per_token: int | None = None  # KV cache per token of context, from config.json
    context_length: int | None = None  # the model's full context, from config.json
    # The profile run's shapes, from config.json (0: unknown): its peak grows with them.
    vocab_size: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    kv_replicated: bool = False  # MLA: each tensor-parallel GPU holds the whole latent cache
    # A request the model serves, sent after a wake from sleep mode to warm it up.
    warm_up: tuple[str, tuple[tuple[str, object], ...]] | None = None


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "float8_e4m3fn": 1}


def kv_bytes_per_token(config: dict[str, Any]) -> int | None:
    """Bytes of KV cache one token takes across all layers, at the model's dtype (vLLM's
    default KV dtype); None when the config does not say enough. An upper bound for models with
    sliding-window layers, which is the safe side for placement."""
    text = config.get("text_config")
    merged = {**config, **text} if isinstance(text, dict) else config
    layers = _int(merged.get("num_hidden_layers"))
    dtype = merged.get("torch_dtype") or merged.get("dtype") or config.get("torch_dtype")
    size = _DTYPE_BYTES.get(str(dtype), 2)
    if layers is None:
        return None
    lora_rank = _int(merged.get("kv_lora_rank"))
    if lora_rank is not None:  # multi-head latent attention (DeepSeek V2/V3): one latent
        rope = _int(merged.get("qk_rope_head_dim")) or 0
        return layers * (lora_rank + rope) * size
    heads = _int(merged.get("num_attention_heads"))
    kv_heads = _int(merged.get("num_key_value_heads")) or heads
    hidden = _int(merged.get("hidden_size"))
    head_dim = _int(merged.get("head_dim")) or (hidden // heads if hidden and heads else None)
    if kv_heads is None or head_dim is None:
        return None
    return 2 * layers * kv_heads * head_dim * size


def profile_shapes(config: dict[str, Any]) -> dict[str, Any]:
    """The `ModelFacts` fields vLLM's profile run depends on, from config.json (a multimodal
    model's text part where it has one)."""
    text = config.get("text_config")
    merged = {**config, **text} if isinstance(text, dict) else config
    return {
        "vocab_size": _int(merged.get("vocab_size")) or 0,
        "hidden_size": _int(merged.get("hidden_size")) or 0,
        "intermediate_size": _int(merged.get("intermediate_size")) or 0,
        "kv_replicated": _int(merged.get("kv_lora_rank")) is not None,
    }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
