"""The clients people run today, against real vLLM through vllama: Open WebUI's first chat (with
its tools), coding agents' APIs (Anthropic Messages, OpenAI Responses) through the official SDKs,
rerank and score on a cross-encoder, Ollama's logprobs and think.

The models have random weights: every check is on the shape and the protocol, never on meaning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import anthropic
import httpx
import ollama
import openai
import pytest
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import Daemon
from tests.e2e.helpers import WEATHER_TOOL, workers

pytestmark = pytest.mark.e2e

WEATHER = WEATHER_TOOL


# What Open WebUI 0.12.4 sent a fresh vllama (`make serve`) on its Ollama connection, from a new
# admin's sign-in to the end of the first chat ("hello" to `tiny`), in order, captured by
# `benchmarks/openwebui_check.py --record`: its model and version polls, then the chat's title
# task (non-streamed, num_predict 1000) a second before the chat itself (streamed, no options,
# its 36 built-in tools, about 25 KB), then its follow-up and tag tasks (non-streamed, no
# options). To capture a later release, run the script with `--record FILE` and keep the
# requests (docs/BENCHMARKS.md).
OPEN_WEBUI_FIRST_CHAT = json.loads(
    (Path(__file__).parent / "fixtures" / "open_webui_first_chat.json").read_text()
)
OPEN_WEBUI_REQUESTS: list[dict[str, Any]] = OPEN_WEBUI_FIRST_CHAT["requests"]


def open_webui_chat() -> dict[str, Any]:
    """The first chat's own request: the streamed one, with the tools."""
    (chat,) = [r["body"] for r in OPEN_WEBUI_REQUESTS if r.get("body", {}).get("tools")]
    return cast(dict[str, Any], chat)


def test_open_webui_first_chat_with_its_tools_streams_to_done(vllama_daemon: Daemon) -> None:
    body = open_webui_chat()
    assert body["stream"] is True and len(body["tools"]) == 36
    assert "num_predict" not in body.get("options", {})
    started = time.monotonic()
    with httpx.stream("POST", vllama_daemon.url + "/api/chat", json=body, timeout=300) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in answer.iter_lines() if line.strip()]
    elapsed = time.monotonic() - started
    last = lines[-1]
    assert "error" not in last, last
    # Ended by the model (the demo's answers end on their own), not by a budget: no num_predict
    # and a 65,536-token context leave the budget to the context.
    assert last["done"] is True and last["done_reason"] == "stop", last
    assert 0 < last["eval_count"] < 100, last
    # The 36 tools reached the template (18,313 prompt tokens in 0.12.4's capture), and the
    # whole request fits the demo's context.
    assert 5000 < last["prompt_eval_count"] < 65536 - last["eval_count"], last
    assert all(line["model"] == "tiny:latest" for line in lines)
    assert all(line["done"] is False for line in lines[:-1])
    # Reasonably fast: seconds of prefill and decode (beyond the model's load, if this test is
    # the one that starts it; the whole request is bounded by the client's 300 s).
    work = (last["prompt_eval_duration"] + last["eval_duration"]) / 1e9
    assert work < 60, (work, elapsed)
    shown = ollama.Client(host=vllama_daemon.url).show("tiny")
    assert {"completion", "tools", "thinking"} <= set(shown.capabilities or [])


def test_open_webui_polls_and_tasks_around_the_first_chat(vllama_daemon: Daemon) -> None:
    """Everything else Open WebUI 0.12.4 sent for its first chat, in its order: each answered as
    Open WebUI reads it (the chat itself: the test above)."""
    http = httpx.Client(base_url=vllama_daemon.url, timeout=300)
    tasks = 0
    for request in OPEN_WEBUI_REQUESTS:
        body = request.get("body")
        if body is not None and body.get("tools"):
            continue
        answer = http.request(request["method"], request["path"], json=body)
        assert answer.status_code == 200, (request["path"], answer.text)
        data = answer.json()
        if request["path"] == "/api/version":
            assert data["version"]
        elif request["path"] == "/api/tags":
            # A new user's chat goes to the first model listed (Open WebUI's default): models
            # that chat come first, then embedding and rerank ones (issue 20).
            names = [m["name"] for m in data["models"]]
            chats = [
                "completion" in http.post("/api/show", json={"model": name}).json()["capabilities"]
                for name in names
            ]
            assert chats == sorted(chats, reverse=True) and not all(chats), list(
                zip(names, chats, strict=True)
            )
            assert "tiny:latest" in names
        elif request["path"] == "/api/ps":
            assert isinstance(data["models"], list)
        else:  # a title, follow-up or tags task: one JSON answer, ended by the model
            assert request["path"] == "/api/chat" and body is not None and body["stream"] is False
            assert data["done"] is True and data["done_reason"] == "stop", data
            assert data["message"]["role"] == "assistant" and data["message"]["content"], data
            assert data["eval_count"] < body.get("options", {}).get("num_predict", 100), data
            tasks += 1
    assert tasks == 3  # title, follow-ups, tags


def generated_tokens(daemon: Daemon, model: str) -> float:
    """`vllama_generated_tokens_total` for `model` (0 before any)."""
    text = httpx.get(daemon.url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllama_generated_tokens_total" and sample.labels == {"model": model}:
                return sample.value
    return 0.0


def test_anthropic_sdk_create_stream_count_tokens_and_errors(vllama_daemon: Daemon) -> None:
    client = anthropic.Anthropic(base_url=vllama_daemon.url, api_key="unused", timeout=300)
    messages: list[MessageParam] = [{"role": "user", "content": "Hello there"}]
    before = generated_tokens(vllama_daemon, "tiny")
    reply = client.messages.create(model="tiny", max_tokens=8, messages=messages)
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.content and reply.content[0].type == "text"
    assert reply.usage.output_tokens == 8 and reply.stop_reason == "max_tokens"
    with client.messages.stream(model="tiny", max_tokens=8, messages=messages) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "".join(b.text for b in final.content if b.type == "text")
    assert final.usage.output_tokens == 8
    assert generated_tokens(vllama_daemon, "tiny") - before == 16  # issue 20: both counted
    counted = client.messages.count_tokens(model="tiny", messages=messages)
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=8, messages=messages)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # vLLM's own refusal (SamplingParams' range) in Anthropic's type, not "BadRequestError".
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="tiny", max_tokens=8, messages=messages, extra_body={"temperature": 5}
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_anthropic_sdk_tools_reach_the_models_template(vllama_daemon: Daemon) -> None:
    client = anthropic.Anthropic(base_url=vllama_daemon.url, api_key="unused", timeout=300)
    function = cast(dict[str, Any], WEATHER["function"])
    tool: ToolParam = {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": function["parameters"],
    }
    messages: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    bare = client.messages.count_tokens(model="tiny", messages=messages)
    with_tools = client.messages.count_tokens(model="tiny", messages=messages, tools=[tool])
    assert with_tools.input_tokens > bare.input_tokens  # the template rendered the tool
    # Random weights rarely finish a call in valid JSON: the check is that the request is
    # accepted with vLLM's tool parser on, and that any call comes back as a tool_use block.
    reply = client.messages.create(
        model="tiny",
        max_tokens=16,
        messages=messages,
        tools=[tool],
    )
    assert reply.stop_reason in ("tool_use", "max_tokens", "end_turn")
    for block in reply.content:
        assert block.type in ("text", "tool_use")
        if block.type == "tool_use":
            assert isinstance(block.input, dict)


def test_openai_responses_api_streamed_and_not(vllama_daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=vllama_daemon.url + "/v1", api_key="unused", timeout=300)
    before = generated_tokens(vllama_daemon, "tiny")
    response = client.responses.create(model="tiny", input="Hello", max_output_tokens=8)
    assert response.id.startswith("resp_") and response.output_text
    # Random weights never stop on their own: the 8-token limit ends the response.
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    kinds = [event.type for event in client.responses.create(
        model="tiny", input="Hello", max_output_tokens=8, stream=True
    )]  # fmt: skip
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert generated_tokens(vllama_daemon, "tiny") - before == 16  # issue 20: both counted


def test_openai_tools_reach_the_template_and_parsed_calls_are_returned(
    vllama_daemon: Daemon,
) -> None:
    client = openai.OpenAI(base_url=vllama_daemon.url + "/v1", api_key="unused", timeout=300)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    bare = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    reply = client.chat.completions.create(
        model="tiny",
        messages=messages,
        tools=[cast(ChatCompletionToolParam, WEATHER)],
        tool_choice="required",
        max_tokens=24,
    )
    assert reply.usage and bare.usage and reply.usage.prompt_tokens > bare.usage.prompt_tokens
    # "required" makes vLLM constrain the output to a call's frame; with random arguments the
    # parser may still find no complete call, but every call it returns names the tool.
    for call in reply.choices[0].message.tool_calls or []:
        assert call.type == "function" and call.function.name == "get_weather"


def test_rerank_and_score_on_a_cross_encoder(vllama_daemon: Daemon) -> None:
    url = vllama_daemon.url
    documents = ["blue sky", "red sea", "green grass"]
    body = {"model": "tiny-rerank", "query": "sky", "documents": documents, "top_n": 2}
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        answer = httpx.post(url + path, json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert len(results) == 2 and {r["index"] for r in results} <= {0, 1, 2}
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)
    score = httpx.post(
        url + "/score",
        json={"model": "tiny-rerank", "text_1": "sky", "text_2": documents},
        timeout=300,
    )
    assert score.status_code == 200 and len(score.json()["data"]) == 3
    # Chat on a reranker is refused before anything else, in OpenAI's envelope.
    chat = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "tiny-rerank", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert chat.status_code == 400
    assert chat.json()["error"]["message"] == '"tiny-rerank" does not support chat'
    assert "tiny-rerank" in workers(vllama_daemon)  # loaded by the rerank, not by the chat


def test_ollama_logprobs_and_think(vllama_daemon: Daemon) -> None:
    api = ollama.Client(host=vllama_daemon.url, timeout=300)
    messages = [{"role": "user", "content": "Hello"}]
    reply = api.chat(
        model="tiny", messages=messages, logprobs=True, top_logprobs=2, options={"num_predict": 4}
    )
    logprobs = reply.logprobs or []
    assert len(logprobs) == 4
    assert all(len(entry.top_logprobs or []) == 2 and entry.logprob <= 0 for entry in logprobs)
    streamed = [
        entry
        for part in api.chat(
            model="tiny", messages=messages, logprobs=True, stream=True, options={"num_predict": 4}
        )
        for entry in part.logprobs or []
    ]
    assert len(streamed) == 4
    # think: the demo model reasons when asked (its first ~22 tokens: 6 are all thinking).
    thought = api.chat(model="tiny", messages=messages, think=True, options={"num_predict": 6})
    assert thought.message.thinking and thought.done
    plain = api.chat(model="tiny", messages=messages, think=False, options={"num_predict": 6})
    assert plain.message.content and not plain.message.thinking


def test_lora_adapters_share_their_base_models_worker(
    vllama_daemon: Daemon, demo_models: dict[str, object]
) -> None:
    api = ollama.Client(host=vllama_daemon.url, timeout=300)
    # A derived model with an adapter (before the base loads: one start serves all three).
    api.create(model="my-lora", from_="tiny-lora", adapters={"mine": str(demo_models["lora"])})
    greedy = {"temperature": 0, "num_predict": 8}

    def complete(model: str) -> str:
        text = api.generate(model=model, prompt="hello world", raw=True, options=greedy).response
        assert text is not None
        return text

    base, configured, derived = complete("tiny-lora"), complete("tiny-adapter"), complete("my-lora")
    assert configured == derived  # the same adapter weights, under two names
    assert configured != base  # the adapter is applied: random LoRA weights change the tokens
    served = [name for name in workers(vllama_daemon) if name.startswith(("tiny-lora", "tiny-ad"))]
    assert served == ["tiny-lora"]  # one worker for the base and its adapters
    listed = {m.model for m in api.list().models}
    assert {"tiny-lora:latest", "tiny-adapter:latest", "my-lora:latest"} <= listed
    assert "ADAPTER" in (api.show("tiny-adapter").modelfile or "")
    with pytest.raises(ollama.ResponseError) as info:
        api.create(model="bad", from_="tiny-lora", adapters={"x": "/nonexistent"})
    assert info.value.status_code == 400 and "PEFT" in str(info.value)
