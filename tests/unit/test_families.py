"""Which vLLM parsers a model gets from its own files (vllama/catalog/families.py).

Template snippets quote each family's real markers (templates store `\\n` inside Jinja strings,
hence raw strings). DeepSeek's markers are built from escapes: their full-width bar looks like `|`.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vllama.catalog import families as fm
from vllama.catalog.families import (
    REASONING_PARSERS,
    TOOL_PARSERS,
    Parsers,
    choose,
    detect,
)

THINK = frozenset(fm.THINK)
CHATML = frozenset({"<|im_start|>", "<|im_end|>", "<|endoftext|>"})
QWEN_TOKENS = CHATML | {"<tool_call>", "</tool_call>"} | THINK
HERMES_JSON = (
    r"<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
)
QWEN_TOOLS = r"{%- if tools %}{{- '<|im_start|>system\n# Tools\n' }}" + HERMES_JSON + "{%- endif %}"
QWEN_SPLIT = r"{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}"
QWEN_GEN = r"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
QWEN3_SWITCH = (
    r"{%- if enable_thinking is defined and enable_thinking is false %}"
    r"{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
)
XML_CALL = (
    r"<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\n"
    r"value_1\n</parameter>\n</function>\n</tool_call>"
)
DS_BAR, DS_SP = "\uff5c", "\u2581"
DS_TOKENS = frozenset(
    f"<{DS_BAR}{name}{DS_BAR}>"
    for name in ("begin" + DS_SP + "of" + DS_SP + "sentence", "User", "Assistant")
) | {fm.DS_TOOL_CALLS_BEGIN, fm.DS_TOOL_CALLS_END, f"<{DS_BAR}tool{DS_SP}call{DS_SP}begin{DS_BAR}>"}
DS_TEMPLATE = (
    "{%- if message['role'] == 'user' %}{{'" + fm.DS_USER + "' + message['content']}}{%- endif %}"
    "{%- for tool in message['tool_calls'] %}{{'" + fm.DS_TOOL_CALLS_BEGIN + "'}}{%- endfor %}"
)
DS_GEN = "{% if add_generation_prompt %}{{'" + fm.DS_ASSISTANT + "'}}{% endif %}"
DS_R1_GEN = "{% if add_generation_prompt %}{{'" + fm.DS_ASSISTANT + r"<think>\n'}}{% endif %}"
DS_R1_SPLIT = "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
LLAMA3 = (
    r'{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}'
    r'{%- if tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}'
    r"{{- '<|python_tag|>' + tool_call.name + '.call(' }}"
)
LLAMA3_TOKENS = frozenset({"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"}) | {
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
}
GEMMA4 = (
    r"{{- '<|turn>system\n' }}{%- if enable_thinking %}{{- '<|think|>' }}{%- endif %}"
    r"{{- '<|tool_call>call:' + tool_call.function.name + '{' }}{{- '}<tool_call|>' }}"
    r"{{- '<|channel>thought\n' + reasoning + '<channel|>' }}"
)
GEMMA4_TOKENS = frozenset({"<|turn>", "<turn|>", "<|tool_call>", "<tool_call|>", "<|channel>"}) | {
    "<channel|>"
}
GRANITE_ROLE = r"{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' }}"
GRANITE32 = (
    GRANITE_ROLE + r"{%- if tools %}{{- '<|start_of_role|>available_tools<|end_of_role|>' }}"
    r"{%- endif %}{{- '<|tool_call|>' + message['tool_calls'] | tojson }}"
    r"{%- if thinking %}{{- 'write your thoughts after \'Here is my thought process:\'' }}"
    r"{%- endif %}"
)
GLM = (
    r"[gMASK]<sop>{%- if tools %}<|system|>\n# Tools{%- endif %}"
    r"<tool_call>{{ tc.name }}<arg_key>{{ k }}</arg_key><arg_value>{{ v }}</arg_value></tool_call>"
    r"{%- if add_generation_prompt -%}<|assistant|>"
    r"{{- '\n<think></think>' if (enable_thinking is defined and not enable_thinking) else '' -}}"
)
KIMI = (
    r"{%- if tools %}<|im_system|>tool_declare<|im_middle|>{{ tools | tojson }}<|im_end|>"
    r"{%- endif %}<|tool_calls_section_begin|><|tool_call_begin|>{{ tc.id }}"
    r"<|tool_call_argument_begin|>{{ tc.function.arguments }}<|tool_call_end|>"
)
RESPONSE_TEMPLATE = {
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {"thinking": {"open": "<think>"}, "content": {}, "tool_calls": {"open": "<tc>"}},
}
NATIVE = frozenset({"consolidated.safetensors", "params.json", "tekken.json"})


@dataclass(frozen=True)
class Case:
    config: dict[str, object]
    template: str = ""
    tokens: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset({"config.json", "model.safetensors"})
    tokenizer_config: dict[str, object] = field(default_factory=dict)

    def detect(self) -> Parsers:
        return detect(self.config, self.template, self.tokens, self.files, self.tokenizer_config)


def arch(name: str, model_type: str = "") -> dict[str, object]:
    return {"architectures": [name], "model_type": model_type}


FAMILIES: dict[str, tuple[Case, Parsers]] = {
    "qwen2.5": (
        Case(arch("Qwen2ForCausalLM", "qwen2"), QWEN_TOOLS + QWEN_GEN + "{%- endif %}", CHATML),
        Parsers("hermes", "hermes", None, None),
    ),
    "hermes-3-llama": (
        Case(arch("LlamaForCausalLM", "llama"), QWEN_TOOLS, frozenset({"<tool_call>"})),
        Parsers("hermes", "hermes", None, None),
    ),
    "qwq": (
        Case(
            arch("Qwen2ForCausalLM", "qwen2"),
            QWEN_TOOLS + QWEN_SPLIT + r"{%- if add_generation_prompt %}"
            r"{{- '<|im_start|>assistant\n<think>\n' }}{%- endif %}",
            QWEN_TOKENS,
        ),
        Parsers("qwq", "hermes", "deepseek_r1", None, True),
    ),
    "qwen3": (
        Case(
            arch("Qwen3ForCausalLM", "qwen3"),
            QWEN_TOOLS + QWEN_SPLIT + QWEN_GEN + QWEN3_SWITCH,
            QWEN_TOKENS,
        ),
        Parsers("qwen3", "hermes", "qwen3", "enable_thinking"),
    ),
    "qwen3-coder": (
        Case(arch("Qwen3MoeForCausalLM", "qwen3_moe"), XML_CALL + QWEN_GEN, QWEN_TOKENS),
        Parsers("qwen3-coder", "qwen3_coder", None, None),
    ),
    "qwen3.6": (
        Case(
            arch("Qwen3_5MoeForConditionalGeneration", "qwen3_5_moe"),
            XML_CALL + QWEN_SPLIT + QWEN_GEN + r"{%- if enable_thinking is defined and "
            r"enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- else %}"
            r"{{- '<think>\n' }}{%- endif %}{%- endif %}",
            QWEN_TOKENS,
        ),
        Parsers("qwen3.5", "qwen3_coder", "qwen3", "enable_thinking"),
    ),
    "llama3.1": (
        Case(arch("LlamaForCausalLM", "llama"), LLAMA3, LLAMA3_TOKENS),
        Parsers("llama3", "llama3_json", None, None),
    ),
    "llama3.0": (  # no tools in the template, no <|python_tag|> in the vocabulary
        Case(arch("LlamaForCausalLM", "llama"), r'{{ "<|start_header_id|>" + role }}'),
        Parsers("llama3", None, None, None),
    ),
    "llama4": (
        Case(
            arch("Llama4ForConditionalGeneration", "llama4"),
            r"{{- '<|header_start|>assistant<|header_end|>\n\n' -}}{{- '<|python_start|>' }}",
            frozenset({"<|header_start|>", "<|header_end|>", "<|python_start|>", "<|eot|>"}),
        ),
        Parsers("llama4", "llama4_pythonic", None, None),
    ),
    "mistral-native": (
        Case({}, files=NATIVE),
        Parsers("mistral", "mistral", None, None),
    ),
    "magistral-native": (  # the caller added tekken.json's special tokens
        Case({}, tokens=frozenset({"[THINK]", "[/THINK]", "[TOOL_CALLS]"}), files=NATIVE),
        Parsers("magistral", "mistral", "mistral", "reasoning_effort"),
    ),
    "mistral-v0.1-native": (
        Case(
            {}, files=frozenset({"consolidated.safetensors", "params.json", "tokenizer.model.v1"})
        ),
        Parsers("mistral", None, None, None),
    ),
    "mistral-hf": (
        Case(
            arch("MistralForCausalLM", "mistral"),
            r"{{- '[AVAILABLE_TOOLS] [' }}{{- '[TOOL_CALLS] [' }}{{- '[INST] ' + content }}",
            frozenset({"[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]"}),
        ),
        Parsers("mistral", "mistral", None, None),
    ),
    "gpt-oss": (
        Case(arch("GptOssForCausalLM", "gpt_oss"), r"{{- 'Reasoning: ' + reasoning_effort }}"),
        Parsers("gpt-oss", "openai", "openai_gptoss", "reasoning_effort", True),
    ),
    "deepseek-r1-distill-qwen": (
        Case(
            arch("Qwen2ForCausalLM", "qwen2"),
            DS_TEMPLATE + DS_R1_SPLIT + DS_R1_GEN,
            DS_TOKENS | THINK,
        ),
        Parsers("deepseek-r1-distill", None, "deepseek_r1", None, True),
    ),
    "deepseek-v3": (
        Case(arch("DeepseekV3ForCausalLM", "deepseek_v3"), DS_TEMPLATE + DS_GEN, DS_TOKENS),
        Parsers("deepseek-v3", "deepseek_v3", None, None),
    ),
    "deepseek-r1": (
        Case(
            arch("DeepseekV3ForCausalLM", "deepseek_v3"),
            DS_TEMPLATE + DS_R1_SPLIT + DS_R1_GEN,
            DS_TOKENS | THINK,
        ),
        Parsers("deepseek-r1", "deepseek_v3", "deepseek_r1", None, True),
    ),
    "deepseek-v3.1": (
        Case(
            arch("DeepseekV3ForCausalLM", "deepseek_v3"),
            "{% if not thinking is defined %}{% set thinking = false %}{% endif %}"
            + DS_TEMPLATE
            + "{% if thinking %}{{'<think>'}}{% else %}{{'</think>'}}{% endif %}",
            DS_TOKENS | THINK,
        ),
        Parsers("deepseek-v3.1", "deepseek_v31", "deepseek_v3", "thinking"),
    ),
    "deepseek-v3.2": (  # no chat template: vLLM's deepseek_v32 tokenizer mode renders it
        Case(arch("DeepseekV32ForCausalLM", "deepseek_v32"), "", DS_TOKENS | THINK),
        Parsers("deepseek-v3.2", "deepseek_v32", "deepseek_v3", "thinking"),
    ),
    "kimi-k2": (
        Case(arch("DeepseekV3ForCausalLM", "kimi_k2"), KIMI),
        Parsers("kimi-k2", "kimi_k2", None, None),
    ),
    "kimi-k2-thinking": (
        Case(arch("DeepseekV3ForCausalLM", "kimi_k2"), KIMI + r"{{- '<think>' }}", THINK),
        Parsers("kimi-k2", "kimi_k2", "kimi_k2", None, True),
    ),
    "gemma3": (
        Case(
            arch("Gemma3ForConditionalGeneration", "gemma3"),
            r"{{ '<start_of_turn>' + role + '\n' }}{{ '<end_of_turn>\n' }}",
            frozenset({"<start_of_turn>", "<end_of_turn>"}),
        ),
        Parsers("gemma3", None, None, None),
    ),
    "gemma3-pythonic-template": (
        Case(
            arch("Gemma3ForConditionalGeneration", "gemma3"),
            r"{{ '<start_of_turn>' + role + '\n' }}{%- if tools is not none -%}"
            r"{{- 'you must respond with a python list of the function calls.\n' -}}"
            r"{{- 'Example Format: [func_name1(params_name1=params_value1)]' -}}{%- endif -%}",
        ),
        Parsers("gemma3", "pythonic", None, None),
    ),
    "functiongemma": (
        Case(arch("Gemma3ForCausalLM", "gemma3_text"), r"{{- '<start_function_call>call:' }}"),
        Parsers("functiongemma", "functiongemma", None, None),
    ),
    "gemma4": (
        Case(arch("Gemma4ForConditionalGeneration", "gemma4"), GEMMA4, GEMMA4_TOKENS),
        Parsers("gemma4", "gemma4", "gemma4", "enable_thinking"),
    ),
    "granite3.2": (
        Case(arch("GraniteForCausalLM", "granite"), GRANITE32, frozenset({"<|tool_call|>"})),
        Parsers("granite3", "granite", "granite", "thinking"),
    ),
    "granite4": (
        Case(
            arch("GraniteMoeHybridForCausalLM", "granitemoehybrid"),
            GRANITE_ROLE + HERMES_JSON,
            frozenset({"<|start_of_role|>", "<|end_of_role|>", "<tool_call>", "</tool_call>"}),
        ),
        Parsers("granite4", "granite4", None, None),
    ),
    "phi4-mini": (
        Case(
            arch("Phi3ForCausalLM", "phi3"),
            r"{%- if tools %}* prefix function calls with functools marker{%- endif %}<|end|>",
        ),
        Parsers("phi4-mini", "phi4_mini_json", None, None),
    ),
    "glm-4.5": (
        Case(arch("Glm4MoeForCausalLM", "glm4_moe"), GLM, THINK | {"<tool_call>", "<arg_key>"}),
        Parsers("glm", "glm45", "glm45", "enable_thinking"),
    ),
    "glm-4.7-flash": (
        Case(arch("Glm4MoeLiteForCausalLM", "glm4_moe_lite"), GLM, THINK),
        Parsers("glm", "glm47", "glm47", "enable_thinking"),
    ),
    "nemotron3": (
        Case(
            arch("NemotronHForCausalLM", "nemotron_h"),
            XML_CALL + r"{%- if enable_thinking %}{{- '<think>\n' }}{%- endif %}",
            QWEN_TOKENS,
        ),
        Parsers("nemotron3", "qwen3_coder", "nemotron_v3", "enable_thinking"),
    ),
    "response-template": (
        Case(
            arch("SomeNewForCausalLM", "some_new"),
            r"{%- if enable_thinking %}<think>{%- endif %}",
            tokenizer_config={"response_template": RESPONSE_TEMPLATE},
        ),
        Parsers("response-template", "hf", "hf", "enable_thinking"),
    ),
    "unknown": (
        Case(arch("GPT2LMHeadModel", "gpt2"), "{% for m in messages %}{{ m.content }}{% endfor %}"),
        Parsers("unknown", None, None, None),
    ),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_gets_its_parsers(name: str) -> None:
    case, expected = FAMILIES[name]
    assert case.detect() == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_a_chosen_parser_always_finds_its_tokens(name: str) -> None:
    case, _ = FAMILIES[name]
    got = case.detect()
    vocab = case.tokens | ({"[TOOL_CALLS]"} if "tekken.json" in case.files else set())
    assert set(fm.TOOL_TOKENS.get(got.tool_parser or "", ())) <= vocab
    assert set(fm.REASONING_TOKENS.get(got.reasoning_parser or "", ())) <= vocab


def test_the_demo_model_gets_hermes_and_qwen3() -> None:
    # vllama's tiny Llama-bodied demo model with a Qwen-style template (vllama/demo/build.py).
    template = (
        r"{{- bos_token -}}{%- if tools %}{{- '<|system|>\nFunction calls go in <tool_call>"
        r"</tool_call> tags.\n' -}}{%- endif %}"
        r"{%- if add_generation_prompt %}{{- '<|assistant|>\n' -}}"
        r"{%- if enable_thinking is defined and not enable_thinking %}"
        r"{{- '<think>\n\n</think>\n\n' -}}{%- endif %}{%- endif %}"
    )
    tokens = frozenset({"<tool_call>", "</tool_call>", "<think>", "</think>", "<s>", "</s>"})
    got = detect(arch("LlamaForCausalLM", "llama"), template, tokens, frozenset(), {})
    assert (got.tool_parser, got.reasoning_parser, got.thinking_switch) == (
        "hermes",
        "qwen3",
        "enable_thinking",
    )
    assert not got.always_thinks


@pytest.mark.parametrize(
    ("name", "missing", "expected"),
    [
        ("llama3.1", "<|python_tag|>", Parsers("llama3", None, None, None)),
        ("deepseek-v3", fm.DS_TOOL_CALLS_BEGIN, Parsers("deepseek-v3", None, None, None)),
        (
            "deepseek-v3.1",
            fm.DS_TOOL_CALLS_END,
            Parsers("deepseek-v3.1", None, "deepseek_v3", "thinking"),
        ),
        ("deepseek-v3.1", "</think>", Parsers("deepseek-v3.1", "deepseek_v31", None, None)),
        ("qwen3", "</think>", Parsers("qwen3", "hermes", None, None)),
        ("qwq", "<think>", Parsers("qwq", "hermes", None, None)),
        ("deepseek-r1-distill-qwen", "<think>", Parsers("deepseek-r1-distill", None, None, None)),
        ("mistral-hf", "[TOOL_CALLS]", Parsers("mistral", None, None, None)),
        ("gemma4", "<channel|>", Parsers("gemma4", "gemma4", None, None)),
        ("glm-4.5", "<think>", Parsers("glm", "glm45", None, None)),
        ("kimi-k2-thinking", "</think>", Parsers("kimi-k2", "kimi_k2", None, None)),
    ],
)
def test_no_parser_whose_tokens_are_missing(name: str, missing: str, expected: Parsers) -> None:
    case, _ = FAMILIES[name]
    assert missing in case.tokens
    assert (
        detect(
            case.config, case.template, case.tokens - {missing}, case.files, case.tokenizer_config
        )
        == expected
    )


def test_magistral_needs_think_tokens_to_reason() -> None:
    case, _ = FAMILIES["magistral-native"]
    got = detect({}, "", frozenset({"[TOOL_CALLS]"}), NATIVE, {})
    assert got == Parsers("mistral", "mistral", None, None)
    assert case.detect().reasoning_parser == "mistral"


def test_mistral_native_with_a_v3_sentencepiece_tokenizer_has_tools() -> None:
    files = frozenset({"consolidated.safetensors", "params.json", "tokenizer.model.v3"})
    assert detect({}, "", frozenset(), files, {}).tool_parser == "mistral"
    # Without consolidated weights vLLM uses the HF tokenizer: its own tokens decide.
    hf_files = frozenset({"config.json", "model.safetensors", "tekken.json"})
    assert (
        detect(arch("MistralForCausalLM"), "[INST]", frozenset(), hf_files, {}).tool_parser is None
    )


def test_llama2_is_not_taken_for_mistral() -> None:
    llama2 = r"{{ bos_token + '[INST] <<SYS>>\n' + system + '\n<</SYS>>\n\n' }}"
    assert detect(arch("LlamaForCausalLM"), llama2, frozenset(), frozenset(), {}) == Parsers(
        "unknown", None, None, None
    )


def test_response_template_without_thinking_gives_tools_only() -> None:
    spec = {"start_anchor": "x", "fields": {"content": {}, "tool_calls": {}}}
    got = detect(arch("X"), "", frozenset(), frozenset(), {"response_template": spec})
    assert got == Parsers("response-template", "hf", None, None)
    # A response_template with neither field falls back to the template's markers.
    bare = {"start_anchor": "x", "fields": {"content": {}}}
    assert detect(arch("X"), QWEN_TOOLS, frozenset(), frozenset(), {"response_template": bare}) == (
        Parsers("hermes", "hermes", None, None)
    )


def test_thinking_without_a_switch_or_an_opener_is_left_alone() -> None:
    # Qwen3-Instruct-2507 style: strips old </think> from history, never thinks itself. Any
    # <think> parser would file its answers as thinking.
    case = Case(arch("Qwen3MoeForCausalLM"), QWEN_TOOLS + QWEN_SPLIT + QWEN_GEN, QWEN_TOKENS)
    assert case.detect() == Parsers("hermes", "hermes", None, None)


@pytest.mark.parametrize(
    "marker",
    [
        # Llama 3.1's custom tool format: JSON arguments, no <parameter=.
        r"<function=example_function_name>{\"example_name\": \"example_value\"}</function>",
        r"<parameter=name>",
    ],
)
def test_one_xml_marker_alone_is_not_qwen3_coder(marker: str) -> None:
    # qwen3_coder reads <function=name><parameter=k>v: a template with only one of the two is
    # another format, and that parser would find no call in its output.
    got = Case(arch("Qwen2ForCausalLM"), QWEN_TOOLS + marker + QWEN_GEN, CHATML).detect()
    assert got == Parsers("hermes", "hermes", None, None)
    granite = Case(arch("GraniteMoeHybridForCausalLM"), GRANITE_ROLE + HERMES_JSON + marker)
    assert granite.detect().tool_parser == "granite4"


def test_thinking_models_without_tool_markers() -> None:
    olmo_think = r"{{ '<|im_start|>assistant\n<think>' }}"
    got = detect(arch("Olmo3ForCausalLM"), olmo_think, CHATML | THINK, frozenset(), {})
    assert got == Parsers("think-tags", None, "deepseek_r1", None, True)


def test_template_variables_are_read_from_code_only() -> None:
    assert fm.uses_var("{% if thinking %}x{% endif %}", "thinking")
    assert not fm.uses_var("{{ message.thinking }}", "thinking")
    assert not fm.uses_var("{% if enable_thinking %}{% endif %}", "thinking")
    assert not fm.uses_var("{{ message['thinking'] }}", "thinking")
    assert not fm.uses_var("thinking, outside any Jinja code", "thinking")


# --- choose ---------------------------------------------------------------------------------

QWEN3 = FAMILIES["qwen3"][1]


def test_choose_keeps_detection_without_overrides() -> None:
    got = choose(QWEN3, None, None, [])
    assert got == QWEN3
    assert got.engine_args() == (
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--reasoning-parser",
        "qwen3",
    )


def test_none_turns_a_role_off() -> None:
    got = choose(QWEN3, "none", None, [])
    assert got == Parsers("qwen3", None, "qwen3", "enable_thinking")
    assert got.engine_args() == ("--reasoning-parser", "qwen3")
    got = choose(QWEN3, None, "none", [])
    assert got == Parsers("qwen3", "hermes", None, None)
    assert choose(QWEN3, "none", "none", []).engine_args() == ()


def test_a_name_replaces_detection_and_brings_its_switch() -> None:
    got = choose(Parsers("unknown", None, None, None), "qwen3_xml", "deepseek_v3", [])
    assert got == Parsers("unknown", "qwen3_xml", "deepseek_v3", "thinking")
    assert choose(QWEN3, None, "deepseek_r1", []) == (
        Parsers("qwen3", "hermes", "deepseek_r1", None, True)
    )


@pytest.mark.parametrize(
    ("tool", "reasoning"), [("hermes2", None), (None, "qwen4"), ("qwen3", None)]
)
def test_unknown_names_are_refused(tool: str | None, reasoning: str | None) -> None:
    with pytest.raises(ValueError, match="unknown"):
        choose(QWEN3, tool, reasoning, [])


@pytest.mark.parametrize(
    "args",
    [
        ["--tool-call-parser", "llama3_json"],
        ["--tool-call-parser=llama3_json"],
        ["--tool_call_parser", "llama3_json"],
        ["--tool_call_parser=hermes", "--tool-call-parser", "llama3_json"],  # the last one wins
    ],
)
def test_explicit_tool_parser_wins_and_is_not_repeated(args: list[str]) -> None:
    got = choose(QWEN3, "qwen3_coder", None, args)
    assert got.tool_parser == "llama3_json"
    # Auto tool choice is still added: 0.32 ignores a tool parser without it.
    assert got.engine_args() == ("--enable-auto-tool-choice", "--reasoning-parser", "qwen3")


@pytest.mark.parametrize("flag", ["--enable-auto-tool-choice", "--enable_auto_tool_choice"])
def test_explicit_auto_tool_choice_is_not_repeated(flag: str) -> None:
    got = choose(QWEN3, None, None, [flag])
    assert got.tool_parser == "hermes"
    assert got.engine_args() == ("--tool-call-parser", "hermes", "--reasoning-parser", "qwen3")
    both = choose(QWEN3, None, None, [flag, "--tool-call-parser", "mistral"])
    assert both.engine_args() == ("--reasoning-parser", "qwen3")


def test_no_auto_tool_choice_turns_tools_off() -> None:
    got = choose(QWEN3, None, None, ["--no-enable-auto-tool-choice"])
    assert got.tool_parser is None
    assert got.engine_args() == ("--reasoning-parser", "qwen3")


@pytest.mark.parametrize(
    "args", [["--reasoning-parser", "deepseek_r1"], ["--reasoning_parser=deepseek_r1"]]
)
def test_explicit_reasoning_parser_wins_and_is_not_repeated(args: list[str]) -> None:
    got = choose(QWEN3, None, "qwen3", args)
    assert (got.reasoning_parser, got.thinking_switch, got.always_thinks) == (
        "deepseek_r1",
        None,
        True,
    )
    assert got.engine_args() == ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


def test_explicit_args_are_not_checked_against_the_registry() -> None:
    # A --tool-parser-plugin can register names vLLM does not ship.
    got = choose(QWEN3, None, None, ["--tool-call-parser", "my_plugin"])
    assert got.tool_parser == "my_plugin"


def test_hf_parser_cannot_be_combined() -> None:
    detected = FAMILIES["response-template"][1]
    assert choose(detected, "hermes", None, []) == Parsers(
        "response-template", "hermes", None, None
    )
    kept = choose(detected, None, "qwen3", [])
    assert (kept.tool_parser, kept.reasoning_parser) == (None, "qwen3")
    with pytest.raises(ValueError, match="hf"):
        choose(QWEN3, "hf", "qwen3", [])
    with pytest.raises(ValueError, match="hf"):
        choose(QWEN3, None, "hf", ["--tool-call-parser", "hermes"])


def test_engine_args_for_each_shape() -> None:
    assert Parsers("unknown", None, None, None).engine_args() == ()
    assert Parsers("x", "mistral", None, None).engine_args() == (
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "mistral",
    )
    assert Parsers("x", None, "deepseek_r1", None, True).engine_args() == (
        "--reasoning-parser",
        "deepseek_r1",
    )


def test_every_detected_name_is_registered() -> None:
    for _, expected in FAMILIES.values():
        assert expected.tool_parser is None or expected.tool_parser in TOOL_PARSERS
        assert expected.reasoning_parser is None or expected.reasoning_parser in REASONING_PARSERS
    assert set(fm.TOOL_TOKENS) <= TOOL_PARSERS
    assert set(fm.REASONING_TOKENS) | set(fm.PARSER_SWITCH) <= REASONING_PARSERS


def _vllm_registry(relative: str, variable: str) -> set[str]:
    """The names a vLLM source file registers, read without importing vLLM (it is slow)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    source = (Path(next(iter(spec.submodule_search_locations))) / relative).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == variable:
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{variable} not found in {relative}")


def test_registered_names_match_the_installed_vllm() -> None:
    assert _vllm_registry("tool_parsers/__init__.py", "_TOOL_PARSERS_TO_REGISTER") == TOOL_PARSERS
    assert (
        _vllm_registry("reasoning/__init__.py", "_REASONING_PARSERS_TO_REGISTER")
        == REASONING_PARSERS
    )
