"""Ollama's `/api/generate` and `/api/chat` requests as vLLM OpenAI requests: pure, no I/O.

Requests go upstream always streamed with usage, so durations are measured even when the client
asked for one JSON object. The body is validated once (`protocol.GenerateRequest`,
`protocol.ChatRequest`); what depends on the model is refused here, as `BadRequest`, before a
worker is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from vllama.api.errors import BadRequest
from vllama.api.ollama.options import fit_output, set_sampling
from vllama.api.ollama.protocol import ChatRequest, GenerateRequest, Message, Think, ToolCall
from vllama.api.ollama.wire import (
    ChatMessage,
    Content,
    ImagePart,
    ResponseFormat,
    TextPart,
    UpstreamBody,
)
from vllama.api.ollama.wire import ToolCall as UpstreamToolCall
from vllama.api.protocol import JsonObject
from vllama.catalog.registry import ModelTraits

Endpoint = Literal["generate", "chat"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


@dataclass(frozen=True)
class UpstreamCall:
    path: str
    body: UpstreamBody


def _format(value: str | JsonObject | None) -> ResponseFormat | None:
    if not value:
        return None
    if value == "json":
        return {"type": "json_object"}
    assert isinstance(value, dict)  # the request's type: "", "json" or an object
    return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}


def _think(body: UpstreamBody, value: Think | None, traits: ModelTraits, requested: str) -> None:
    """Ollama's `think` in the switch this model's template reads (see docs/MODELS.md)."""
    if value is None:
        return
    if "thinking" not in traits.capabilities:
        if value is False:
            return
        raise BadRequest(f'"{requested}" does not support thinking')
    effort = ("high" if value == "max" else value) if isinstance(value, str) else None
    switch = traits.thinking_switch
    if switch == "reasoning_effort":  # gpt-oss: always reasons; the effort is all it takes
        body["reasoning_effort"] = effort or ("low" if value is False else "medium")
        return
    if not (traits.always_thinks or switch is None):
        body["chat_template_kwargs"] = {switch: value is not False}
    if effort:
        body["reasoning_effort"] = effort


def _logprobs(body: UpstreamBody, request: GenerateRequest | ChatRequest, chat: bool) -> None:
    """Ollama's `logprobs` and `top_logprobs` (0-20) in vLLM's chat or completions form."""
    top = request.top_logprobs
    if not request.logprobs and not top:
        return
    if chat:
        body["logprobs"], body["top_logprobs"] = True, top or 0
    else:
        body["logprobs"] = top or 0


def _image_part(image: str) -> ImagePart:
    mime = "image/png"
    for prefix, kind in (("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklG", "image/webp")):
        if image.startswith(prefix):
            mime = kind
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _content(text: str, images: list[str] | None) -> Content:
    if not images:
        return text
    text_part: TextPart = {"type": "text", "text": text}
    return [text_part, *(_image_part(image) for image in images)]


def _body(request: GenerateRequest | ChatRequest, traits: ModelTraits) -> UpstreamBody:
    """The model, sampling, format and stream settings every translated request carries."""
    merged = {**traits.parameters, **(request.options or {})}
    body: UpstreamBody = {"model": traits.served_name}
    set_sampling(body, merged)
    fit_output(body, merged, traits.max_output_tokens, traits.context_length)
    response_format = _format(request.format)
    if response_format is not None:
        body["response_format"] = response_format
    body["stream"], body["stream_options"] = True, {"include_usage": True}
    if request.truncate:  # vLLM truncates the prompt to the model's length (the oldest go)
        body["truncate_prompt_tokens"] = -1
    return body


def generate_call(
    payload: GenerateRequest | Mapping[str, object], traits: ModelTraits, requested: str
) -> UpstreamCall:
    """`/api/generate` -> a vLLM request (chat when templated, completions when raw)."""
    request = payload if isinstance(payload, GenerateRequest) else GenerateRequest.parse(payload)
    if request.suffix:
        raise BadRequest(
            f'"{requested}" does not support insert: vLLM has no fill-in-the-middle (suffix) API'
        )
    prompt = request.prompt or ""
    body = _body(request, traits)
    if request.raw:
        body["prompt"] = prompt
        if "max_tokens" not in body and traits.context_length is not None:
            # vLLM's /v1/completions stops at 16 tokens without one; Ollama at the context.
            body["max_tokens"] = traits.context_length
        _logprobs(body, request, chat=False)
        return UpstreamCall(COMPLETIONS_PATH, body)
    messages: list[ChatMessage] = []
    system = request.system if request.system is not None else traits.system
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, request.images)})
    body["messages"] = messages
    _think(body, request.think, traits, requested)
    _logprobs(body, request, chat=True)
    return UpstreamCall(CHAT_PATH, body)


def chat_call(
    payload: ChatRequest | Mapping[str, object], traits: ModelTraits, requested: str
) -> UpstreamCall:
    """`/api/chat` -> a vLLM chat completion request (no messages: a load)."""
    request = payload if isinstance(payload, ChatRequest) else ChatRequest.parse(payload)
    converted = [_message(m, i) for i, m in enumerate(request.messages or [])]
    if traits.system and not any(m["role"] == "system" for m in converted):
        converted.insert(0, {"role": "system", "content": traits.system})
    _link_tool_results(converted)
    body = _body(request, traits)
    body["messages"] = converted
    if request.tools:
        if "tools" not in traits.capabilities:
            raise BadRequest(f'"{requested}" does not support tools')
        body["tools"] = [t if "type" in t else {"type": "function", **t} for t in request.tools]
    _think(body, request.think, traits, requested)
    _logprobs(body, request, chat=True)
    return UpstreamCall(CHAT_PATH, body)


def _message(message: Message, index: int) -> ChatMessage:
    out: ChatMessage = {
        "role": message.role,
        "content": _content(message.content or "", message.images),
    }
    if message.tool_calls:
        out["tool_calls"] = [
            _tool_call(call, index, i) for i, call in enumerate(message.tool_calls)
        ]
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
        if message.tool_name is not None:
            out["tool_name"] = message.tool_name
    return out


def _tool_call(call: ToolCall, message_index: int, index: int) -> UpstreamToolCall:
    arguments = call.function.arguments
    return {
        "id": call.id or f"call_{message_index}_{index}",
        "type": "function",
        "function": {
            "name": call.function.name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _link_tool_results(messages: list[ChatMessage]) -> None:
    """OpenAI needs each tool result's `tool_call_id`; Ollama clients often send only a name."""
    pending: list[UpstreamToolCall] = []
    for message in messages:
        if message["role"] == "assistant" and "tool_calls" in message:
            pending = list(message["tool_calls"])
        elif message["role"] == "tool":
            name = message.pop("tool_name", None)
            if "tool_call_id" not in message:
                match = next((c for c in pending if c["function"]["name"] == name), None)
                match = match or (pending[0] if pending else None)
                message["tool_call_id"] = match["id"] if match else "call_unknown"
            pending = [c for c in pending if c["id"] != message["tool_call_id"]]
