"""Ollama's `/api/generate` and `/api/chat` bodies as vLLM OpenAI requests: pure, no I/O.

Requests go upstream always streamed with usage, so durations are measured even when the client
asked for one JSON object. Anything malformed raises `BadRequest` before a worker is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from vllama.api.errors import BadRequest
from vllama.api.ollama.options import map_options
from vllama.catalog.registry import ModelTraits

Endpoint = Literal["generate", "chat"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


@dataclass(frozen=True)
class UpstreamCall:
    path: str
    body: dict[str, Any]


def _optional_str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _format(value: object) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise BadRequest('format must be "json" or a JSON schema object')


def _think(value: object, traits: ModelTraits, requested: str) -> dict[str, Any]:
    """Ollama's `think` in the switch this model's template reads (see docs/MODELS.md)."""
    if value is None:
        return {}
    if not isinstance(value, bool) and value not in ("low", "medium", "high", "max"):
        raise BadRequest('think must be true, false, "low", "medium", "high" or "max"')
    if "thinking" not in traits.capabilities:
        if value is False:
            return {}
        raise BadRequest(f'"{requested}" does not support thinking')
    effort = ("high" if value == "max" else value) if isinstance(value, str) else None
    switch = traits.thinking_switch
    if switch == "reasoning_effort":  # gpt-oss: always reasons; the effort is all it takes
        return {"reasoning_effort": effort or ("low" if value is False else "medium")}
    if traits.always_thinks or switch is None:
        return {"reasoning_effort": effort} if effort else {}
    extra: dict[str, Any] = {"chat_template_kwargs": {switch: value is not False}}
    if effort:
        extra["reasoning_effort"] = effort
    return extra


def _logprobs(payload: dict[str, Any], chat: bool) -> dict[str, Any]:
    """Ollama's `logprobs` and `top_logprobs` (0-20) in vLLM's chat or completions form."""
    wanted = payload.get("logprobs")
    top = payload.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise BadRequest("logprobs must be a boolean")
    if top is not None and (
        not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20
    ):
        raise BadRequest("top_logprobs must be between 0 and 20")
    if not wanted and not top:
        return {}
    if chat:
        return {"logprobs": True, "top_logprobs": top or 0}
    return {"logprobs": top or 0}


def _refused_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """Fields vLLM cannot honour are refused before any load; `truncate: true` is vLLM's
    truncation of the prompt to the model's length (the oldest tokens go)."""
    if payload.get("template"):
        raise BadRequest(
            "template is not supported: vLLM renders the model's own Jinja chat template "
            "(Ollama's Go templates do not apply); see docs/API.md"
        )
    shift, truncate = payload.get("shift"), payload.get("truncate")
    if shift is not None and not isinstance(shift, bool):
        raise BadRequest("shift must be a boolean")
    if shift:
        raise BadRequest(
            "shift is not supported: vLLM does not shift the context; a generation that "
            'reaches the context length stops with done_reason "length"'
        )
    if truncate is not None and not isinstance(truncate, bool):
        raise BadRequest("truncate must be a boolean")
    return {"truncate_prompt_tokens": -1} if truncate else {}


def _image_part(image: object) -> dict[str, Any]:
    if not isinstance(image, str):
        raise BadRequest("images must be base64 strings")
    mime = "image/png"
    for prefix, kind in (("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklG", "image/webp")):
        if image.startswith(prefix):
            mime = kind
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _content(text: str, images: object) -> str | list[dict[str, Any]]:
    if images is not None and not isinstance(images, list):
        raise BadRequest("images must be a list of base64 strings")
    if not images:
        return text
    return [{"type": "text", "text": text}, *(_image_part(image) for image in images)]


def _sampling(payload: dict[str, Any], traits: ModelTraits) -> dict[str, Any]:
    options = payload.get("options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("options must be a JSON object")
    merged = {**traits.parameters, **(options or {})}
    body = map_options(merged, traits.context_length)
    response_format = _format(payload.get("format"))
    if response_format is not None:
        body["response_format"] = response_format
    return body


def _stream_settings() -> dict[str, Any]:
    return {"stream": True, "stream_options": {"include_usage": True}}


def generate_call(payload: dict[str, Any], traits: ModelTraits, requested: str) -> UpstreamCall:
    """`/api/generate` -> a vLLM request (chat when templated, completions when raw)."""
    prompt = _optional_str(payload, "prompt") or ""
    system = _optional_str(payload, "system")
    raw = payload.get("raw", False)
    if not isinstance(raw, bool):
        raise BadRequest("raw must be a boolean")
    if _optional_str(payload, "suffix"):
        raise BadRequest(
            f'"{requested}" does not support insert: vLLM has no fill-in-the-middle (suffix) API'
        )
    if payload.get("context"):
        raise BadRequest(
            "context (the deprecated token memory of /api/generate) is not supported; "
            "use /api/chat with the conversation's messages"
        )
    if raw and (payload.get("template") or system):
        raise BadRequest("raw mode does not support template, system, or context")
    body: dict[str, Any] = {"model": traits.served_name, **_sampling(payload, traits)}
    body |= _stream_settings() | _refused_fields(payload)
    if raw:
        if payload.get("images"):
            raise BadRequest("raw mode does not support images")
        body["prompt"] = prompt
        return UpstreamCall(COMPLETIONS_PATH, body | _logprobs(payload, chat=False))
    messages: list[dict[str, Any]] = []
    system = system if system is not None else traits.system
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, payload.get("images"))})
    body["messages"] = messages
    body |= _think(payload.get("think"), traits, requested) | _logprobs(payload, chat=True)
    return UpstreamCall(CHAT_PATH, body)


_ROLES = ("system", "user", "assistant", "tool")


def chat_call(payload: dict[str, Any], traits: ModelTraits, requested: str) -> UpstreamCall:
    """`/api/chat` -> a vLLM chat completion request."""
    messages = payload.get("messages")
    if messages is None:
        messages = []  # no messages: a load (Ollama's), still checked field by field
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    converted = [_message(m, i) for i, m in enumerate(messages)]
    if traits.system and not any(m["role"] == "system" for m in converted):
        converted.insert(0, {"role": "system", "content": traits.system})
    _link_tool_results(converted)
    body: dict[str, Any] = {"model": traits.served_name, "messages": converted}
    body |= _sampling(payload, traits) | _stream_settings() | _refused_fields(payload)
    tools = payload.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise BadRequest("tools must be a list of tool objects")
    if tools:
        if "tools" not in traits.capabilities:
            raise BadRequest(f'"{requested}" does not support tools')
        body["tools"] = [tool if "type" in tool else {"type": "function", **tool} for tool in tools]
    body |= _think(payload.get("think"), traits, requested) | _logprobs(payload, chat=True)
    return UpstreamCall(CHAT_PATH, body)


def _message(message: object, index: int) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise BadRequest(f"messages[{index}] must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise BadRequest(f"messages[{index}].role must be one of {', '.join(_ROLES)}")
    content = message.get("content", "")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise BadRequest(f"messages[{index}].content must be a string")
    out: dict[str, Any] = {"role": role, "content": _content(content, message.get("images"))}
    calls = message.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list):
            raise BadRequest(f"messages[{index}].tool_calls belong to assistant messages")
        out["tool_calls"] = [_tool_call_out(call, index, i) for i, call in enumerate(calls)]
    if role == "tool":
        for key in ("tool_call_id", "tool_name"):
            if isinstance(message.get(key), str):
                out[key] = message[key]
    return out


def _tool_call_out(call: object, message_index: int, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"messages[{message_index}].tool_calls[{index}] needs function.name")
    arguments = function.get("arguments", {})
    call_id = call.get("id") if isinstance(call, dict) else None
    return {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{message_index}_{index}",
        "type": "function",
        "function": {
            "name": function["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _link_tool_results(messages: list[dict[str, Any]]) -> None:
    """OpenAI needs each tool result's `tool_call_id`; Ollama clients often send only a name."""
    pending: list[dict[str, Any]] = []
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
