"""The demo chat model (`tiny`, vllama/demo/build.py) as real clients use it: a 65,536-token
context, and answers that end on their own, with end-of-sequence from its weights, about fifty
tokens after the answer starts, whatever the prompt's length or the sampling settings; asked to
think (as Claude Code asks by default), it closes its thinking block by itself first, so vLLM's
reasoning parser returns both thinking and content.
"""

from __future__ import annotations

from typing import Any

import anthropic
import ollama
import openai
import pytest
from anthropic.types import TextBlock, ThinkingBlock

from tests.daemon import Daemon

pytestmark = pytest.mark.e2e

TIMEOUT = 300
# Where the weights put end-of-sequence: ~50 tokens after <|answer|> (a few more on long prompts
# is fine, as is a few less); far from any length cap the tests set.
ANSWER_TOKENS = range(40, 64)


def test_demo_answers_end_on_their_own(vllama_daemon: Daemon) -> None:
    api = ollama.Client(host=vllama_daemon.url, timeout=TIMEOUT)
    shown = api.show("tiny")
    assert (shown.modelinfo or {}).get("llama.context_length") == 65536
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    for options in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.7}):
        reply = api.chat(model="tiny", messages=messages, options=options)
        assert reply.done_reason == "stop", options  # end-of-sequence, not a length cap
        assert reply.eval_count in ANSWER_TOKENS, (options, reply.eval_count)

    # A long prompt and a history of earlier answers move nothing.
    history = [
        {"role": "user", "content": "Tell me a story. " * 600},
        {"role": "assistant", "content": "Once upon a time. " * 40},
        {"role": "user", "content": "And then?"},
    ]
    long = api.chat(model="tiny", messages=history, options={"temperature": 0})
    assert long.prompt_eval_count and long.prompt_eval_count > 3000
    assert long.done_reason == "stop" and long.eval_count in ANSWER_TOKENS


def test_demo_answers_end_for_the_anthropic_and_openai_sdks(vllama_daemon: Daemon) -> None:
    # Claude Code reports an answer stopped by max_tokens as an error: it must be end_turn.
    claude = anthropic.Anthropic(base_url=vllama_daemon.url, api_key="unused", timeout=TIMEOUT)
    message = claude.messages.create(
        model="tiny", max_tokens=4096, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens in ANSWER_TOKENS
    oai = openai.OpenAI(base_url=vllama_daemon.url + "/v1", api_key="unused", timeout=TIMEOUT)
    reply = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens in ANSWER_TOKENS


def test_demo_thinks_then_answers_when_asked(vllama_daemon: Daemon) -> None:
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    # What Claude Code sends by default: adaptive thinking and an effort (vLLM: enable_thinking).
    claude = anthropic.Anthropic(base_url=vllama_daemon.url, api_key="unused", timeout=TIMEOUT)
    asked: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": 4096,
        "messages": messages,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
    }
    whole = claude.messages.create(**asked)
    with claude.messages.stream(**asked) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        blocks = message.content
        thinking = "".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
        text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
        assert thinking.strip() and text.strip(), message.content
        assert message.stop_reason == "end_turn", message
        assert message.usage.output_tokens in ANSWER_TOKENS, message.usage

    api = ollama.Client(host=vllama_daemon.url, timeout=TIMEOUT)
    reply = api.chat(model="tiny", messages=messages, think=True)
    assert (reply.message.thinking or "").strip() and (reply.message.content or "").strip()
    assert reply.done_reason == "stop" and reply.eval_count in ANSWER_TOKENS, reply
    parts = list(api.chat(model="tiny", messages=messages, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts).strip(), parts
    assert "".join(p.message.content or "" for p in parts).strip(), parts
    assert parts[-1].done and parts[-1].done_reason == "stop", parts[-1]
