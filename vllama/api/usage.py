"""The token counts a relayed answer reports, in whichever API's shape it comes.

OpenAI's chat and completions name them `prompt_tokens`/`completion_tokens`; Anthropic's Messages
and OpenAI's Responses API `input_tokens`/`output_tokens` (Anthropic leaves its cache reads and
writes out of `input_tokens`: they count as prompt here too). A whole answer carries its `usage`
at the top level. A stream carries it in events: OpenAI's last chunk (with `include_usage`),
Anthropic's `message_start` (inside `message`) and `message_delta`, the Responses API's
`response.completed` (inside `response`; the earlier events have a null one). A stream's usage is
every one it carried, merged, later fields over earlier ones: Anthropic's `message_delta` may name
only `output_tokens` (vLLM's names both). Merging, never adding, makes a usage seen twice harmless.

Only lines that name `"usage"` are parsed: the relay passes every chunk of every stream here.
"""

from __future__ import annotations

import json

Usage = dict[str, object]

# A stream's line split across reads is kept until its end arrives, up to this many bytes (a
# Responses API `response.completed` line holds the whole answer); past it, its usage is lost.
_MAX_PENDING = 8 * 1024 * 1024


def usage_of(payload: bytes) -> Usage | None:
    """The usage of one JSON answer or event: at its top level, or in the `message` (Anthropic's
    `message_start`) or `response` (the Responses API's events) it carries."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if usage is None:
        for key in ("message", "response"):
            inner = data.get(key)
            if isinstance(inner, dict):
                usage = inner.get("usage")
                break
    return usage if isinstance(usage, dict) else None


def usage_of_events(chunk: bytes, at: int = 0) -> Usage | None:
    """Every usage in a piece of SSE stream, merged in order, from `at` (where `"usage"` first
    is). Only the `data: {` lines that name it are looked at: the piece may hold a whole stream's
    events (a worker ahead of its client)."""
    merged: Usage | None = None
    at = chunk.find(b'"usage"', at)
    while at >= 0:
        start = chunk.rfind(b"\n", 0, at) + 1
        end = chunk.find(b"\n", at)
        end = len(chunk) if end < 0 else end
        line = chunk[start:end]
        # vLLM may send a null usage on every chunk (the Responses API until its last event):
        # not worth parsing
        if line.startswith(b"data: {") and not (
            b'"usage":null' in line or b'"usage": null' in line
        ):
            usage = usage_of(line[6:])
            if usage is not None:
                merged = usage if merged is None else {**merged, **usage}
        at = chunk.find(b'"usage"', end)
    return merged


class StreamUsage:
    """The usage of one stream, fed its pieces as they pass (a line split across two pieces is
    read once whole)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._pending: list[bytes] = []  # the start of a line whose end has not come yet
        self._pending_size = 0

    def feed(self, chunk: bytes) -> None:
        end = chunk.rfind(b"\n") + 1
        if self._pending:
            if end == 0:  # the pending line goes on
                self._keep(chunk)
                return
            self._scan(b"".join(self._pending) + chunk[:end])
            self._pending, self._pending_size = [], 0
        else:
            self._scan(chunk)  # a last line cut short fails to parse, or is whole: merged twice
        if end < len(chunk):
            self._keep(chunk[end:])

    def _keep(self, piece: bytes) -> None:
        self._pending_size += len(piece)
        if self._pending_size > _MAX_PENDING:
            self._pending, self._pending_size = [], 0
            return
        self._pending.append(piece)

    def _scan(self, data: bytes) -> None:
        at = data.find(b'"usage"')
        if at < 0:
            return
        found = usage_of_events(data, at)
        if found is not None:
            self.usage = found if self.usage is None else {**self.usage, **found}


def token_counts(usage: Usage) -> tuple[int, int | None]:
    """(prompt tokens, generated tokens) of a usage in any of the shapes; generated is None when
    it names none."""
    prompt = _count(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = sum(
            _count(usage.get(name)) or 0
            for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
    generated = _count(usage.get("completion_tokens"))
    if generated is None:
        generated = _count(usage.get("output_tokens"))
    return prompt, generated


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
