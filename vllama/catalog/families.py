"""Which vLLM parsers make a model's tools and thinking work, decided from its own files.

Ollama users expect `tools` and `think` to just work. vLLM 0.32 needs flags for both:
`--enable-auto-tool-choice --tool-call-parser X` and `--reasoning-parser Y`, and a chat-template
switch that turns thinking on and off. `detect` reads what a model's files say (config.json, the
chat template's markers, the tokenizer's special tokens, the file names) and never picks a parser
whose tokens the vocabulary lacks: vLLM would refuse to start. `choose` applies the operator's
overrides. Pure: the caller reads the files.

The facts read from vLLM 0.32.0's source that detection relies on (each parser's tokens and
thinking switch) are the tables below; paths in their comments are inside the installed `vllm`
package. Keep them in step with the pinned vLLM: a name that is not registered, or a parser whose
tokens are missing, stops vLLM at start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from vllama.config import vllm_args
from vllama.config.vllm_args import REASONING_PARSERS, TOOL_PARSERS

__all__ = ["REASONING_PARSERS", "TOOL_PARSERS", "Parsers", "ThinkingSwitch", "choose", "detect"]

AUTO_TOOLS = vllm_args.AUTO_TOOL_CHOICE
NO_AUTO_TOOLS = "--no-enable-auto-tool-choice"  # vLLM's boolean flags have a --no- form
TOOL_FLAG = vllm_args.TOOL_PARSER
REASONING_FLAG = vllm_args.REASONING_PARSER
NONE = "none"  # in the config table: turn that role off

# The chat_template_kwargs key that turns thinking on/off; "reasoning_effort" is the top-level
# request field.
ThinkingSwitch = Literal["enable_thinking", "thinking", "reasoning_effort"]


# --- what vLLM 0.32's parsers need, read from its source -------------------------------

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


# --- the decision -------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsers:
    """What one model gets: its parsers, and how its thinking is switched."""

    family: str  # short label for docs and logs
    tool_parser: str | None  # a registered --tool-call-parser name
    reasoning_parser: str | None  # a registered --reasoning-parser name
    # chat_template_kwargs key that turns thinking on/off ("reasoning_effort": the top-level
    # request field); None when the model cannot switch (always thinks, or never).
    thinking_switch: ThinkingSwitch | None
    always_thinks: bool = False  # thinking cannot be turned off (R1 distills, QwQ, gpt-oss)
    # Flags the model's own `args` already carry (set by `choose`): engine_args leaves them out.
    given_flags: frozenset[str] = field(default=frozenset(), kw_only=True)

    def engine_args(self) -> tuple[str, ...]:
        """vLLM arguments for this decision, minus the flags the model's own args give."""
        args: list[str] = []
        if self.tool_parser:
            # Without auto tool choice 0.32 ignores the tool parser altogether
            # (ParserManager.get_tool_parser), so a named parser always comes with it.
            if AUTO_TOOLS not in self.given_flags:
                args.append(AUTO_TOOLS)
            if TOOL_FLAG not in self.given_flags:
                args += [TOOL_FLAG, self.tool_parser]
        if self.reasoning_parser and REASONING_FLAG not in self.given_flags:
            args += [REASONING_FLAG, self.reasoning_parser]
        return tuple(args)


UNKNOWN = Parsers("unknown", None, None, None)


def detect(
    config: Mapping[str, object],
    template: str,
    special_tokens: frozenset[str],
    file_names: frozenset[str],
    tokenizer_config: Mapping[str, object],
) -> Parsers:
    """The parsers for a model, from its config.json, chat template ("" if none), the
    tokenizer's added/special tokens, its top-level file names and tokenizer_config.json.

    For a Mistral-native folder the caller may add tekken.json's special tokens to
    `special_tokens`: [THINK] among them is what marks a Magistral (reasoning) model.
    """
    raw = config.get("architectures")
    archs = tuple(a for a in raw if isinstance(a, str)) if isinstance(raw, list) else ()
    model_type = config.get("model_type")
    model = _Model(archs, model_type if isinstance(model_type, str) else "", template)
    native = _mistral_native(file_names)
    # The mistral tokenizer vLLM picks for such a folder reads tekken.json (or a v3+ SentencePiece
    # model), which holds the control tokens; tokenizer.json may be absent.
    vocab = special_tokens | frozenset(["[TOOL_CALLS]"] if native == "tools" else [])
    if model.model_type == "gpt_oss" or "GptOssForCausalLM" in archs:
        # vLLM serves gpt-oss through Harmony, which accepts only these two parsers.
        guess = Parsers("gpt-oss", "openai", "openai_gptoss", "reasoning_effort", True)
    elif native:
        # vLLM picks the mistral tokenizer for these (vllm/tokenizers/registry.py), which ignores
        # chat templates and rejects chat_template_kwargs; reasoning_effort reaches it (v15+).
        thinks = "[THINK]" in vocab
        guess = Parsers(
            "magistral" if thinks else "mistral",
            "mistral",
            "mistral" if thinks else None,
            "reasoning_effort" if thinks else None,
        )
    else:
        guess = _response_template(tokenizer_config, template) or _from_markers(model)
    return _fit(guess, vocab)


def choose(
    detected: Parsers,
    tool_parser: str | None,
    reasoning_parser: str | None,
    explicit_args: Sequence[str],
) -> Parsers:
    """Apply the operator's overrides to `detected`.

    `tool_parser`/`reasoning_parser` come from the model's config table: None keeps detection,
    "none" turns the role off, a name replaces it (ValueError when vLLM 0.32 has no such name).
    Explicit vLLM args win over both: a role they set is taken from them, and engine_args() does
    not repeat their flags. Names in args are not checked: a --tool-parser-plugin may add some.
    """
    _check_name(tool_parser, TOOL_PARSERS, "tool_parser")
    _check_name(reasoning_parser, REASONING_PARSERS, "reasoning_parser")
    tool, tool_mine = _override(detected.tool_parser, tool_parser)
    reasoning, reasoning_mine = _override(detected.reasoning_parser, reasoning_parser)
    given: set[str] = set()
    if vllm_args.has_flag(explicit_args, TOOL_FLAG):
        given.add(TOOL_FLAG)
        tool, tool_mine = vllm_args.flag_value(explicit_args, TOOL_FLAG) or None, True
    auto = _auto_tools(explicit_args)
    if auto is not None:
        given.add(AUTO_TOOLS)
        if not auto:
            tool, tool_mine = None, True  # vLLM ignores any tool parser then
    if vllm_args.has_flag(explicit_args, REASONING_FLAG):
        given.add(REASONING_FLAG)
        reasoning = vllm_args.flag_value(explicit_args, REASONING_FLAG) or None
        reasoning_mine = True
    # vLLM refuses "hf" beside another parser (parser_manager.py): a detected role gives way to
    # the operator's choice; two operator choices that clash are a configuration error.
    if tool and reasoning and (tool == "hf") != (reasoning == "hf"):
        if tool_mine and reasoning_mine:
            raise ValueError(
                f"tool parser {tool!r} and reasoning parser {reasoning!r}: vLLM cannot combine"
                ' the "hf" parser with another; set the other role to "none"'
            )
        if tool_mine:
            reasoning = None
        else:
            tool = None
    if reasoning is None:
        switch, always = None, False
    elif reasoning == detected.reasoning_parser:
        switch, always = detected.thinking_switch, detected.always_thinks
    else:
        switch = PARSER_SWITCH.get(reasoning)
        always = reasoning in ALWAYS_THINKS
    return Parsers(detected.family, tool, reasoning, switch, always, given_flags=frozenset(given))


# --- detection ----------------------------------------------------------------------------

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


@dataclass(frozen=True)
class _Model:
    archs: tuple[str, ...]
    model_type: str
    template: str

    def has(self, *markers: str) -> bool:
        return any(marker in self.template for marker in markers)

    def arch(self, *prefixes: str) -> bool:
        return any(a.startswith(prefixes) for a in self.archs)

    def switch(self, *names: ThinkingSwitch) -> ThinkingSwitch | None:
        """The first of `names` the template reads (vLLM drops the kwargs it does not)."""
        return next((n for n in names if uses_var(self.template, n)), None)


_TOOLS_MARKERS = re.compile(r"\[TOOL_CALLS\]|\[AVAILABLE_TOOLS\]")
_MISTRAL_SPM = re.compile(r"tokenizer\.model\.v(\d+)")
_GRANITE3 = ("GraniteForCausalLM", "GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM")
# No chat template to read (tokenizer modes vLLM picks by architecture, config/model.py); these
# checkpoints' tokenizers carry <think>, checked like any other.
_BY_ARCH = {
    "DeepseekV32ForCausalLM": Parsers("deepseek-v3.2", "deepseek_v32", "deepseek_v3", "thinking"),
    "DeepseekV4ForCausalLM": Parsers("deepseek-v4", "deepseek_v4", "deepseek_v4", "thinking"),
    "DeepseekV4ForConditionalGeneration": Parsers(
        "deepseek-v4", "deepseek_v4", "deepseek_v4", "thinking"
    ),
    "DeepseekV41ForCausalLM": Parsers("deepseek-v4.1", "deepseek_v41", "deepseek_v41", "thinking"),
}


def _mistral_native(file_names: frozenset[str]) -> str | None:
    """Whether vLLM serves this folder with the mistral tokenizer: "tools" when that tokenizer
    has tool tokens (v3 on; tekken is v3 or later), "plain" when older, None when not at all.

    vLLM's rule (tokenizers/registry.py): consolidated*.safetensors plus tekken.json or
    tokenizer.model.v*.
    """
    if not any(n.startswith("consolidated") and n.endswith(".safetensors") for n in file_names):
        return None
    versions = [int(m[1]) for n in file_names if (m := _MISTRAL_SPM.fullmatch(n))]
    if "tekken.json" in file_names or any(v >= 3 for v in versions):
        return "tools"
    return "plain" if versions else None


def _response_template(tokenizer_config: Mapping[str, object], template: str) -> Parsers | None:
    """The "hf" parsers, for a tokenizer that declares its output format (response_template)."""
    spec = tokenizer_config.get("response_template")
    fields = spec.get("fields") if isinstance(spec, dict) else None
    if not isinstance(fields, dict):
        return None
    # vLLM refuses each role whose field is missing (parser/response_template.py).
    tool = "hf" if "tool_calls" in fields else None
    reasoning = "hf" if "thinking" in fields else None
    if tool is None and reasoning is None:
        return None
    switch: ThinkingSwitch | None = None
    if reasoning and uses_var(template, "enable_thinking"):
        switch = "enable_thinking"
    return _parsers("response-template", tool, reasoning, switch)


def _think_tags(model: _Model, parser: str = "qwen3") -> tuple[str | None, ThinkingSwitch | None]:
    """`<think>` reasoning: switchable with enable_thinking, or always on when the generation
    prompt opens `<think>` itself (deepseek_r1). Otherwise none: a parser that expects thinking
    would file a non-thinking answer as thinking."""
    if not model.has(*THINK):
        return None, None
    if model.switch("enable_thinking"):
        return parser, "enable_thinking"
    return ("deepseek_r1", None) if opens_think(model.template) else (None, None)


def _parsers(
    family: str, tool: str | None, reasoning: str | None, switch: ThinkingSwitch | None
) -> Parsers:
    """Parsers with always_thinks implied: a reasoning parser with no switch to turn it off."""
    return Parsers(family, tool, reasoning, switch, bool(reasoning) and not switch)


def _from_markers(model: _Model) -> Parsers:
    """Most specific markers first: several families share `<tool_call>`."""
    m, has = model, model.has
    for arch in m.archs:
        if arch in _BY_ARCH:
            return _BY_ARCH[arch]
    deepseek = m.arch("Deepseek")
    if has(DS_ASSISTANT) and not deepseek and m.model_type != "kimi_k2":
        # R1 distills (Qwen/Llama bodies) keep R1's template, tool markers included, but cannot
        # call tools (vLLM docs); their generation prompt opens <think>.
        return _parsers("deepseek-r1-distill", None, "deepseek_r1", None)
    if has("<|tool_calls_section_begin|>") or m.model_type == "kimi_k2":
        tool = "kimi_k2" if has("<|tool_calls_section_begin|>") else None
        reasoning = "kimi_k2" if has(*THINK) else None
        switch = m.switch("thinking", "enable_thinking") if reasoning else None
        return _parsers("kimi-k2", tool, reasoning, switch)
    if has(DS_TOOL_CALLS_BEGIN, DS_ASSISTANT):
        tool = "deepseek_v3" if has(DS_TOOL_CALLS_BEGIN) else None
        if m.switch("thinking"):  # V3.1: hybrid, thinking off by default
            tool = "deepseek_v31" if tool else None
            return _parsers("deepseek-v3.1", tool, "deepseek_v3", "thinking")
        if has("</think>"):  # R1 / R1-0528
            return _parsers("deepseek-r1", tool, "deepseek_r1", None)
        return _parsers("deepseek-v3", tool, None, None)
    if has("<arg_key>"):  # GLM-4.5/4.6/4.7 (glm45 and glm47 are one class in 0.32)
        name = "glm47" if "Glm4MoeLiteForCausalLM" in m.archs else "glm45"
        reasoning = name if has(*THINK) else None
        switch = m.switch("enable_thinking", "thinking") if reasoning else None
        return _parsers("glm", name, reasoning, switch)
    if has("<|tool_call>", "<|channel>") or m.arch("Gemma4"):
        # Gemma 4's parser assumes thinking off unless enable_thinking says otherwise.
        switch = m.switch("enable_thinking") if has("<|channel>") else None
        tool = "gemma4" if has("<|tool_call>") else None
        return _parsers("gemma4", tool, "gemma4" if switch else None, switch)
    if has("<start_function_call>"):
        return _parsers("functiongemma", "functiongemma", None, None)
    if has("<seed:tool_call>"):
        return _parsers("seed-oss", "seed_oss", "seed_oss" if has("<seed:think>") else None, None)
    granite = has("<|start_of_role|>")
    xml = has("<function=") and has("<parameter=")
    if granite and m.arch(*_GRANITE3):
        # Granite 3.x: a JSON array after <|tool_call|> (3.0) or plain-text <tool_call> (3.1+);
        # 3.2+ think in prose ("Here is my thought process:") when the template's `thinking` is on.
        tool = "granite" if has("<|tool_call|>", "<tool_call>") else None
        reasoning = "granite" if has("thought process") else None
        return _parsers("granite3", tool, reasoning, m.switch("thinking") if reasoning else None)
    if granite:  # Granite 4: one JSON object per <tool_call>; 4.2 thinks in Nemotron's format
        tool = "qwen3_coder" if xml else "granite4" if has("<tool_call>") else None
        tool = tool or ("granite" if has("<|tool_call|>") else None)
        return _parsers("granite4", tool, *_think_tags(m, "granite_thinking_parser"))
    if xml:  # <tool_call><function=name><parameter=k>v</parameter>: Qwen3-Coder, Qwen3.5+
        nemotron = m.arch("NemotronH")
        reasoning, switch = _think_tags(m, "nemotron_v3" if nemotron else "qwen3")
        family = "nemotron3" if nemotron else "qwen3.5" if reasoning == "qwen3" else "qwen3-coder"
        return _parsers(family, "qwen3_coder", reasoning, switch)
    if has("<tool_call>"):  # JSON in <tool_call>: Qwen2.5, QwQ, Qwen3, Hermes
        reasoning, switch = _think_tags(m)
        family = "qwen3" if switch else "qwq" if reasoning else "hermes"
        return _parsers(family, "hermes", reasoning, switch)
    if has("<|header_start|>") or m.arch("Llama4"):
        tool = (
            "llama4_pythonic" if has("<|python_start|>") or uses_var(m.template, "tools") else None
        )
        return _parsers("llama4", tool, None, None)
    if has("<|start_header_id|>"):  # Llama 3.x (3.0 has no <|python_tag|>: dropped by _fit)
        tool = "llama3_json" if has("<|python_tag|>") or uses_var(m.template, "tools") else None
        return _parsers("llama3", tool, *_think_tags(m))
    if (
        (has("[INST]") and not has("<<SYS>>"))  # <<SYS>>: Llama 2, which has no tools
        or _TOOLS_MARKERS.search(m.template)
        or m.arch("Mistral", "Mixtral", "Pixtral")
    ):
        tool = "mistral" if _TOOLS_MARKERS.search(m.template) else None
        reasoning = "mistral" if has("[THINK]") else None
        switch = m.switch("reasoning_effort", "enable_thinking") if reasoning else None
        return _parsers("magistral" if reasoning else "mistral", tool, reasoning, switch)
    if has("functools"):  # Phi-4-mini: functools[{...}]
        return _parsers("phi4-mini", "phi4_mini_json", None, None)
    pythonic = "pythonic" if asks_pythonic(m.template) else None
    if has("<start_of_turn>") or m.arch("Gemma3", "Gemma2"):
        # Gemma 2/3 templates have no tool support; only a pythonic one enables tools.
        return _parsers("gemma3", pythonic, None, None)
    reasoning, switch = _think_tags(m)
    if pythonic or reasoning:
        return _parsers("pythonic" if pythonic else "think-tags", pythonic, reasoning, switch)
    return UNKNOWN


def _fit(guess: Parsers, vocab: frozenset[str]) -> Parsers:
    """Drop each role whose parser needs tokens the vocabulary lacks (vLLM would not start)."""
    tool = guess.tool_parser
    if tool and not all(t in vocab for t in TOOL_TOKENS.get(tool, ())):
        guess = replace(guess, tool_parser=None)
    reasoning = guess.reasoning_parser
    if reasoning and not all(t in vocab for t in REASONING_TOKENS.get(reasoning, ())):
        guess = replace(guess, reasoning_parser=None, thinking_switch=None, always_thinks=False)
    return guess


# --- overrides ----------------------------------------------------------------------------


def _check_name(name: str | None, known: frozenset[str], role: str) -> None:
    if name is not None and name != NONE and name not in known:
        raise ValueError(
            f'unknown {role} {name!r}: vLLM 0.32 has {", ".join(sorted(known))} (or "none")'
        )


def _override(detected: str | None, wanted: str | None) -> tuple[str | None, bool]:
    """The role's parser and whether the operator chose it."""
    if wanted is None:
        return detected, False
    return (None if wanted == NONE else wanted), True


def _auto_tools(args: Sequence[str]) -> bool | None:
    """--enable-auto-tool-choice (True) or its --no- form (False) as the args leave it."""
    state: bool | None = None
    for arg in args:
        if vllm_args.has_flag([arg], AUTO_TOOLS):
            state = True
        elif vllm_args.has_flag([arg], NO_AUTO_TOOLS):
            state = False
    return state
