"""vLLM's chat and completion chunks as Ollama's response objects: pure, no I/O."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from vllama.api.ollama.request import Endpoint


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

    def __init__(self, endpoint: Endpoint, model: str, timing: Timing) -> None:
        self.endpoint = endpoint
        self.model = model
        self.timing = timing
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.logprobs: list[dict[str, Any]] = []  # every token's, for `stream: false`
        self._unsent_logprobs: list[dict[str, Any]] = []  # of tokens with no text (yet)

    def _base(self, done: bool, created: str | None = None) -> dict[str, Any]:
        return {"model": self.model, "created_at": created or created_at(), "done": done}

    def on_chunks(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The objects of chunks that arrived together, stamped with one `created_at` (a date
        formatted per read of the stream, not per token)."""
        created = created_at()
        return [obj for chunk in chunks for obj in self.on_chunk(chunk, created)]

    def on_chunk(self, chunk: dict[str, Any], created: str | None = None) -> list[dict[str, Any]]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
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
        created: str | None = None,
    ) -> dict[str, Any]:
        """One Ollama object: `response` for generate, `message` for chat."""
        obj = self._base(done, created)
        if self.endpoint == "generate":
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

    def pending_tool_calls(self) -> list[dict[str, Any]]:
        """Ollama sends tool calls as one chunk once they are complete (end of stream)."""
        if self.endpoint != "chat" or not self._tool_calls:
            return []
        return [self._object(False, "", tool_calls=self.tool_calls())]

    def final(self, end: int | None = None) -> dict[str, Any]:
        """The last streamed object: done, with counts and measured durations (ns)."""
        last = self._object(True, "") | self._metrics(end)
        if self._unsent_logprobs:
            last["logprobs"], self._unsent_logprobs = self._unsent_logprobs, []
        return last

    def whole(self, end: int | None = None) -> dict[str, Any]:
        """Everything as one object, for `stream: false`."""
        calls = self.tool_calls() if self._tool_calls else None
        text, thinking = "".join(self.text), "".join(self.thinking)
        whole = self._object(True, text, thinking, calls) | self._metrics(end)
        if self.logprobs:
            whole["logprobs"] = self.logprobs
        return whole

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


def ollama_logprobs(logprobs: object) -> list[dict[str, Any]]:
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


def _entry(item: dict[str, Any]) -> dict[str, Any]:
    entry = _token(str(item.get("token", "")), item.get("logprob"), item.get("bytes"))
    tops = item.get("top_logprobs") or []
    entry["top_logprobs"] = [
        _token(str(t.get("token", "")), t.get("logprob"), t.get("bytes"))
        for t in tops
        if isinstance(t, dict)
    ]
    return entry


def _token(token: str, logprob: object, raw: object = None) -> dict[str, Any]:
    value = float(logprob) if isinstance(logprob, int | float) else None
    if value is not None and value != value:  # NaN: not JSON
        value = None
    data = raw if isinstance(raw, list) else list(token.encode())
    return {"token": token, "logprob": value if value is not None else -9999.0, "bytes": data}


def load_response(
    model: str, endpoint: Endpoint, reason: Literal["load", "unload"]
) -> dict[str, Any]:
    """The answer to an empty prompt / empty messages: the model was (un)loaded."""
    obj: dict[str, Any] = {"model": model, "created_at": created_at()}
    if endpoint == "generate":
        obj["response"] = ""
    else:
        obj["message"] = {"role": "assistant", "content": ""}
    obj |= {"done": True, "done_reason": reason}
    return obj
