"""Context-aware limits on real vLLM (issue 20): the demo `tiny` serves a 65,536-token context.

What clients send today: Claude Code's `max_tokens: 32000` (Anthropic Messages), Codex's
Responses, an OpenAI chat with a budget over the context (`BUDGET`, past the demo's context as
32,000 is past a 32k model's); each gets a finished answer, its budget lowered to what fits. A
prompt that alone does not fit is a 400 naming both numbers. Prompts are
sized with the worker's own `/tokenize` so that little room is left for the answer: the random
model rarely stops by itself, and an answer of the whole context would take a while on 2 cores.
"""

from __future__ import annotations

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.daemon import Daemon

pytestmark = pytest.mark.e2e

CONTEXT = 65536
BUDGET = 100_000  # over the context
UNIT = "hello world "


def _prompt(daemon: Daemon, tokens: int) -> str:
    """Text of about `tokens` tokens for `tiny`, as its tokenizer counts them."""
    sample = UNIT * 100
    answer = httpx.post(
        daemon.url + "/tokenize",
        json={"model": "tiny", "prompt": sample, "add_special_tokens": False},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["max_model_len"] == CONTEXT
    per_unit = answer.json()["count"] / 100
    return UNIT * int(tokens / per_unit)


def test_anthropic_max_tokens_32000_gets_a_finished_answer(vllama_daemon: Daemon) -> None:
    client = anthropic.Anthropic(base_url=vllama_daemon.url, api_key="unused", timeout=600)
    text = _prompt(vllama_daemon, CONTEXT - 80)
    reply = client.messages.create(
        model="tiny", max_tokens=32000, messages=[{"role": "user", "content": text}]
    )
    assert reply.stop_reason in ("max_tokens", "end_turn")
    assert reply.usage.output_tokens > 0
    assert reply.usage.input_tokens + reply.usage.output_tokens <= CONTEXT
    with client.messages.stream(
        model="tiny", max_tokens=BUDGET, messages=[{"role": "user", "content": text}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("max_tokens", "end_turn")
    assert final.usage.output_tokens > 0


def test_responses_and_chat_with_a_budget_over_the_context_get_answers(
    vllama_daemon: Daemon,
) -> None:
    client = openai.OpenAI(base_url=vllama_daemon.url + "/v1", api_key="unused", timeout=600)
    text = _prompt(vllama_daemon, CONTEXT - 80)
    response = client.responses.create(model="tiny", input=text, max_output_tokens=BUDGET)
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and response.usage.output_tokens > 0
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": text}], max_tokens=BUDGET
    )
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage is not None and chat.usage.total_tokens <= CONTEXT
    streamed = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": text}],
        max_completion_tokens=BUDGET,
        stream=True,
    )
    reasons = [c.choices[0].finish_reason for c in streamed if c.choices]
    assert reasons[-1] in ("length", "stop")
    reply = ollama.Client(host=vllama_daemon.url, timeout=600).generate(
        model="tiny", prompt=text, options={"num_predict": BUDGET, "num_ctx": 200_000}
    )
    assert reply.done and reply.done_reason in ("length", "stop")


def test_a_prompt_over_the_context_is_a_400_naming_both_numbers(vllama_daemon: Daemon) -> None:
    text = _prompt(vllama_daemon, CONTEXT * 6 // 5)  # well over: the estimate is per 100 units
    chat = openai.OpenAI(base_url=vllama_daemon.url + "/v1", api_key="unused", timeout=600)
    with pytest.raises(openai.BadRequestError) as refused:
        chat.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": text}], max_tokens=10
        )
    message = str(refused.value)
    assert str(CONTEXT) in message and str(CONTEXT + 1) in message, message
    messages = anthropic.Anthropic(base_url=vllama_daemon.url, api_key="unused", timeout=600)
    with pytest.raises(anthropic.BadRequestError) as refused_anthropic:
        messages.messages.create(
            model="tiny", max_tokens=32000, messages=[{"role": "user", "content": text}]
        )
    body = refused_anthropic.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert str(CONTEXT) in body["error"]["message"] and str(CONTEXT + 1) in str(body)
    with pytest.raises(ollama.ResponseError) as refused_ollama:
        ollama.Client(host=vllama_daemon.url, timeout=600).generate(model="tiny", prompt=text)
    assert refused_ollama.value.status_code == 400
    assert str(CONTEXT) in refused_ollama.value.error
