"""Ollama's request options and flags, validated and mapped to vLLM's sampling parameters."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Literal, TypedDict

from vllama.api.errors import BadRequest


class Sampling(TypedDict, total=False):
    """vLLM's sampling parameters that Ollama's options set."""

    temperature: float
    top_p: float
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    top_k: int
    seed: int
    max_tokens: int
    stop: list[str]


_FloatKey = Literal[
    "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"
]
_FLOAT_OPTIONS: dict[str, _FloatKey] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
_INT_OPTIONS: dict[str, Literal["top_k", "seed"]] = {"top_k": "top_k", "seed": "seed"}
# Ollama runner settings with no vLLM per-request equivalent: accepted and ignored, as Ollama
# ignores options a runner doesn't use (documented in docs/API.md).
IGNORED_OPTIONS = frozenset(
    {
        "num_keep", "typical_p", "repeat_last_n", "num_batch", "num_gpu", "main_gpu",
        "use_mmap", "use_mlock", "num_thread", "low_vram", "numa", "penalize_newline",
        "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "draft_num_predict", "vocab_only",
        "f16_kv", "logits_all", "embedding_only",
    }
)  # fmt: skip


# Options are bounded so that no value can overflow a conversion here or in vLLM (int64 there).
_LIMIT = 2**63 - 1


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return abs(value) <= _LIMIT
    return math.isfinite(value) and abs(value) <= _LIMIT


def _is_int(value: object) -> bool:
    if isinstance(value, bool) or not _is_number(value):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, int) else str(value)[:24]
    return text if len(text) <= 40 else text[:37] + "..."


def map_options(options: object) -> Sampling:
    """Ollama `options` -> vLLM sampling parameters. Unknown keys are ignored, as Ollama does;
    `num_ctx` is checked but sets nothing here (see `fit_output`)."""
    sampling: Sampling = {}
    set_sampling(sampling, options)
    return sampling


def set_sampling(sampling: Sampling, options: object) -> None:
    """`map_options` into `sampling` (a request's body)."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise BadRequest("options must be a JSON object")
    for key, value in options.items():
        if value is None:
            continue
        if key in _FLOAT_OPTIONS:
            if not _is_number(value):
                raise BadRequest(f"option {key!r} must be a number, got {_shown(value)}")
            sampling[_FLOAT_OPTIONS[key]] = float(value)
        elif key in _INT_OPTIONS:
            if not _is_int(value):
                raise BadRequest(f"option {key!r} must be an integer, got {_shown(value)}")
            sampling[_INT_OPTIONS[key]] = int(value)
        elif key == "num_predict":
            if not _is_int(value):
                raise BadRequest(f"option 'num_predict' must be an integer, got {_shown(value)}")
            if int(value) > 0:  # -1 (infinite) and -2 (fill the context) mean "no limit" here
                sampling["max_tokens"] = int(value)
        elif key == "stop":
            sampling["stop"] = _stop_list(value)
        elif key == "num_ctx":
            if not _is_int(value):
                raise BadRequest(f"option 'num_ctx' must be an integer, got {_shown(value)}")


def fit_output(
    sampling: Sampling, options: Mapping[str, object], default: int | None, context: int | None
) -> None:
    """The answer's budget as Ollama bounds it: `num_predict`, else the configured default
    (`max_output_tokens`; not for `num_predict: -2`, "fill the context"), never more than the
    window: the model's context, or `num_ctx` where that is smaller (vLLM's context is fixed per
    worker, so a smaller `num_ctx` bounds the answer only; a larger one is the model's context, as
    Ollama lowers it to the model's trained length). With no budget and no smaller `num_ctx`,
    none is set: vLLM stops at the context."""
    num_ctx = options.get("num_ctx")
    window = context
    if isinstance(num_ctx, int | float) and not isinstance(num_ctx, bool) and num_ctx > 0:
        if context is None or num_ctx < context:
            window = int(num_ctx)
    budget = sampling.get("max_tokens")
    if budget is None and options.get("num_predict") != -2:
        budget = default
    if budget is None:
        budget = window if window != context else None
    elif window is not None:
        budget = min(budget, window)
    if budget is not None:
        sampling["max_tokens"] = budget


def _stop_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest("option 'stop' must be a string or a list of strings")
