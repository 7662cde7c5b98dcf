"""Ollama <-> OpenAI translation: pure functions, no I/O.

Requests: Ollama's `/api/generate` and `/api/chat` bodies become vLLM OpenAI requests (always
streamed upstream with usage, so durations are measured even when the client asked for one JSON
object). Responses: `OllamaStream` turns vLLM's chat/completion chunks into Ollama's objects.
Anything malformed raises `BadRequest` (HTTP 400) before a worker is touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal["generate", "chat"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class BadRequest(ValueError):
    """The request is malformed or asks for something vLLM cannot do (HTTP 400)."""


# -- options ----------------------------------------------------------------------------------

_FLOAT_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
_INT_OPTIONS = {"top_k": "top_k", "seed": "seed"}
# Ollama runner settings with no vLLM per-request equivalent: accepted and ignored, as Ollama
# ignores options a runner doesn't use (documented in docs/API.md).
IGNORED_OPTIONS = frozenset(
    {
        "num_keep", "typical_p", "repeat_last_n", "num_batch", "num_gpu", "main_gpu",
        "use_mmap", "use_mlock", "num_thread", "low_vram", "numa", "penalize_newline",
        "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "draft_num_predict", "vocab_only",
        "f16_kv", "logits_all", "embedding_only",
    }
)  # fmt: skip


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def map_options(options: object, context_length: int | None) -> dict[str, Any]:
    """Ollama `options` -> vLLM sampling parameters. Unknown keys are ignored, as Ollama does."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("options must be a JSON object")
    sampling: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _FLOAT_OPTIONS:
            if not _is_number(value):
                raise BadRequest(f"option {key!r} must be a number, got {json.dumps(value)}")
            sampling[_FLOAT_OPTIONS[key]] = float(value)
        elif key in _INT_OPTIONS:
            if not _is_int(value):
                raise BadRequest(f"option {key!r} must be an integer, got {json.dumps(value)}")
            sampling[_INT_OPTIONS[key]] = int(value)
        elif key == "num_predict":
            if not _is_int(value):
                raise BadRequest(f"option 'num_predict' must be an integer, got {value!r}")
            if int(value) > 0:  # -1 (infinite) and -2 (fill the context) mean "no limit" here
                sampling["max_tokens"] = int(value)
        elif key == "stop":
            sampling["stop"] = _stop_list(value)
        elif key == "num_ctx":
            if not _is_int(value):
                raise BadRequest(f"option 'num_ctx' must be an integer, got {value!r}")
            if context_length is not None and int(value) > context_length:
                raise BadRequest(
                    f"num_ctx {int(value)} exceeds the model's context length {context_length} "
                    "(set by vLLM's --max-model-len at load)"
                )
    return sampling


def _stop_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest("option 'stop' must be a string or a list of strings")


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelTraits:
    """What the translation needs to know about the model (from its files and its worker)."""

    served_name: str
    context_length: int | None = None
    capabilities: frozenset[str] = frozenset({"completion"})
    system: str | None = None  # a derived model's default system prompt
    template: str | None = None  # a derived model's chat template
    parameters: dict[str, Any] = field(default_factory=dict)  # a derived model's options


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
    if value is None:
        return {}
    if not isinstance(value, bool) and value not in ("low", "medium", "high", "max"):
        raise BadRequest('think must be true, false, "low", "medium", "high" or "max"')
    if "thinking" not in traits.capabilities:
        if value is False:
            return {}
        raise BadRequest(f'"{requested}" does not support thinking')
    extra: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": value is not False}}
    if isinstance(value, str):
        extra["reasoning_effort"] = "high" if value == "max" else value
    return extra


def _image_part(image: object) -> dict[str, Any]:
    if not isinstance(image, str):
        raise BadRequest("images must be base64 strings")
    mime = "image/png"
    for prefix, kind in (("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklG", "image/webp")):
        if image.startswith(prefix):
            mime = kind
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _content(text: str, images: object) -> str | list[dict[str, Any]]:
    if not images:
        return text
    if not isinstance(images, list):
        raise BadRequest("images must be a list of base64 strings")
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
    template = _optional_str(payload, "template")
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
    body: dict[str, Any] = {"model": traits.served_name, **_sampling(payload, traits)}
    body |= _stream_settings()
    if raw:
        if template or system:
            raise BadRequest("raw mode does not support template, system, or context")
        if payload.get("images"):
            raise BadRequest("raw mode does not support images")
        body["prompt"] = prompt
        return UpstreamCall(COMPLETIONS_PATH, body)
    messages: list[dict[str, Any]] = []
    system = system if system is not None else traits.system
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, payload.get("images"))})
    body["messages"] = messages
    body |= _think(payload.get("think"), traits, requested)
    template = template or traits.template
    if template:
        body["chat_template"] = template
    return UpstreamCall(CHAT_PATH, body)


_ROLES = ("system", "user", "assistant", "tool")


def chat_call(payload: dict[str, Any], traits: ModelTraits, requested: str) -> UpstreamCall:
    """`/api/chat` -> a vLLM chat completion request."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    converted = [_message(m, i) for i, m in enumerate(messages)]
    if traits.system and not any(m["role"] == "system" for m in converted):
        converted.insert(0, {"role": "system", "content": traits.system})
    _link_tool_results(converted)
    body: dict[str, Any] = {"model": traits.served_name, "messages": converted}
    body |= _sampling(payload, traits) | _stream_settings()
    tools = payload.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise BadRequest("tools must be a list of tool objects")
        if "tools" not in traits.capabilities:
            raise BadRequest(f'"{requested}" does not support tools')
        body["tools"] = [tool if "type" in tool else {"type": "function", **tool} for tool in tools]
    body |= _think(payload.get("think"), traits, requested)
    if traits.template:
        body["chat_template"] = traits.template
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


# -- responses --------------------------------------------------------------------------------


def created_at() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Timing:
    """Monotonic nanosecond stamps of one request, for Ollama's measured durations."""

    start: int = field(default_factory=time.perf_counter_ns)
    loaded: int | None = None  # the worker was ready (after any load)
    sent: int | None = None  # the request went upstream
    first_token: int | None = None
    last_token: int | None = None

    @staticmethod
    def now() -> int:
        return time.perf_counter_ns()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _arguments_object(raw: str) -> dict[str, Any]:
    """Ollama's tool arguments are an object; a model may emit anything, so never crash."""
    try:
        parsed = json.loads(raw, parse_constant=_reject_constant) if raw.strip() else {}
    except (ValueError, RecursionError):  # invalid, NaN/Infinity, or nested past the limit
        return {"value": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


class OllamaStream:
    """Turns one vLLM chunk stream into Ollama objects (`done: false` chunks, then a final one)."""

    def __init__(self, kind: Kind, model: str, timing: Timing) -> None:
        self.kind = kind
        self.model = model
        self.timing = timing
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self.text: list[str] = []
        self.thinking: list[str] = []

    def _base(self, done: bool) -> dict[str, Any]:
        return {"model": self.model, "created_at": created_at(), "done": done}

    def on_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if self.kind == "generate" and "text" in choice:
                text, thinking = choice.get("text") or "", ""
            else:
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
                calls = delta.get("tool_calls") or []
                self._collect_tool_calls(calls)
                if calls:
                    self._stamp_token()
            if text or thinking:
                self._stamp_token()
                self.text.append(text)
                self.thinking.append(thinking)
                out.append(self._piece(text, thinking))
        return out

    def _stamp_token(self) -> None:
        now = Timing.now()
        if self.timing.first_token is None:
            self.timing.first_token = now
        self.timing.last_token = now

    def _collect_tool_calls(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            slot = self._tool_calls.setdefault(
                int(delta.get("index", len(self._tool_calls))), {"id": "", "name": "", "args": ""}
            )
            slot["id"] = delta.get("id") or slot["id"]
            function = delta.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["args"] += function.get("arguments") or ""

    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {
                **({"id": call["id"]} if call["id"] else {}),
                "function": {
                    "index": index,
                    "name": call["name"],
                    "arguments": _arguments_object(call["args"]),
                },
            }
            for index, call in sorted(self._tool_calls.items())
        ]

    def _object(
        self,
        done: bool,
        text: str,
        thinking: str = "",
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One Ollama object: `response` for generate, `message` for chat."""
        obj = self._base(done)
        if self.kind == "generate":
            obj["response"] = text
            if thinking:
                obj["thinking"] = thinking
            return obj
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        obj["message"] = message
        return obj

    def _piece(self, text: str, thinking: str) -> dict[str, Any]:
        return self._object(False, text, thinking)

    def pending_tool_calls(self) -> list[dict[str, Any]]:
        """Ollama sends tool calls as one chunk once they are complete (end of stream)."""
        if self.kind != "chat" or not self._tool_calls:
            return []
        return [self._object(False, "", tool_calls=self.tool_calls())]

    def final(self, end: int | None = None) -> dict[str, Any]:
        """The last streamed object: done, with counts and measured durations (ns)."""
        return self._object(True, "") | self._metrics(end)

    def whole(self, end: int | None = None) -> dict[str, Any]:
        """Everything as one object, for `stream: false`."""
        calls = self.tool_calls() if self._tool_calls else None
        text, thinking = "".join(self.text), "".join(self.thinking)
        return self._object(True, text, thinking, calls) | self._metrics(end)

    def _metrics(self, end: int | None) -> dict[str, Any]:
        t = self.timing
        end = end if end is not None else Timing.now()
        loaded = t.loaded if t.loaded is not None else t.start
        sent = t.sent if t.sent is not None else loaded
        first = t.first_token if t.first_token is not None else end
        last = t.last_token if t.last_token is not None else first
        reason = self.finish_reason or "stop"
        return {
            "done_reason": "length" if reason == "length" else "stop",
            "total_duration": end - t.start,
            "load_duration": loaded - t.start,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": max(first - sent, 0),
            "eval_count": self.completion_tokens,
            "eval_duration": max(last - first, 0),
        }


def load_response(model: str, kind: Kind, reason: Literal["load", "unload"]) -> dict[str, Any]:
    """The answer to an empty prompt / empty messages: the model was (un)loaded."""
    obj: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind == "generate":
        obj["response"] = ""
    else:
        obj["message"] = {"role": "assistant", "content": ""}
    obj |= {"done": True, "done_reason": reason}
    return obj


def upstream_error_message(status: int, body: bytes) -> str:
    """vLLM's error text from its JSON error body (either envelope), or the raw body."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body.decode("utf-8", "replace").strip() or f"worker answered HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return json.dumps(data)
