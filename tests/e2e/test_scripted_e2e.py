"""What comes back through vllama, checked for content: real vLLM with real parsers, on a model
that says what the test chose (`tiny-scripted`: tests/scripted/).

Each prompt names a script (`marker`); the worker's logits processor forces that script's tokens
and then end-of-sequence, so vLLM's hermes tool parser, qwen3 reasoning parser, grammar and stop
strings see real text, and every API's answer can be compared with what the script says: Ollama's
`/api/chat` (official `ollama` client), OpenAI chat and Responses (`openai` SDK), Anthropic
Messages (`anthropic` SDK), streamed and not.
"""

from __future__ import annotations

import json
from typing import Any, cast

import anthropic
import ollama
import openai
import pytest
from anthropic.types import ToolParam
from openai.types.chat import ChatCompletionToolParam
from openai.types.responses import FunctionToolParam

from tests.daemon import Daemon
from tests.scripted.scripts import (
    ANSWER,
    BEFORE_STOP,
    JSON_ANSWER,
    PLAIN,
    REASONING,
    STOP_STRING,
    TIME_ARGS,
    WEATHER_ARGS,
    marker,
)

pytestmark = pytest.mark.e2e

MODEL = "tiny-scripted"
TIMEOUT = 300


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties},
    }


FUNCTIONS = [
    _function(
        "get_weather",
        "Weather for a city",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    ),
    _function("get_time", "Time in a timezone", {"timezone": {"type": "string"}}),
]
# The same two tools in each API's own shape.
CHAT_TOOLS = [cast(ChatCompletionToolParam, {"type": "function", "function": f}) for f in FUNCTIONS]
RESPONSES_TOOLS = [cast(FunctionToolParam, {"type": "function", **f}) for f in FUNCTIONS]
ANTHROPIC_TOOLS = [
    cast(
        ToolParam,
        {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]},
    )
    for f in FUNCTIONS
]
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "capital": {"type": "string"},
        "country": {"type": "string"},
        "population_millions": {"type": "integer"},
    },
    "required": ["capital", "country", "population_millions"],
}
THINK_ON = {"chat_template_kwargs": {"enable_thinking": True}}


def ask(script: str) -> str:
    return f"Answer as scripted. {marker(script)}"


def _ollama(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=TIMEOUT)


def _openai(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=TIMEOUT)


def _anthropic(daemon: Daemon) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=daemon.url, api_key="unused", timeout=TIMEOUT)


# --- the model itself ------------------------------------------------------------------------


def test_a_scripted_answer_ends_on_its_own(vllama_daemon: Daemon) -> None:
    reply = _ollama(vllama_daemon).chat(
        model=MODEL, messages=[{"role": "user", "content": ask("plain")}]
    )
    assert reply.message.content == PLAIN
    assert reply.done_reason == "stop"  # end-of-sequence, not the length cap


# --- tool calls ------------------------------------------------------------------------------


def test_ollama_chat_returns_the_tool_calls_the_model_made(vllama_daemon: Daemon) -> None:
    client = _ollama(vllama_daemon)
    messages = [{"role": "user", "content": ask("two_calls")}]
    tools = [{"type": "function", "function": f} for f in FUNCTIONS]
    reply = client.chat(model=MODEL, messages=messages, tools=tools)
    calls = [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls or []]
    assert calls == [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]
    assert reply.message.content == ""

    streamed = []
    for chunk in client.chat(model=MODEL, messages=messages, tools=tools, stream=True):
        streamed += [
            (c.function.name, dict(c.function.arguments)) for c in chunk.message.tool_calls or []
        ]
        assert chunk.message.content in ("", None), chunk
    assert streamed == calls


def test_ollama_chat_sends_a_tool_call_back_and_reads_the_answer(vllama_daemon: Daemon) -> None:
    # A tool call from the first answer goes back in the history (arguments as an object, as
    # Ollama sends them) with the tool's result, which names the next script.
    client = _ollama(vllama_daemon)
    tools = [{"type": "function", "function": f} for f in FUNCTIONS]
    messages: list[Any] = [{"role": "user", "content": ask("weather_call")}]
    first = client.chat(model=MODEL, messages=messages, tools=tools)
    assert first.message.tool_calls
    messages += [first.message, {"role": "tool", "content": f"18 degrees {marker('plain')}"}]
    second = client.chat(model=MODEL, messages=messages, tools=tools)
    assert second.message.content == PLAIN and not second.message.tool_calls


def test_openai_chat_returns_tool_calls(vllama_daemon: Daemon) -> None:
    client = _openai(vllama_daemon)
    messages: Any = [{"role": "user", "content": ask("two_calls")}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=CHAT_TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [
        (c.function.name, json.loads(c.function.arguments))
        for c in choice.message.tool_calls or []
        if c.type == "function"
    ]
    assert calls == [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]

    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=messages, tools=CHAT_TOOLS, stream=True
    ):
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if delta.function and delta.function.name:
                names[delta.index] = delta.function.name
            if delta.function and delta.function.arguments:
                arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert [(names[i], json.loads(arguments[i])) for i in sorted(names)] == calls
    assert finish == "tool_calls"


def test_responses_returns_function_call_items(vllama_daemon: Daemon) -> None:
    client = _openai(vllama_daemon)
    reply = client.responses.create(model=MODEL, input=ask("two_calls"), tools=RESPONSES_TOOLS)
    calls = [
        (item.name, json.loads(item.arguments))
        for item in reply.output
        if item.type == "function_call"
    ]
    assert calls == [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]

    with client.responses.stream(
        model=MODEL, input=ask("weather_call"), tools=RESPONSES_TOOLS
    ) as stream:
        final = stream.get_final_response()
    items = [i for i in final.output if i.type == "function_call"]
    assert [(i.name, json.loads(i.arguments)) for i in items] == [("get_weather", WEATHER_ARGS)]


def test_anthropic_messages_return_tool_use_blocks(vllama_daemon: Daemon) -> None:
    client = _anthropic(vllama_daemon)
    messages: Any = [{"role": "user", "content": ask("two_calls")}]
    reply = client.messages.create(
        model=MODEL, max_tokens=512, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert reply.stop_reason == "tool_use"
    uses = [(b.name, b.input) for b in reply.content if b.type == "tool_use"]
    assert uses == [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]

    with client.messages.stream(
        model=MODEL, max_tokens=512, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == uses
    assert final.stop_reason == "tool_use"


# --- thinking --------------------------------------------------------------------------------


def test_ollama_think_splits_thinking_from_content(vllama_daemon: Daemon) -> None:
    client = _ollama(vllama_daemon)
    messages = [{"role": "user", "content": ask("thinking")}]
    reply = client.chat(model=MODEL, messages=messages, think=True)
    assert (reply.message.thinking or "").strip() == REASONING
    assert (reply.message.content or "").strip() == ANSWER

    thinking, content = "", ""
    for chunk in client.chat(model=MODEL, messages=messages, think=True, stream=True):
        thinking += chunk.message.thinking or ""
        content += chunk.message.content or ""
    assert (thinking.strip(), content.strip()) == (REASONING, ANSWER)


def test_openai_chat_returns_the_reasoning_apart(vllama_daemon: Daemon) -> None:
    client = _openai(vllama_daemon)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ask("thinking")}], extra_body=THINK_ON
    )
    message = reply.choices[0].message
    extra = message.model_extra or {}
    reasoning = extra.get("reasoning") or extra.get("reasoning_content") or ""
    assert reasoning.strip() == REASONING
    assert (message.content or "").strip() == ANSWER


def test_anthropic_thinking_comes_back_as_thinking_blocks(vllama_daemon: Daemon) -> None:
    client = _anthropic(vllama_daemon)
    reply = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=[{"role": "user", "content": ask("thinking")}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body=THINK_ON,
    )
    thinking = [b.thinking for b in reply.content if b.type == "thinking"]
    text = [b.text for b in reply.content if b.type == "text"]
    assert [t.strip() for t in thinking] == [REASONING]
    assert [t.strip() for t in text] == [ANSWER]


# --- structured output and stop strings ------------------------------------------------------


def test_ollama_format_schema_answer_parses(vllama_daemon: Daemon) -> None:
    reply = _ollama(vllama_daemon).chat(
        model=MODEL, messages=[{"role": "user", "content": ask("json")}], format=CITY_SCHEMA
    )
    assert json.loads(reply.message.content or "") == JSON_ANSWER


def test_openai_json_schema_answer_parses(vllama_daemon: Daemon) -> None:
    schema: Any = {"name": "city", "schema": CITY_SCHEMA, "strict": True}
    messages: Any = [{"role": "user", "content": ask("json")}]
    reply = _openai(vllama_daemon).chat.completions.create(
        model=MODEL,
        messages=messages,
        response_format={"type": "json_schema", "json_schema": schema},
    )
    assert json.loads(reply.choices[0].message.content or "") == JSON_ANSWER


def test_stop_strings_end_the_answer_before_them(vllama_daemon: Daemon) -> None:
    messages = [{"role": "user", "content": ask("stop")}]
    reply = _ollama(vllama_daemon).chat(
        model=MODEL, messages=messages, options={"stop": [STOP_STRING]}
    )
    assert reply.message.content == BEFORE_STOP and reply.done_reason == "stop"
    streamed = "".join(
        chunk.message.content or ""
        for chunk in _ollama(vllama_daemon).chat(
            model=MODEL, messages=messages, options={"stop": [STOP_STRING]}, stream=True
        )
    )
    assert streamed == BEFORE_STOP
    chat = _openai(vllama_daemon).chat.completions.create(
        model=MODEL, messages=cast(Any, messages), stop=[STOP_STRING]
    )
    assert chat.choices[0].message.content == BEFORE_STOP
    assert chat.choices[0].finish_reason == "stop"
