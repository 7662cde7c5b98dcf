"""Ollama <-> OpenAI translation (vllama/api/ollama/{options,request,response}.py): pure."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllama.api.errors import BadRequest, upstream_error_message
from vllama.api.ollama.options import IGNORED_OPTIONS, map_options
from vllama.api.ollama.request import CHAT_PATH, COMPLETIONS_PATH, chat_call, generate_call
from vllama.api.ollama.response import OllamaStream, Timing, load_response
from vllama.api.ollama.wire import Chunk
from vllama.catalog.families import ThinkingSwitch
from vllama.catalog.registry import ModelTraits

PLAIN = ModelTraits(served_name="m", context_length=4096)
THINKING = ModelTraits(served_name="m", capabilities=frozenset({"completion", "thinking"}))
TOOLS = ModelTraits(served_name="m", capabilities=frozenset({"completion", "tools"}))
VLLM_KEYS = {
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "seed",
    "max_tokens",
    "stop",
}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
JPEG = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQUFBQoH"


# -- map_options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "key", "expected"),
    [
        ("num_predict", 42, "max_tokens", 42),
        ("temperature", 0.7, "temperature", 0.7),
        ("temperature", 1, "temperature", 1.0),
        ("top_p", 0.9, "top_p", 0.9),
        ("min_p", 0.05, "min_p", 0.05),
        ("repeat_penalty", 1.1, "repetition_penalty", 1.1),
        ("presence_penalty", 0.5, "presence_penalty", 0.5),
        ("frequency_penalty", -0.5, "frequency_penalty", -0.5),
        ("top_k", 40, "top_k", 40),
        ("top_k", 40.0, "top_k", 40),
        ("seed", 1234, "seed", 1234),
        ("stop", "\n\n", "stop", ["\n\n"]),
        ("stop", ["a", "b"], "stop", ["a", "b"]),
    ],
)
def test_each_option_lands_under_its_vllm_name(
    option: str, value: Any, key: str, expected: Any
) -> None:
    mapped: Mapping[str, object] = map_options({option: value})
    assert mapped == {key: expected}
    assert type(mapped[key]) is type(expected)


def test_all_options_together() -> None:
    options = {
        "num_predict": 10,
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 5,
        "min_p": 0.1,
        "seed": 7,
        "repeat_penalty": 1.2,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.4,
        "stop": ["</s>"],
        "num_ctx": 2048,
    }
    assert map_options(options) == {
        "max_tokens": 10,
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 5,
        "min_p": 0.1,
        "seed": 7,
        "repetition_penalty": 1.2,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.4,
        "stop": ["</s>"],
    }


@pytest.mark.parametrize("value", [-1, -2, 0])
def test_num_predict_without_a_limit_sends_no_max_tokens(value: int) -> None:
    assert "max_tokens" not in map_options({"num_predict": value})


def test_num_ctx_is_checked_but_sets_nothing_by_itself() -> None:
    assert map_options({"num_ctx": 1024}) == {}
    assert map_options({"num_ctx": 8192}) == {}


def test_unknown_and_ignored_options_are_ignored() -> None:
    options: dict[str, Any] = {name: 1 for name in IGNORED_OPTIONS}
    options |= {"no_such_option": "x", "num_gpu": "whatever", "mirostat": [1]}
    assert map_options(options) == {}


def test_none_values_and_no_options() -> None:
    assert map_options(None) == {}
    assert map_options({}) == {}
    assert map_options({"temperature": None, "top_k": None}) == {}


@pytest.mark.parametrize("options", [[1], "x", 3, True])
def test_options_must_be_an_object(options: Any) -> None:
    with pytest.raises(BadRequest, match="options"):
        map_options(options)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("temperature", "0.5"),
        ("temperature", True),
        ("top_p", [0.5]),
        ("min_p", {}),
        ("repeat_penalty", False),
        ("presence_penalty", "1"),
        ("frequency_penalty", "high"),
        ("top_k", 1.5),
        ("top_k", "40"),
        ("top_k", True),
        ("seed", 0.5),
        ("seed", "7"),
        ("num_predict", "10"),
        ("num_predict", 2.5),
        ("num_predict", False),
        ("num_ctx", "2048"),
        ("num_ctx", 10.5),
        ("num_ctx", True),
        ("stop", 5),
        ("stop", ["ok", 5]),
        ("stop", {"a": "b"}),
    ],
)
def test_wrong_types_are_bad_requests_naming_the_option(option: str, value: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        map_options({option: value})
    assert option in str(caught.value)


_FLOAT_NAMES: tuple[str, ...] = ("temperature", "top_p", "min_p", "repeat_penalty")
_FLOAT_NAMES += ("presence_penalty", "frequency_penalty")
# Options are bounded at 2**63 (what vLLM's int64 fields take), so "valid" floats stay below.
_finite = st.floats(min_value=-(2.0**62), max_value=2.0**62, allow_nan=False, width=32)
_int = st.integers(min_value=-(2**31), max_value=2**31)
_valid_option = st.one_of(
    *(st.tuples(st.just(name), _finite | _int) for name in _FLOAT_NAMES),
    st.tuples(st.sampled_from(["top_k", "seed", "num_predict"]), _int),
    st.tuples(st.just("num_ctx"), st.integers(min_value=1, max_value=4096)),
    st.tuples(st.just("stop"), st.text() | st.lists(st.text(), max_size=4)),
    st.tuples(st.sampled_from(sorted(IGNORED_OPTIONS)), st.integers() | st.text() | st.booleans()),
    st.tuples(st.text().map(lambda k: "x_" + k), st.integers() | st.text()),
    st.tuples(st.sampled_from(["temperature", "top_k", "stop"]), st.none()),
)


@settings(deadline=None)
@given(st.lists(_valid_option, max_size=12).map(dict))
def test_any_valid_options_map_to_known_vllm_keys_without_raising(options: dict[str, Any]) -> None:
    mapped = map_options(options)
    assert set(mapped) <= VLLM_KEYS
    json.dumps(mapped, allow_nan=False)
    if isinstance(options.get("num_predict"), int) and options["num_predict"] > 0:
        assert mapped["max_tokens"] == options["num_predict"]


# -- generate_call ----------------------------------------------------------------------------


def test_templated_generate_is_a_chat_request_with_system_and_user() -> None:
    call = generate_call(
        {"model": "x", "prompt": "Why?", "system": "Be brief.", "options": {"num_predict": 5}},
        PLAIN,
        "x",
    )
    assert call.path == CHAT_PATH
    assert call.body["model"] == "m"
    assert call.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]
    assert call.body["max_tokens"] == 5
    assert call.body["stream"] is True
    assert call.body["stream_options"] == {"include_usage": True}


def test_raw_generate_is_a_completion_with_the_prompt_unchanged() -> None:
    prompt = "<|im_start|>user\n  spaced \u00e9 <b>\n<|im_end|>"
    call = generate_call({"prompt": prompt, "raw": True, "stream": False}, PLAIN, "x")
    assert call.path == COMPLETIONS_PATH
    assert call.body["prompt"] == prompt
    assert "messages" not in call.body
    assert call.body["stream"] is True  # always streamed upstream, even for stream: false
    assert call.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "extra", [{"system": "s"}, {"template": "{{ .Prompt }}"}, {"images": [PNG]}]
)
def test_raw_with_system_template_or_images_is_rejected(extra: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="raw mode"):
        generate_call({"prompt": "p", "raw": True, **extra}, PLAIN, "x")


def test_raw_ignores_a_derived_models_system_prompt() -> None:
    traits = ModelTraits(served_name="m", system="derived system")
    call = generate_call({"prompt": "p", "raw": True}, traits, "x")
    assert call.body["prompt"] == "p"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"suffix": "return x"}, "does not support insert"),
        ({"context": [1, 2, 3]}, "context"),
        ({"raw": "yes"}, "raw"),
        ({"prompt": 5}, "prompt"),
        ({"system": ["a"]}, "system"),
        ({"images": "abc"}, "images"),
        ({"images": [5]}, "images"),
        ({"format": "xml"}, "format"),
        ({"format": 3}, "format"),
        ({"think": "sometimes"}, "think"),
    ],
)
def test_generate_rejects_what_vllm_cannot_do(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        generate_call({"prompt": "p", **extra}, THINKING, "x")


def test_empty_suffix_and_context_are_fine() -> None:
    call = generate_call({"prompt": "p", "suffix": "", "context": []}, PLAIN, "x")
    assert call.path == CHAT_PATH


def test_images_become_data_url_parts_with_detected_types() -> None:
    call = generate_call({"prompt": "what is this?", "images": [PNG, JPEG]}, PLAIN, "x")
    content = call.body["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("json", {"type": "json_object"}),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "format",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                },
            },
        ),
    ],
)
def test_format_becomes_response_format(value: Any, expected: dict[str, Any]) -> None:
    call = generate_call({"prompt": "p", "format": value}, PLAIN, "x")
    assert call.body["response_format"] == expected
    chat = chat_call({"messages": [], "format": value}, PLAIN, "x")
    assert chat.body["response_format"] == expected


@pytest.mark.parametrize("value", [None, ""])
def test_no_format_sends_no_response_format(value: Any) -> None:
    assert "response_format" not in generate_call({"prompt": "p", "format": value}, PLAIN, "x").body


@pytest.mark.parametrize("think", [True, "low", "high"])
def test_think_on_a_model_without_thinking_is_rejected(think: Any) -> None:
    with pytest.raises(BadRequest, match='"tiny:latest" does not support thinking'):
        generate_call({"prompt": "p", "think": think}, PLAIN, "tiny:latest")
    with pytest.raises(BadRequest, match="does not support thinking"):
        chat_call({"messages": [], "think": think}, PLAIN, "tiny:latest")


def test_think_false_on_a_model_without_thinking_is_a_no_op() -> None:
    call = generate_call({"prompt": "p", "think": False}, PLAIN, "x")
    assert "chat_template_kwargs" not in call.body


@pytest.mark.parametrize(
    ("think", "enabled", "effort"),
    [(True, True, None), (False, False, None), ("low", True, "low"), ("max", True, "high")],
)
def test_think_with_the_capability_sets_chat_template_kwargs(
    think: Any, enabled: bool, effort: str | None
) -> None:
    call = generate_call({"prompt": "p", "think": think}, THINKING, "x")
    assert call.body["chat_template_kwargs"] == {"enable_thinking": enabled}
    assert call.body.get("reasoning_effort") == effort


def test_derived_model_defaults_apply_and_request_options_override() -> None:
    traits = ModelTraits(
        served_name="base",
        system="You are a pirate.",
        parameters={"temperature": 0.1, "top_k": 3, "stop": ["x"]},
    )
    call = generate_call({"prompt": "hi", "options": {"temperature": 0.9}}, traits, "pirate")
    body = call.body
    assert body["model"] == "base"
    assert body["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert "chat_template" not in body
    assert (body["temperature"], body["top_k"], body["stop"]) == (0.9, 3, ["x"])
    # A request's own system prompt wins over the derived model's.
    call = generate_call({"prompt": "hi", "system": "Be a robot."}, traits, "p")
    assert call.body["messages"][0]["content"] == "Be a robot."
    # Chat: the derived system prompt is added only when the conversation has none.
    chat = chat_call({"messages": [{"role": "user", "content": "hi"}]}, traits, "p")
    assert chat.body["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert chat.body["temperature"] == 0.1
    chat = chat_call(
        {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "hi"}]},
        traits,
        "p",
    )
    assert [m["content"] for m in chat.body["messages"]] == ["own", "hi"]


def test_num_ctx_over_the_model_context_is_the_model_context_not_a_400() -> None:
    # Ollama lowers num_ctx to the model's trained length; vLLM's context is the worker's.
    generated = generate_call({"prompt": "p", "options": {"num_ctx": 8192}}, PLAIN, "x")
    assert "max_tokens" not in generated.body  # vLLM stops at its context
    chat = chat_call(
        {"messages": [], "options": {"num_ctx": 8192, "num_predict": 9000}}, PLAIN, "x"
    )
    assert chat.body["max_tokens"] == 4096


@pytest.mark.parametrize("options", [[1], "abc"])
def test_non_object_options_in_a_request_are_bad_requests(options: Any) -> None:
    with pytest.raises(BadRequest, match="options"):
        generate_call({"prompt": "p", "options": options}, PLAIN, "x")


# -- chat_call --------------------------------------------------------------------------------


def test_chat_messages_pass_through_with_images() -> None:
    call = chat_call(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "look", "images": [JPEG]},
                {"role": "assistant", "content": None},
            ],
            "options": {"seed": 3},
        },
        PLAIN,
        "x",
    )
    assert call.path == CHAT_PATH
    assert call.body["seed"] == 3
    assert call.body["stream"] is True
    assert call.body["stream_options"] == {"include_usage": True}
    messages: list[Any] = call.body["messages"]
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert messages[2] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("hello", "messages must be a list"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\]\.role"),
        ([{"content": "x"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], r"messages\[1\]"),
        ([{"role": "user", "content": "x", "tool_calls": [{}]}], "tool_calls"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}],
            "function.name",
        ),
    ],
)
def test_chat_validates_messages(messages: Any, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        chat_call({"messages": messages}, PLAIN, "x")


def test_assistant_tool_calls_get_string_arguments_and_ids_and_results_link_by_name() -> None:
    payload = {
        "messages": [
            {"role": "user", "content": "weather in Paris and time in Tokyo?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"id": "abc", "function": {"name": "clock", "arguments": '{"tz": "JST"}'}},
                ],
            },
            {"role": "tool", "tool_name": "clock", "content": "09:00"},
            {"role": "tool", "tool_name": "weather", "content": "sunny"},
        ],
        "tools": [{"function": {"name": "weather"}}, {"type": "function", "function": {}}],
    }
    call = chat_call(payload, TOOLS, "x")
    messages = call.body["messages"]
    calls = messages[1]["tool_calls"]
    assert calls[0]["type"] == "function"
    assert calls[0]["id"]  # generated
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[1] == {
        "id": "abc",
        "type": "function",
        "function": {"name": "clock", "arguments": '{"tz": "JST"}'},
    }
    assert messages[2] == {"role": "tool", "content": "09:00", "tool_call_id": "abc"}
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": calls[0]["id"]}
    assert call.body["tools"] == [
        {"type": "function", "function": {"name": "weather"}},
        {"type": "function", "function": {}},
    ]


def test_tool_results_without_names_take_the_pending_calls_in_order() -> None:
    payload = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "one", "function": {"name": "f", "arguments": {}}},
                    {"id": "two", "function": {"name": "f", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            {"role": "tool", "content": "3", "tool_call_id": "given"},
        ]
    }
    messages = chat_call(payload, PLAIN, "x").body["messages"]
    assert [m["tool_call_id"] for m in messages[1:]] == ["one", "two", "given"]


def test_generated_tool_call_ids_are_unique() -> None:
    calls = [{"function": {"name": "f", "arguments": {}}} for _ in range(3)]
    payload = {"messages": [{"role": "assistant", "tool_calls": calls}] * 2}
    messages = chat_call(payload, PLAIN, "x").body["messages"]
    ids = [c["id"] for m in messages for c in m["tool_calls"]]
    assert len(set(ids)) == len(ids)


def test_tools_need_the_tools_capability() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(BadRequest, match='"x" does not support tools'):
        chat_call({"messages": [], "tools": tools}, PLAIN, "x")
    with pytest.raises(BadRequest, match="tools"):
        chat_call({"messages": [], "tools": "f"}, TOOLS, "x")
    with pytest.raises(BadRequest, match="tools"):
        chat_call({"messages": [], "tools": ["f"]}, TOOLS, "x")
    assert "tools" not in chat_call({"messages": [], "tools": []}, PLAIN, "x").body


def test_chat_think_with_the_capability() -> None:
    call = chat_call({"messages": [], "think": True}, THINKING, "x")
    assert call.body["chat_template_kwargs"] == {"enable_thinking": True}


# -- OllamaStream -----------------------------------------------------------------------------


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> Any:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def text_chunk(text: str, finish: str | None = None) -> Any:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}


def usage_chunk(prompt: int, completion: int) -> Any:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"id": "x", "choices": [], "usage": usage | {"total_tokens": prompt + completion}}


def feed(stream: OllamaStream, chunks: list[Any]) -> list[Any]:
    return [obj for chunk in chunks for obj in stream.on_chunk(chunk)]


def assert_piece(obj: Mapping[str, Any], model: str) -> None:
    assert obj["model"] == model
    assert obj["done"] is False
    assert RFC3339_Z.match(obj["created_at"]), obj["created_at"]
    datetime.fromisoformat(obj["created_at"].replace("Z", "+00:00"))


DURATIONS = (
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
)


def assert_metrics(obj: Mapping[str, Any]) -> None:
    for key in (*DURATIONS, "prompt_eval_count", "eval_count"):
        assert isinstance(obj[key], int) and not isinstance(obj[key], bool), key
        assert obj[key] >= 0, key


def test_chat_stream_pieces_and_final() -> None:
    stream = OllamaStream("chat", "tiny:latest", Timing())
    pieces = feed(
        stream,
        [
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk({"content": "Hel"}),
            chat_chunk({"content": "lo"}),
            chat_chunk({}, "stop"),
            usage_chunk(7, 2),
        ],
    )
    assert [p["message"] for p in pieces] == [
        {"role": "assistant", "content": "Hel"},
        {"role": "assistant", "content": "lo"},
    ]
    for piece in pieces:
        assert_piece(piece, "tiny:latest")
    assert stream.pending_tool_calls() == []
    final = stream.final()
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["prompt_eval_count"], final["eval_count"]) == (7, 2)
    assert_metrics(final)
    whole = stream.whole()
    assert whole["message"] == {"role": "assistant", "content": "Hello"}
    assert whole["done"] is True and whole["model"] == "tiny:latest"
    assert_metrics(whole)


def test_generate_stream_of_completion_chunks_stopped_by_length() -> None:
    stream = OllamaStream("generate", "g", Timing())
    pieces = feed(
        stream,
        [text_chunk("tok0 "), text_chunk("tok1 "), text_chunk("", "length"), usage_chunk(3, 2)],
    )
    assert [p["response"] for p in pieces] == ["tok0 ", "tok1 "]
    for piece in pieces:
        assert_piece(piece, "g")
        assert "message" not in piece
    final = stream.final()
    assert final["response"] == "" and final["done_reason"] == "length"
    assert (final["prompt_eval_count"], final["eval_count"]) == (3, 2)
    assert stream.whole()["response"] == "tok0 tok1 "


def test_the_last_text_arriving_with_finish_reason_is_kept() -> None:
    """vLLM sends the last token's text in the chunk that carries finish_reason: that text is a
    piece like any other, and the reason still ends the answer."""
    chat = OllamaStream("chat", "m", Timing())
    chat_chunks = [chat_chunk({"content": "tok0 "}), chat_chunk({"content": "tok1 "}, "length")]
    pieces = feed(chat, [*chat_chunks, usage_chunk(3, 2)])
    assert [p["message"]["content"] for p in pieces] == ["tok0 ", "tok1 "]
    assert chat.final()["done_reason"] == "length" and chat.final()["eval_count"] == 2
    assert chat.whole()["message"]["content"] == "tok0 tok1 "

    generate = OllamaStream("generate", "m", Timing())
    pieces = feed(generate, [text_chunk("tok0 "), text_chunk("tok1 ", "stop"), usage_chunk(3, 2)])
    assert [p["response"] for p in pieces] == ["tok0 ", "tok1 "]
    whole = generate.whole()
    assert (whole["response"], whole["done_reason"]) == ("tok0 tok1 ", "stop")


def test_generate_kind_also_reads_chat_deltas() -> None:
    # A templated /api/generate goes to /v1/chat/completions: its chunks carry deltas.
    stream = OllamaStream("generate", "g", Timing())
    feed(
        stream,
        [
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk({"reasoning_content": "hmm"}),
            chat_chunk({"content": "ok"}),
        ],
    )
    whole = stream.whole()
    assert (whole["response"], whole["thinking"]) == ("ok", "hmm")


def test_no_finish_reason_and_no_usage_means_stop_and_zero_counts() -> None:
    stream = OllamaStream("chat", "m", Timing())
    feed(stream, [chat_chunk({"content": "x"})])
    final = stream.final()
    assert final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (0, 0)
    assert_metrics(final)


def test_durations_follow_the_timing_stamps() -> None:
    timing = Timing(start=1_000, loaded=5_000, sent=6_000, first_token=9_000, last_token=15_000)
    stream = OllamaStream("chat", "m", timing)
    stream.on_chunk(usage_chunk(1, 1))
    final = stream.final(end=20_000)
    assert final["total_duration"] == 19_000
    assert final["load_duration"] == 4_000
    assert final["prompt_eval_duration"] == 3_000
    assert final["eval_duration"] == 6_000
    assert stream.whole(end=20_000)["total_duration"] == 19_000


def test_durations_without_tokens_are_non_negative() -> None:
    timing = Timing(start=100)
    stream = OllamaStream("generate", "m", timing)
    final = stream.final(end=500)
    assert final["total_duration"] == 400
    assert final["load_duration"] == 0
    assert_metrics(final)


def test_real_stamps_are_ordered_and_consistent() -> None:
    timing = Timing()
    timing.loaded = Timing.now()
    timing.sent = Timing.now()
    stream = OllamaStream("chat", "m", timing)
    feed(stream, [chat_chunk({"content": "a"}), chat_chunk({"content": "b"})])
    assert timing.first_token is not None and timing.last_token is not None
    assert timing.start <= timing.loaded <= timing.sent <= timing.first_token
    assert timing.first_token <= timing.last_token
    final = stream.final()
    assert_metrics(final)
    parts = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert parts <= final["total_duration"]


def test_split_tool_call_deltas_reassemble_into_one_call_with_object_arguments() -> None:
    stream = OllamaStream("chat", "m", Timing())
    pieces = feed(
        stream,
        [
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Pa'}}]}),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
            chat_chunk({}, "tool_calls"),
            usage_chunk(10, 4),
        ],
    )
    assert pieces == []
    expected = [
        {
            "id": "call_1",
            "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
        }
    ]
    (pending,) = stream.pending_tool_calls()
    assert_piece(pending, "m")
    assert pending["message"] == {"role": "assistant", "content": "", "tool_calls": expected}
    assert stream.whole()["message"]["tool_calls"] == expected
    final = stream.final()
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == 4


def test_two_parallel_tool_calls_stay_apart() -> None:
    stream = OllamaStream("chat", "m", Timing())
    feed(
        stream,
        [
            chat_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}),
            chat_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g"}}]}),
            chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"y": 2}'}}]}),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
        ],
    )
    calls = stream.tool_calls()
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("a", "f", {"x": 1}),
        ("b", "g", {"y": 2}),
    ]


def test_generate_streams_have_no_pending_tool_calls() -> None:
    stream = OllamaStream("generate", "m", Timing())
    stream.on_chunk(chat_chunk({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}))
    assert stream.pending_tool_calls() == []


@pytest.mark.parametrize("arguments", ["true", '"x"', "[1, 2]", "3", "null", "{not json", "", " "])
def test_tool_arguments_that_are_not_an_object_come_back_as_an_object(arguments: str) -> None:
    stream = OllamaStream("chat", "m", Timing())
    delta = {"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments}}
    stream.on_chunk(chat_chunk({"tool_calls": [delta]}))
    (call,) = stream.tool_calls()
    assert isinstance(call["function"]["arguments"], dict)
    json.dumps(stream.whole(), allow_nan=False)


@settings(deadline=None)
@given(st.text(max_size=200))
def test_any_tool_arguments_text_comes_back_as_an_object(arguments: str) -> None:
    stream = OllamaStream("chat", "m", Timing())
    stream.on_chunk(
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]})
    )
    assert isinstance(stream.tool_calls()[0]["function"]["arguments"], dict)


def test_deeply_nested_tool_arguments_never_crash() -> None:
    stream = OllamaStream("chat", "m", Timing())
    delta = {"index": 0, "function": {"name": "f", "arguments": "[" * 100_000}}
    stream.on_chunk(chat_chunk({"tool_calls": [delta]}))
    assert isinstance(stream.tool_calls()[0]["function"]["arguments"], dict)


def test_non_finite_tool_arguments_still_give_valid_json() -> None:
    stream = OllamaStream("chat", "m", Timing())
    delta = {"index": 0, "function": {"name": "f", "arguments": '{"x": NaN}'}}
    stream.on_chunk(chat_chunk({"tool_calls": [delta]}))
    json.dumps(stream.whole(), allow_nan=False)


def test_reasoning_content_becomes_thinking() -> None:
    stream = OllamaStream("chat", "m", Timing())
    pieces = feed(
        stream,
        [
            chat_chunk({"reasoning_content": "Let me "}),
            chat_chunk({"reasoning": "think."}),
            chat_chunk({"content": "42"}),
        ],
    )
    assert [p["message"] for p in pieces] == [
        {"role": "assistant", "content": "", "thinking": "Let me "},
        {"role": "assistant", "content": "", "thinking": "think."},
        {"role": "assistant", "content": "42"},
    ]
    assert stream.whole()["message"] == {
        "role": "assistant",
        "content": "42",
        "thinking": "Let me think.",
    }


def test_generate_thinking_is_a_top_level_field() -> None:
    stream = OllamaStream("generate", "m", Timing())
    (piece,) = stream.on_chunk(chat_chunk({"reasoning_content": "hmm"}))
    assert piece["thinking"] == "hmm" and piece["response"] == ""


def test_empty_and_odd_chunks_emit_nothing() -> None:
    stream = OllamaStream("chat", "m", Timing())
    assert stream.on_chunk({}) == []
    assert stream.on_chunk({"choices": None}) == []
    assert stream.on_chunk(chat_chunk({"content": None})) == []
    assert stream.on_chunk({"choices": [{"index": 0, "delta": None}]}) == []
    assert stream.timing.first_token is None


@st.composite
def split_text(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(st.text(max_size=100))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(deadline=None)
@given(split_text(), st.sampled_from(["chat", "generate"]))
def test_any_split_of_a_text_reassembles(split: tuple[str, list[str]], kind: str) -> None:
    text, parts = split
    stream = OllamaStream("chat" if kind == "chat" else "generate", "m", Timing())
    chunks = [chat_chunk({"role": "assistant", "content": ""})]
    chunks += [chat_chunk({"content": part}) for part in parts]
    chunks += [chat_chunk({}, "stop"), usage_chunk(1, len(parts))]
    pieces = feed(stream, chunks)
    field = "response" if kind == "generate" else "message"
    streamed = [p[field] if kind == "generate" else p[field]["content"] for p in pieces]
    assert "".join(streamed) == text
    assert all(streamed)  # no empty pieces are streamed
    whole = stream.whole()
    assert (whole["response"] if kind == "generate" else whole["message"]["content"]) == text


def test_load_response_shapes() -> None:
    generate = load_response("m:latest", "generate", "load")
    assert generate["response"] == "" and generate["done"] is True
    assert generate["done_reason"] == "load" and RFC3339_Z.match(generate["created_at"])
    chat = load_response("m", "chat", "unload")
    assert chat["message"] == {"role": "assistant", "content": ""}
    assert chat["done_reason"] == "unload"


# -- upstream errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"error": {"message": "too long", "type": "BadRequestError", "code": 400}}',
            "too long",
        ),
        (b'{"object": "error", "message": "bad model", "code": 404}', "bad model"),
        (b'{"error": "plain string error"}', "plain string error"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"  \n", "worker answered HTTP 502"),
        (b"", "worker answered HTTP 502"),
    ],
)
def test_upstream_error_message(body: bytes, expected: str) -> None:
    assert upstream_error_message(502, body) == expected


def test_upstream_error_message_survives_invalid_bytes_and_odd_json() -> None:
    text = upstream_error_message(500, b"\xff\xfe boom \x80")
    assert "boom" in text
    assert upstream_error_message(500, b"[1, 2]") == "[1, 2]"
    assert upstream_error_message(500, b'{"error": {"code": 3}}') == '{"error": {"code": 3}}'


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_upstream_error_message_never_raises(body: bytes) -> None:
    assert isinstance(upstream_error_message(500, body), str)


# -- fields vLLM honours differently, or cannot --------------------------------------------------


@pytest.mark.parametrize("build", [generate_call, chat_call])
def test_a_request_template_is_refused_before_any_load(build: Any) -> None:
    payload = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "template": "T"}
    with pytest.raises(BadRequest, match="template is not supported"):
        build(payload, PLAIN, "m")


def test_truncate_is_vllms_prompt_truncation_and_shift_is_refused() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert chat_call(chat | {"truncate": True}, PLAIN, "m").body["truncate_prompt_tokens"] == -1
    for truncate in (False, None):
        body = chat_call(chat | {"truncate": truncate}, PLAIN, "m").body
        assert "truncate_prompt_tokens" not in body
    assert "truncate_prompt_tokens" not in chat_call(chat | {"shift": False}, PLAIN, "m").body
    with pytest.raises(BadRequest, match="shift is not supported"):
        chat_call(chat | {"shift": True}, PLAIN, "m")
    with pytest.raises(BadRequest, match="truncate must be a boolean"):
        generate_call({"prompt": "x", "truncate": "yes"}, PLAIN, "m")


def test_logprobs_in_vllms_chat_and_completions_forms() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    body = chat_call(chat | {"logprobs": True, "top_logprobs": 3}, PLAIN, "m").body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    assert "logprobs" not in chat_call(chat | {"logprobs": False}, PLAIN, "m").body
    raw = generate_call({"prompt": "x", "raw": True, "logprobs": True}, PLAIN, "m").body
    assert raw["logprobs"] == 0
    for bad in (21, -1, "3", True):
        with pytest.raises(BadRequest, match="top_logprobs must be between 0 and 20"):
            chat_call(chat | {"logprobs": True, "top_logprobs": bad}, PLAIN, "m")


def test_logprobs_come_back_in_ollamas_shape_streamed_and_whole() -> None:
    stream = OllamaStream("chat", "m", Timing())
    entry = {
        "token": "hi",
        "logprob": -0.5,
        "bytes": [104, 105],
        "top_logprobs": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105]}],
    }
    chunk: Any = {"choices": [{"delta": {"content": "hi"}, "logprobs": {"content": [entry]}}]}
    (piece,) = stream.on_chunk(chunk)
    assert piece["logprobs"] == [entry]
    assert stream.whole()["logprobs"] == [entry]
    raw = OllamaStream("generate", "m", Timing())
    completion: Chunk = {
        "choices": [
            {
                "text": "a",
                "logprobs": {
                    "tokens": ["a"],
                    "token_logprobs": [-1.0],
                    "top_logprobs": [{"a": -1.0}],
                },
            }
        ]
    }
    (piece,) = raw.on_chunk(completion)
    assert piece["logprobs"] == [
        {
            "token": "a",
            "logprob": -1.0,
            "bytes": [97],
            "top_logprobs": [{"token": "a", "logprob": -1.0, "bytes": [97]}],
        }
    ]


@pytest.mark.parametrize(
    ("switch", "always", "think", "expected"),
    [
        ("enable_thinking", False, True, {"chat_template_kwargs": {"enable_thinking": True}}),
        ("thinking", False, False, {"chat_template_kwargs": {"thinking": False}}),
        (
            "enable_thinking",
            False,
            "low",
            {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"},
        ),
        ("reasoning_effort", False, "max", {"reasoning_effort": "high"}),
        ("reasoning_effort", False, True, {"reasoning_effort": "medium"}),
        ("reasoning_effort", False, False, {"reasoning_effort": "low"}),
        (None, True, False, {}),  # always thinks: nothing to switch off
        (None, True, "high", {"reasoning_effort": "high"}),
    ],
)
def test_think_uses_the_switch_the_model_reads(
    switch: ThinkingSwitch | None, always: bool, think: object, expected: dict[str, Any]
) -> None:
    traits = ModelTraits(
        served_name="m",
        capabilities=frozenset({"completion", "thinking"}),
        thinking_switch=switch,
        always_thinks=always,
    )
    body = chat_call({"messages": [], "think": think}, traits, "m").body
    assert {
        k: body[k] for k in ("chat_template_kwargs", "reasoning_effort") if k in body
    } == expected
