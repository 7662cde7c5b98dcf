"""Facts read from vLLM 0.32.0's source that parser detection (families.py) relies on: data only.

Paths below are inside the installed `vllm` package. Keep them in step with the pinned vLLM: a
name that is not registered, or a parser whose tokens are missing, stops vLLM at start.
"""

from __future__ import annotations

import re
from typing import Literal

# The chat_template_kwargs key that turns thinking on/off; "reasoning_effort" is the top-level
# request field. Defined here so the tables below can be typed; families.py re-exports it.
ThinkingSwitch = Literal["enable_thinking", "thinking", "reasoning_effort"]

# DeepSeek's markers use a full-width bar (U+FF5C) and SentencePiece's space (U+2581); escaped
# here because they look like ASCII `|` and `_`.
_BAR, _SP = "\uff5c", "\u2581"
DS_USER = f"<{_BAR}User{_BAR}>"
DS_ASSISTANT = f"<{_BAR}Assistant{_BAR}>"
DS_TOOL_CALLS_BEGIN = f"<{_BAR}tool{_SP}calls{_SP}begin{_BAR}>"
DS_TOOL_CALLS_END = f"<{_BAR}tool{_SP}calls{_SP}end{_BAR}>"

THINK = ("<think>", "</think>")

# Tokens each parser needs in the tokenizer's vocabulary. Two reasons, both read from the source:
# (a) the constructor raises, and 0.32 builds every parser once at start
#     (vllm/parser/parser_manager.py `validate_parser_tokenizer`), so vLLM refuses to start;
# (b) the parser engine finds the end of thinking by token id (vllm/parser/engine/parser_engine.py
#     `_derive_reasoning_end_token_ids`): without a single `</think>` token it never sees thinking
#     end, which breaks structured output after it.
# Parsers absent here (hermes, qwen3_coder, granite, granite4, llama4_pythonic, pythonic,
# phi4_mini_json, openai, gemma4 tools, glm45 tools, ...) match plain text and need no token.
TOOL_TOKENS: dict[str, tuple[str, ...]] = {
    "llama3_json": (
        "<|python_tag|>",
    ),  # (a) Llama3JsonToolParser: "could not locate the bot token"
    "llama4_json": ("<|python_tag|>",),  # (a) the same class
    "deepseek_v3": (DS_TOOL_CALLS_BEGIN, DS_TOOL_CALLS_END),  # (a) DeepSeekV3ToolParser
    "deepseek_v31": (DS_TOOL_CALLS_BEGIN, DS_TOOL_CALLS_END),  # (a) DeepSeekV31ToolParser
    "mistral": ("[TOOL_CALLS]",),  # (a) MistralParser: "could not locate the tool call token"
}
REASONING_TOKENS: dict[str, tuple[str, ...]] = {
    "deepseek_r1": THINK,  # (a) BaseThinkingReasoningParser
    # (a) at request time: with thinking on it builds a DeepSeekR1ReasoningParser per request
    "deepseek_v3": THINK,
    "qwen3": THINK,  # (b), as for the other engine parsers below
    "glm45": THINK,
    "glm47": THINK,
    "kimi_k2": THINK,
    "nemotron_v3": THINK,
    "granite_thinking_parser": THINK,
    "deepseek_v4": THINK,
    "deepseek_v41": THINK,
    "seed_oss": ("<seed:think>", "</seed:think>"),
    "gemma4": ("<|channel>", "<channel|>"),
    # (a) the reasoning side builds the whole MistralParser, which needs [TOOL_CALLS]; without
    # [THINK] it falls back to plain-text reasoning or none (vllm/parser/mistral.py).
    "mistral": ("[TOOL_CALLS]", "[THINK]", "[/THINK]"),
}

# The chat-template kwarg (or top-level field) each reasoning parser reads to know whether the
# model thinks; used when an operator picks a parser detection did not. From each parser's
# __init__: qwen3/gemma4/nemotron_v3/granite_thinking/hf read enable_thinking; deepseek_v3/v4,
# kimi_k2 and glm read thinking or enable_thinking; granite's switch is its template's `thinking`.
PARSER_SWITCH: dict[str, ThinkingSwitch] = {
    "qwen3": "enable_thinking",
    "gemma4": "enable_thinking",
    "glm45": "enable_thinking",
    "glm47": "enable_thinking",
    "nemotron_v3": "enable_thinking",
    "granite_thinking_parser": "enable_thinking",
    "hf": "enable_thinking",
    "deepseek_v3": "thinking",
    "deepseek_v4": "thinking",
    "deepseek_v41": "thinking",
    "kimi_k2": "thinking",
    "granite": "thinking",
    "mistral": "reasoning_effort",
    "openai_gptoss": "reasoning_effort",
}
# deepseek_r1 takes everything before `</think>` as thinking: right only for models that always
# think. Harmony (gpt-oss) refuses reasoning_effort="none" (vllm/renderers/online_renderer.py).
ALWAYS_THINKS: frozenset[str] = frozenset({"deepseek_r1", "openai_gptoss"})

# Jinja code (`{{ ... }}` and `{% ... %}`), where a template reads its variables.
_JINJA_CODE = re.compile(r"\{[{%](.*?)[%}]\}", re.DOTALL)
# A generation prompt that opens `<think>` itself: QwQ, Qwen3-Thinking, R1 distills, Olmo-3-Think.
_OPENS_THINK = re.compile(r"(?:assistant|Assistant\uff5c>)(?:\\n|\n)?<think>")
# Templates that ask for Python-list calls, `[f(a=1), g(b=2)]` (vLLM's pythonic templates).
_PYTHONIC = re.compile(r"python list|\[func_name\d*\(", re.IGNORECASE)


def uses_var(template: str, name: str) -> bool:
    """Whether the template's code reads variable `name` (not `x.name`, `'name'`, `enable_name`).

    vLLM drops chat_template_kwargs a template does not reference, so this is how the thinking
    switch a template honours is told apart from one it would silently ignore.
    """
    ident = re.compile(rf"(?<![\w.'\"]){re.escape(name)}(?![\w'\"])")
    return any(ident.search(code) for code in _JINJA_CODE.findall(template))


def opens_think(template: str) -> bool:
    return _OPENS_THINK.search(template) is not None


def asks_pythonic(template: str) -> bool:
    return _PYTHONIC.search(template) is not None and uses_var(template, "tools")
