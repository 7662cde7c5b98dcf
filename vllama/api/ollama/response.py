"""vLLM's chat and completion chunks as Ollama's response objects: pure, no I/O."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Required, TypedDict

from vllama.api.ollama.request import Endpoint
from vllama.api.ollama.wire import Chunk, ToolCallDelta
from vllama.api.protocol import Json, JsonObject


class TokenLogprob(TypedDict, total=False):
    """One token's log probability, with its alternatives (none on the alternatives)."""

    token: Required[str]
    logprob: Required[float]
    bytes: Required[list[int]]
    top_logprobs: list[TokenLogprob]


class OllamaFunction(TypedDict):
    index: int
    name: str
    arguments: JsonObject


class OllamaToolCall(TypedDict, total=False):
    id: str
    function: Required[OllamaFunction]


class OllamaMessage(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    content: Required[str]
    thinking: str
    tool_calls: list[OllamaToolCall]


class OllamaObject(TypedDict, total=False):
    """One answer of `/api/generate` (`response`) or `/api/chat` (`message`): a streamed line,
    the last one (`done`, with counts and durations in nanoseconds), or the whole answer."""

    model: Required[str]
    created_at: Required[str]
    response: str
    thinking: str
    message: OllamaMessage
    done: Required[bool]
    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    logprobs: list[TokenLogprob]


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    args: str = ""


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


def _reject_constant(name: str) -> Json:
    raise ValueError(f"{name} is not valid JSON")


def _arguments_object(raw: str) -> JsonObject:
    """Ollama's tool arguments are an object; a model may emit anything, so never crash."""
    try:
        parsed = json.loads(raw, parse_constant=_reject_constant) if raw.strip() else {}
    except (ValueError, RecursionError):  # invalid, NaN/Infinity, or nested past the limit
        return {"value": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


class OllamaStream:
    """Turns one vLLM chunk stream into Ollama objects (`done: false` chunks, then a final one)."""

    def __init__(self, endpoint: Endpoint, model: str, timing: Timing) -> None:
        self.endpoint = endpoint
        self.model = model
        self.timing = timing
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.logprobs: list[TokenLogprob] = []  # every token's, for `stream: false`
        self._unsent_logprobs: list[TokenLogprob] = []  # of tokens with no text (yet)

    def on_chunks(self, chunks: list[Chunk]) -> list[OllamaObject]:
        """The objects of chunks that arrived together, stamped with one `created_at` (a date
        formatted per read of the stream, not per token)."""
        created = created_at()
        return [obj for chunk in chunks for obj in self.on_chunk(chunk, created)]

    def on_chunk(self, chunk: Chunk, created: str | None = None) -> list[OllamaObject]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        out: list[OllamaObject] = []
        for choice in chunk.get("choices") or []:
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self.finish_reason = finish_reason
            logprobs = ollama_logprobs(choice.get("logprobs"))
            self.logprobs += logprobs
            self._unsent_logprobs += logprobs
            if self.endpoint == "generate" and "text" in choice:
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
                piece = self._object(False, text, thinking, created=created)
                if self._unsent_logprobs:
                    piece["logprobs"], self._unsent_logprobs = self._unsent_logprobs, []
                out.append(piece)
        return out

    def _stamp_token(self) -> None:
        now = Timing.now()
        if self.timing.first_token is None:
            self.timing.first_token = now
        self.timing.last_token = now

    def _collect_tool_calls(self, deltas: list[ToolCallDelta]) -> None:
        for delta in deltas:
            index = int(delta.get("index", len(self._tool_calls)))
            slot = self._tool_calls.setdefault(index, _ToolCallParts())
            slot.id = delta.get("id") or slot.id
            function = delta.get("function") or {}
            slot.name += function.get("name") or ""
            slot.args += function.get("arguments") or ""

    def tool_calls(self) -> list[OllamaToolCall]:
        calls: list[OllamaToolCall] = []
        for index, parts in sorted(self._tool_calls.items()):
            function: OllamaFunction = {
                "index": index,
                "name": parts.name,
                "arguments": _arguments_object(parts.args),
            }
            calls.append(
                {"id": parts.id, "function": function} if parts.id else {"function": function}
            )
        return calls

    def _object(
        self,
        done: bool,
        text: str,
        thinking: str = "",
        tool_calls: list[OllamaToolCall] | None = None,
        created: str | None = None,
    ) -> OllamaObject:
        """One Ollama object: `response` for generate, `message` for chat."""
        obj: OllamaObject = {
            "model": self.model,
            "created_at": created or created_at(),
            "done": done,
        }
        if self.endpoint == "generate":
            obj["response"] = text
            if thinking:
                obj["thinking"] = thinking
            return obj
        message: OllamaMessage = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        obj["message"] = message
        return obj

    def pending_tool_calls(self) -> list[OllamaObject]:
        """Ollama sends tool calls as one chunk once they are complete (end of stream)."""
        if self.endpoint != "chat" or not self._tool_calls:
            return []
        return [self._object(False, "", tool_calls=self.tool_calls())]

    def final(self, end: int | None = None) -> OllamaObject:
        """The last streamed object: done, with counts and measured durations (ns)."""
        last = self._measured(self._object(True, ""), end)
        if self._unsent_logprobs:
            last["logprobs"], self._unsent_logprobs = self._unsent_logprobs, []
        return last

    def whole(self, end: int | None = None) -> OllamaObject:
        """Everything as one object, for `stream: false`."""
        calls = self.tool_calls() if self._tool_calls else None
        text, thinking = "".join(self.text), "".join(self.thinking)
        whole = self._measured(self._object(True, text, thinking, calls), end)
        if self.logprobs:
            whole["logprobs"] = self.logprobs
        return whole

    def _measured(self, obj: OllamaObject, end: int | None) -> OllamaObject:
        """`obj` with the counts and measured durations (ns)."""
        t = self.timing
        end = end if end is not None else Timing.now()
        loaded = t.loaded if t.loaded is not None else t.start
        sent = t.sent if t.sent is not None else loaded
        first = t.first_token if t.first_token is not None else end
        last = t.last_token if t.last_token is not None else first
        reason = self.finish_reason or "stop"
        obj["done_reason"] = "length" if reason == "length" else "stop"
        obj["total_duration"] = end - t.start
        obj["load_duration"] = loaded - t.start
        obj["prompt_eval_count"] = self.prompt_tokens
        obj["prompt_eval_duration"] = max(first - sent, 0)
        obj["eval_count"] = self.completion_tokens
        obj["eval_duration"] = max(last - first, 0)
        return obj


def ollama_logprobs(logprobs: object) -> list[TokenLogprob]:
    """vLLM's logprobs of one chunk as Ollama's `[{token, logprob, bytes, top_logprobs}]`.

    Chat chunks carry OpenAI's `{"content": [{token, logprob, bytes, top_logprobs}]}` (Ollama's
    shape already); completion chunks carry `{"tokens", "token_logprobs", "top_logprobs"}`.
    """
    if not isinstance(logprobs, dict):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):
        return [_entry(item) for item in content if isinstance(item, dict)]
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    entries = []
    for i, token in enumerate(tokens):
        entry = _token(str(token), values[i] if i < len(values) else None)
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        entry["top_logprobs"] = [_token(str(k), v) for k, v in top.items()]
        entries.append(entry)
    return entries


def _entry(item: JsonObject) -> TokenLogprob:
    entry = _token(str(item.get("token", "")), item.get("logprob"), item.get("bytes"))
    tops = item.get("top_logprobs") or []
    if not isinstance(tops, list):
        tops = []
    entry["top_logprobs"] = [
        _token(str(t.get("token", "")), t.get("logprob"), t.get("bytes"))
        for t in tops
        if isinstance(t, dict)
    ]
    return entry


def _token(token: str, logprob: object, raw: object = None) -> TokenLogprob:
    value = float(logprob) if isinstance(logprob, int | float) else None
    if value is not None and value != value:  # NaN: not JSON
        value = None
    data = raw if isinstance(raw, list) else list(token.encode())  # vLLM's: the token's bytes
    return {"token": token, "logprob": value if value is not None else -9999.0, "bytes": data}


def load_response(
    model: str, endpoint: Endpoint, reason: Literal["load", "unload"]
) -> OllamaObject:
    """The answer to an empty prompt / empty messages: the model was (un)loaded."""
    if endpoint == "generate":
        return {
            "model": model,
            "created_at": created_at(),
            "response": "",
            "done": True,
            "done_reason": reason,
        }
    return {
        "model": model,
        "created_at": created_at(),
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
    }


# -- model management ---------------------------------------------------------------------------


class Details(TypedDict):
    parent_model: str  # the model it was created from, as the client named it
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ModelEntry(TypedDict, total=False):
    """A model in `/api/tags` (when modified) or `/api/ps` (when it expires, its sizes now)."""

    name: Required[str]
    model: Required[str]
    remote_model: str  # a peer's model: its name there, and the peer
    remote_host: str
    modified_at: str
    size: int
    digest: str
    details: Details
    size_vram: int
    expires_at: str
    context_length: int | None
    replica: int
    ray_nodes: list[str]


class ShowAnswer(TypedDict, total=False):
    license: Required[str]
    modelfile: Required[str]
    parameters: Required[str]
    template: Required[str]
    details: Required[Details]
    model_info: Required[dict[str, object]]
    capabilities: Required[list[str]]
    modified_at: str
    system: str
    remote_model: str
    remote_host: str


class Progress(TypedDict):
    """One update of `/api/create` (and the status line of a pull's)."""

    status: str
