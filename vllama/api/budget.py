"""Output budgets that fit the model's context, on every generating API.

vLLM 0.32 refuses a request whose output budget alone is larger than the context
(`max_completion_tokens=32000 cannot be greater than max_model_len=2048. Please request fewer
output tokens.`: `TokenizeParams` in `vllm/renderers/params.py`, checked before the prompt is even
rendered), but clamps one that is merely too large beside its prompt to what is left
(`get_max_tokens` in `vllm/entrypoints/serve/utils/api_utils.py`: `min(max_model_len - prompt,
max_tokens)`). So a budget capped at the context always fits as far as vLLM is concerned, and
vllama never has to count a prompt: a budget over the context is lowered to it here, where the
context is known (the worker's served `max_model_len`), or, where it is not (the model not loaded
yet, a peer's), the request goes as it is and vLLM's refusal, which names the context, is answered
by sending it again once with the budget at that context (`send_fitted`). A request that fits
costs nothing more than a look at one field of the body vllama has parsed anyway.

A request with no budget gets the configured default (`[models.x]`, else `[server]`
`max_output_tokens`), if any; vLLM stops it at the context in any case. A prompt that alone does
not fit stays vLLM's 400 ("This model's maximum context length is N tokens. However, your prompt
contains at least M input tokens ..."), in the API's own envelope.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from vllama.api.backends import Answer, Backend
from vllama.api.protocol import JsonObject
from vllama.api.relay import read_answer, worker_error

# The body fields that hold the output budget, per path: the first is the one a default sets.
# Chat completions reads max_completion_tokens first, then max_tokens (as vLLM does).
BUDGET_FIELDS: Mapping[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/messages": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
}

# vLLM 0.32's refusal of a budget larger than the context (`TokenizeParams.__post_init__`), as
# each endpoint names its field: chat `max_completion_tokens` or `max_tokens` (Anthropic's
# Messages become a chat request with both set), completions `max_tokens`, Responses
# `max_output_tokens`.
_REFUSAL = re.compile(
    rb"(?:max_completion_tokens|max_tokens|max_output_tokens)=\d+ cannot be greater than "
    rb"max_model_len=(\d+)"
)


def refused_context(status: int, body: bytes) -> int | None:
    """The context a worker named when it refused an output budget as larger than it; None for
    any other answer."""
    if status != 400:
        return None
    match = _REFUSAL.search(body)
    return int(match.group(1)) if match else None


def _budget(value: object) -> int | None:
    """An integer budget (what vLLM would read as one); anything else is left for vLLM to
    judge."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def clamp(payload: JsonObject, fields: tuple[str, ...], limit: int) -> bool:
    """Lower every budget over `limit` to it (and an Anthropic thinking budget under the new
    `max_tokens`, as vLLM requires); True when something changed."""
    changed = False
    for name in fields:
        value = _budget(payload.get(name))
        if value is not None and value > limit:
            payload[name] = limit
            changed = True
    thinking = payload.get("thinking")
    max_tokens = _budget(payload.get("max_tokens"))
    if changed and isinstance(thinking, dict) and max_tokens is not None:
        spent = _budget(thinking.get("budget_tokens"))
        if spent is not None and spent >= max_tokens:
            thinking["budget_tokens"] = max(max_tokens - 1, 1)
    return changed


def fit(
    payload: JsonObject, fields: tuple[str, ...], default: int | None, context: int | None
) -> bool:
    """The request's budget as it goes upstream: `default` where it sets none (a JSON null is
    none), capped at `context` where that is known. True when the body changed."""
    changed = False
    if default is not None and all(payload.get(name) is None for name in fields):
        payload[fields[0]] = default
        changed = True
    if context is not None:
        changed = clamp(payload, fields, context) or changed
    return changed


@contextlib.asynccontextmanager
async def send_fitted(
    request: web.Request,
    backend: Backend,
    path: str,
    payload: JsonObject,
    body: bytes,
    keep_alive: float | None = None,
    stream: bool = False,
) -> AsyncIterator[Answer]:
    """`backend.send`, and when the worker refuses the budget as larger than its context, the
    same request once more with the budget at that context. Any other answer is yielded as it
    came (a refusal's body already read: `read_answer` gives it again)."""
    fields = BUDGET_FIELDS.get(path)
    async with backend.send(request, path, body, keep_alive, stream) as answer:
        context = None
        if fields is not None and answer.response.status == 400:
            try:
                refusal = await read_answer(request, answer.response)
            except aiohttp.ClientError as exc:
                raise worker_error(request, exc, "mid-response") from None
            context = refused_context(400, refusal)
        if context is None or not clamp(payload, fields or (), context):
            yield answer
            return
    body = json.dumps(payload).encode()
    async with backend.send(request, path, body, keep_alive, stream) as answer:
        yield answer
