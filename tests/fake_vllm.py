"""Fake vLLM OpenAI-compatible API server, for testing the vllama supervisor.

Run as ``python tests/fake_vllm.py --model M --served-model-name NAME --host H --port P
[--max-model-len N]``; unknown extra arguments (``--enforce-eager`` ...) are ignored, as vLLM
would accept them. Depends on the standard library and aiohttp only.

Knobs (environment variables, all optional):

- FAKE_VLLM_START_DELAY (float s, default 0): "load" this long before binding the port,
  printing a progress line every 0.2 s.
- FAKE_VLLM_SILENT_START (float s, default 0): wait this long before binding, printing nothing.
- FAKE_VLLM_CRASH_AT_START ("1"): print a few log lines ending in
  ``RuntimeError: fake crash at start`` and exit with code 3 before binding; ("memory"): end
  them with vLLM's refusal for memory (``ValueError: No available memory for the cache blocks``).
- FAKE_VLLM_CRASH_AFTER_CHUNKS (int N): in a streaming completion, once N content chunks have
  been sent, the whole process SIGKILLs itself (the client sees the stream cut).
- FAKE_VLLM_IGNORE_SIGTERM ("1"): ignore SIGTERM; only SIGKILL (or SIGINT) stops the process.
- FAKE_VLLM_GRANDCHILD ("1"): spawn a sleeping grandchild (like vLLM's EngineCore) in the same
  process group, sharing stdout/stderr (argv contains ``fake_vllm_enginecore``); it outlives
  a SIGKILL of this process.
  FAKE_VLLM_GRANDCHILD_PIDFILE: file to write the grandchild's pid to;
  FAKE_VLLM_GRANDCHILD_IGNORE_TERM ("1"): the grandchild ignores SIGTERM (only SIGKILL ends it).
- FAKE_VLLM_TOKEN_DELAY (float s, default 0): delay before each generated token (streaming and
  non-streaming alike).
- FAKE_VLLM_TOKENS (int, default 8): tokens generated when a request sets no max_tokens.
- FAKE_VLLM_MAX_MODEL_LEN (int, default 2048): the context served without --max-model-len (or
  with -1): what vLLM fits to memory, which the model's files do not say.
- FAKE_VLLM_EOS ("1"): the model ends every answer after FAKE_VLLM_TOKENS tokens, as a real one
  emits its end of sequence, whatever larger max_tokens a request sets (finish_reason "stop"); a
  smaller one still cuts it ("length"). Without it, max_tokens N generates exactly N tokens.
- FAKE_VLLM_UNHEALTHY_AFTER (float s): this long after becoming ready, /health answers 503 and
  inference requests 500 (engine dead), but the process keeps running.
- FAKE_VLLM_TOOL_ARGS_RAW (string): the exact arguments text of the fake tool call (e.g. ``true``)
  instead of ``{"city": "Paris"}``.
- FAKE_VLLM_HEALTH_HANG_AFTER (float s): this long after becoming ready, /health never answers
  (no status, no bytes: an engine hung with its API server up); everything else still works.
- FAKE_VLLM_HANG_AFTER_CHUNKS (int N): a streamed completion sends N content chunks (after the
  chat role chunk), then nothing more, until the client goes away; that counts as aborted.
  N = -1: it hangs before sending even the response headers.
- FAKE_VLLM_ERROR_AFTER_CHUNKS (int N): a streamed completion sends N content chunks, then vLLM's
  in-band error event and the end of the stream, exactly as vLLM 0.32 does on a failure during
  generation: ``data: {"error": {"message": "Internal server error", "type":
  "InternalServerError", "param": null, "code": 500}}`` then ``data: [DONE]``.
- FAKE_VLLM_FAIL_STATUS (int, e.g. 500 or 503): every inference request (chat, completions,
  embeddings) is answered with this status and vLLM's JSON error body before any byte of a
  stream (500: ``InternalServerError``; 503: ``ServiceUnavailableError``, vLLM's retryable error).
- FAKE_VLLM_NANOBIND_AT_EXIT (int N): at exit, write nanobind's leak report to stderr as vLLM's
  engine does at interpreter exit (xgrammar's bindings): N lines in all, its headers ("nanobind:
  leaked 3 instances!"), one " - leaked ..." line per object and the closing hint, C-level
  writes (no Python buffering, no vLLM prefix).
- FAKE_VLLM_DROP_CONNECTIONS ("1"): every inference request's connection is closed with no
  answer at all (counted first), while /health keeps answering: a server that accepts and drops.
- FAKE_VLLM_END_DELAY (float seconds): a /v1/messages or /v1/responses stream ends this long
  after its last event (its terminal event already sent).
- FAKE_VLLM_PORT_TAKEN_ONCE (a file path): the first start (the file absent) says its port is
  taken and exits 1; FAKE_VLLM_PORT_TAKEN_WORDING "vllm" says it as vLLM's own bind does
  (``OSError: [Errno 98] Address already in use``), else as uvicorn does.

Sleep mode (as vLLM's with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1): POST /sleep?level=1,
POST /wake_up, GET /is_sleeping. An inference request that reaches a sleeping engine fails with
500 (in real vLLM it has crashed or hung the engine: the supervisor must hold traffic itself);
/fake/stats counts sleeps, wakes and such requests.

POST /v1/messages (Anthropic's Messages API) and POST /v1/responses (OpenAI's Responses API)
answer as vLLM 0.32 translates a chat into them, streamed or not, with their usage (Anthropic's
`input_tokens`/`output_tokens` in `message_start` and `message_delta`; the Responses API's in the
final `response.completed`); their errors are vLLM's: on /v1/messages, Anthropic's envelope with
vLLM's error type (e.g. ``{"type": "error", "error": {"type": "BadRequestError", ...}}``), except
what pydantic refuses, which comes in OpenAI's envelope as on every route.

Endpoints: GET /health, /version, /v1/models, /metrics, /fake/stats, /fake/last_request (the last
inference request's JSON body, null before any), /fake/env (the process's environment),
/fake/last_headers (the last inference request's headers, an object of lower-cased names, null
before any); POST /v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/messages (Anthropic; text only), /v1/responses (text only).
Generated token i is the text ``f"tok{i} "``; ``stop`` (a string or a list) cuts the text before
the first stop string it contains (finish_reason "stop"). Streamed, the last token's text arrives
in the chunk that carries finish_reason, as vLLM sends it. A chat request with a non-empty
``tools`` list is answered with one call of the first tool (id ``call_fake0``, finish_reason
"tool_calls"); streamed, its arguments arrive in two fragments after a chunk with the name and
empty arguments, and finish_reason in a chunk of its own.

Request fields are checked as vLLM 0.32 checks the ones vllama sends (its pydantic request models,
lax as pydantic is: numeric strings and bools pass as numbers, then SamplingParams' ranges):
temperature [0, 2], top_p (0, 1], top_k >= -1, min_p [0, 1], presence/frequency penalties
[-2, 2], repetition_penalty > 0, seed int64, n [1, 16384], max_tokens >= 1, logprobs/top_logprobs
(-1 or 0-20; top_logprobs needs logprobs), response_format type, stream_options only with stream,
chat_template_kwargs an object, truncate_prompt_tokens [-1, max_model_len]. Context, as vLLM 0.32
(`TokenizeParams`, `get_max_tokens`): an output budget over max_model_len alone is refused
("max_tokens=N cannot be greater than max_model_len=M. Please request fewer output tokens.",
naming max_completion_tokens, max_tokens or max_output_tokens as the endpoint reads it); a prompt
over it is refused ("This model's maximum context length is M tokens. However, your prompt
contains at least M+1 input tokens, ..."); otherwise the budget is clamped to what is left beside
the prompt (finish_reason "length"). A refusal is a 400 in
vLLM's format, ``{"error": {"message", "type", "param", "code": 400}}`` (type "Bad Request" for
what pydantic refuses, "BadRequestError" for SamplingParams' checks). Unknown fields are accepted
(vLLM ignores them with a warning).
On SIGTERM/SIGINT: stop the grandchild, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

JSON = dict[str, Any]


def log(line: str) -> None:
    print(line, flush=True)


def env_float(name: str, default: float | None = None) -> float | None:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() == "1"


def token(i: int) -> str:
    return f"tok{i} "


def count_words(value: Any) -> int:
    """Prompt 'tokens': whitespace-separated words of strings, or lengths of token-id lists."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):  # chat message or content part
        return count_words(value.get("content")) + count_words(value.get("text"))
    return 0


ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
FAIL_MESSAGES = {
    500: "EngineCore encountered an issue. See stack trace for the cause.",
    503: "Request failed; please retry",
}
ENGINE_ERROR = {  # vLLM's in-band error after a GenerationError mid-stream
    "error": {
        "message": "Internal server error",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ERROR_TYPES.get(self.status, "Error")

    def response(self) -> web.Response:
        error: dict[str, object] = {"message": self.message, "type": self.kind}
        error |= {"param": self.param, "code": self.status}
        return web.json_response({"error": error}, status=self.status)

    def anthropic_response(self) -> web.Response:
        """As vLLM's `/v1/messages` answers its handler's errors (`translate_error_response`):
        Anthropic's envelope with vLLM's own error type (`BadRequestError`, ...). What pydantic
        refuses ("Bad Request") still comes in OpenAI's envelope (FastAPI's global handler)."""
        if self.kind == "Bad Request":
            return self.response()
        error = {"type": self.kind, "message": self.message}
        return web.json_response({"type": "error", "error": error}, status=self.status)


# ---- request validation, as vLLM's ----------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LOGPROBS = 20  # vLLM's --max-logprobs default


def refused(name: str | None, message: str, value: object = None) -> ApiError:
    """What FastAPI's validation handler in vLLM answers for a field pydantic refused."""
    shown = f"<{type(value).__name__}>" if isinstance(value, list | dict) else repr(value)[:200]
    loc = ("body", name) if name else ("body",)
    text = f"1 validation error:\n  {{'loc': {loc!r}, 'msg': {message!r}, 'input': {shown}}}"
    return ApiError(400, text, f"body.{name}" if name else None, kind="Bad Request")


def sampling_error(message: str, param: str | None = None) -> ApiError:
    """What vLLM answers for a SamplingParams check (a VLLMValidationError)."""
    return ApiError(400, message, param)


def lax_float(body: JSON, name: str) -> float | None:
    """pydantic's lax float: numbers, bools and numeric strings."""
    value = body.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool | int | float | str):
            return float(value)
    except (OverflowError, ValueError):
        pass
    raise refused(name, "Input should be a valid number", value)


def lax_int(body: JSON, name: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int | None:
    """pydantic's lax int: ints, bools, integral floats and integer strings; then `Field(ge, le)`
    where vLLM declares one."""
    value = body.get(name)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, bool | int):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = int(value.strip())
    if number is None:
        raise refused(name, "Input should be a valid integer", value)
    if not low <= number <= high:
        raise refused(name, f"Input should be between {low} and {high}", value)
    return number


def lax_bool(body: JSON, name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    truthy = {1: True, 0: False, "1": True, "0": False, "true": True, "false": False}
    truthy |= {"yes": True, "no": False, "on": True, "off": False, "t": True, "f": False}
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, int | str) and key in truthy:
        return truthy[key]
    raise refused(name, "Input should be a valid boolean", value)


def check_fields(body: JSON, chat: bool, max_model_len: int) -> None:
    """vLLM's refusals of the fields vllama sends: its request models' `mode="before"`
    validators, their field types, then `SamplingParams._verify_args`."""
    # Before validators (raised inside pydantic: FastAPI's validation handler answers).
    if body.get("stream_options") and not body.get("stream"):
        raise refused(None, "Value error, Stream options can only be defined when `stream=True`.")
    for name in ("top_logprobs",) if chat else ("logprobs",):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise refused(None, f"Value error, `{name}` must be an integer.", value)
        if value is not None and value < 0 and value != -1:
            raise refused(None, f"Value error, `{name}` must be a positive value or -1.", value)
    if chat and body.get("top_logprobs") not in (None, 0) and not body.get("logprobs"):
        message = "Value error, when using `top_logprobs`, `logprobs` must be set to true."
        raise refused(None, message)
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema", "structural_tag"):
            raise refused("response_format", "Input tag does not match any expected", kind)
        if kind == "json_schema" and response_format.get("json_schema") is None:
            raise refused(
                None,
                "Value error, When response_format type is 'json_schema', the 'json_schema' "
                "field must be provided.",
            )
    # Field types.
    for name in ("stream_options", "chat_template_kwargs") if chat else ("stream_options",):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise refused(name, "Input should be a valid dictionary", body[name])
    lax_bool(body, "stream")
    if chat:
        lax_bool(body, "logprobs")
    floats: tuple[str, ...] = ("temperature", "top_p", "min_p", "repetition_penalty")
    floats += ("presence_penalty", "frequency_penalty")
    temperature, top_p, min_p, repetition, presence, frequency = (
        lax_float(body, name) for name in floats
    )
    top_k, n = lax_int(body, "top_k"), lax_int(body, "n")
    lax_int(body, "seed")
    truncate = lax_int(body, "truncate_prompt_tokens", low=-1)
    max_tokens = lax_int(body, "max_completion_tokens") if chat else None
    max_tokens = lax_int(body, "max_tokens") if max_tokens is None else max_tokens
    logprobs = lax_int(body, "top_logprobs" if chat else "logprobs")
    check_budget(body, chat, max_model_len)
    # SamplingParams' checks.
    if n is not None and not 1 <= n <= int(os.environ.get("VLLM_MAX_N_SEQUENCES", "16384")):
        raise sampling_error(f"n must be at least 1 and at most 16384, got {n}.")
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if value is not None and not -2.0 <= value <= 2.0:
            raise sampling_error(f"{name} must be in [-2, 2], got {value}.")
    if repetition is not None and not (math.isfinite(repetition) and repetition > 0.0):
        raise sampling_error(f"repetition_penalty must be greater than zero, got {repetition}.")
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise sampling_error(f"temperature must be in [0, 2], got {temperature}.", "temperature")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise sampling_error(f"top_p must be in (0, 1], got {top_p}.", "top_p")
    if top_k is not None and top_k < -1:
        raise sampling_error(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise sampling_error(f"min_p must be in [0, 1], got {min_p}.")
    if max_tokens is not None and max_tokens < 1:
        message = f"max_tokens must be at least 1, got {max_tokens}."
        raise sampling_error(message, "max_tokens")
    if n is not None and n > 1 and temperature == 0:
        raise sampling_error(f"n must be 1 when using greedy sampling, got {n}.")
    if logprobs is not None and logprobs > MAX_LOGPROBS:
        message = f"Requested sample logprobs of {logprobs}, which is greater than max allowed: "
        raise sampling_error(message + str(MAX_LOGPROBS), "logprobs")
    if truncate is not None and truncate > max_model_len:
        message = f"truncate_prompt_tokens={truncate} cannot be greater than max_model_len = "
        message += f"{max_model_len}. Please request a smaller truncation size."
        raise sampling_error(message, "truncate_prompt_tokens")


def check_budget(body: JSON, chat: bool, max_model_len: int, field: str | None = None) -> None:
    """vLLM 0.32's `TokenizeParams` check, before the prompt is rendered: an output budget over
    the context alone is refused (one that merely does not fit beside the prompt is clamped).
    Chat names `max_completion_tokens` when it is set, else `max_tokens`."""
    names = (
        [field] if field else ["max_completion_tokens", "max_tokens"] if chat else ["max_tokens"]
    )
    for name in names:
        value = lax_int(body, name)
        if value is not None:
            if value > max_model_len:
                message = f"{name}={value} cannot be greater than max_model_len={max_model_len}. "
                message += "Please request fewer output tokens."
                # VLLMValidationError's str adds the parameter and value.
                raise sampling_error(f"{message} (parameter={name}, value={value})", name)
            return


class FakeVllm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.model: str = args.model
        self.name: str = args.served_model_name or args.model
        self.max_model_len: int = args.max_model_len
        self.token_delay = env_float("FAKE_VLLM_TOKEN_DELAY", 0.0) or 0.0
        self.end_delay = env_float("FAKE_VLLM_END_DELAY", 0.0) or 0.0
        self.default_tokens = env_int("FAKE_VLLM_TOKENS", 8) or 0
        self.eos = env_flag("FAKE_VLLM_EOS")
        self.crash_after = env_int("FAKE_VLLM_CRASH_AFTER_CHUNKS")
        self.unhealthy_after = env_float("FAKE_VLLM_UNHEALTHY_AFTER")
        self.health_hang_after = env_float("FAKE_VLLM_HEALTH_HANG_AFTER")
        self.hang_after = env_int("FAKE_VLLM_HANG_AFTER_CHUNKS")
        self.error_after = env_int("FAKE_VLLM_ERROR_AFTER_CHUNKS")
        self.fail_status = env_int("FAKE_VLLM_FAIL_STATUS")
        self.drop_connections = env_flag("FAKE_VLLM_DROP_CONNECTIONS")
        self.last_headers: dict[str, str] | None = None
        self.ready_at: float | None = None
        self.requests = 0
        self.aborted = 0
        self.running = 0
        self.last_request: JSON | None = None
        self.stored: dict[str, JSON] = {}  # Responses API answers by id (as with vLLM's store)
        self.access_log_enabled = not args.disable_uvicorn_access_log
        self.sleeping = False
        self.sleeps = 0
        self.wakes = 0
        self.hit_while_sleeping = 0

    # ---- app -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.access_log])
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/fake/stats", self.stats)
        app.router.add_get("/fake/last_request", self.last)
        app.router.add_get("/fake/env", self.env)
        app.router.add_get("/fake/last_headers", self.headers)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/responses/{response_id}", self.stored_response)
        app.router.add_post("/sleep", self.sleep)
        app.router.add_post("/wake_up", self.wake_up)
        app.router.add_get("/is_sleeping", self.is_sleeping)
        return app

    async def sleep(self, request: web.Request) -> web.Response:
        self.sleeping = True
        self.sleeps += 1
        return web.Response()

    async def wake_up(self, request: web.Request) -> web.Response:
        self.sleeping = False
        self.wakes += 1
        return web.Response()

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})

    @web.middleware
    async def access_log(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if self.access_log_enabled:
                peer = request.remote or "-"
                log(f'INFO:     {peer} - "{request.method} {request.path_qs} HTTP/1.1" {status}')

    def engine_dead(self) -> bool:
        return self.ready_for(self.unhealthy_after)

    def ready_for(self, seconds: float | None) -> bool:
        """Whether the server has been ready at least `seconds` (never, for None)."""
        return (
            self.ready_at is not None
            and seconds is not None
            and time.monotonic() - self.ready_at >= seconds
        )

    # ---- simple endpoints ------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.ready_for(self.health_hang_after):
            await asyncio.Event().wait()  # hung: only the server's shutdown cancels this
        return web.Response(status=503 if self.engine_dead() else 200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0+fake"})

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        label = f'{{model_name="{self.name}"}}'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{label} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} 0.0\n"
            "# HELP fake_vllm_requests_total Inference requests received.\n"
            "# TYPE fake_vllm_requests_total counter\n"
            f"fake_vllm_requests_total {float(self.requests)}\n"
            "# HELP fake_vllm_aborted_requests_total Clients that disconnected mid-stream.\n"
            "# TYPE fake_vllm_aborted_requests_total counter\n"
            f"fake_vllm_aborted_requests_total {float(self.aborted)}\n"
        )
        return web.Response(
            body=text.encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.requests,
                "aborted": self.aborted,
                "running": self.running,
                "pid": os.getpid(),
                "sleeping": self.sleeping,
                "sleeps": self.sleeps,
                "wakes": self.wakes,
                "hit_while_sleeping": self.hit_while_sleeping,
            }
        )

    async def env(self, request: web.Request) -> web.Response:
        """The environment the engine runs with (a warm spare's /proc/PID/environ still shows
        the one it was started with)."""
        return web.json_response(dict(os.environ))

    async def last(self, request: web.Request) -> web.Response:
        return web.json_response(self.last_request)

    async def headers(self, request: web.Request) -> web.Response:
        return web.json_response(self.last_headers)

    # ---- inference -------------------------------------------------------------------------

    def budget(
        self, max_tokens: int | None, prompt_tokens: int, truncate: int | None = None
    ) -> tuple[int, str]:
        """Tokens to generate and the finish reason, as vLLM 0.32: a prompt over the context is
        refused (its tokenizer stops counting at the context + 1, hence "at least"), unless
        truncated; the budget is `min(context - prompt, max_tokens or the default)`."""
        context = self.max_model_len
        if truncate is not None:
            prompt_tokens = min(prompt_tokens, context - 1 if truncate == -1 else truncate)
        if prompt_tokens > context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, your prompt "
                f"contains at least {context + 1} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
            )
        wanted = self.default_tokens if max_tokens is None else max_tokens
        n = min(wanted, context - prompt_tokens)
        if n < 1:
            raise sampling_error(f"max_tokens must be at least 1, got {n}.", "max_tokens")
        return n, "stop" if max_tokens is None and n == wanted else "length"

    async def parse(self, request: web.Request) -> JSON:
        """Count the request, decode and check the common fields; raise ApiError if bad."""
        self.requests += 1
        self.last_headers = {name.lower(): value for name, value in request.headers.items()}
        if self.drop_connections and request.transport is not None:
            request.transport.abort()  # no status line, no bytes: the client sees a disconnect
            raise ApiError(500, "connection dropped")  # written nowhere
        if self.fail_status is not None:
            status = self.fail_status
            message = FAIL_MESSAGES.get(status, f"fake failure {status}")
            raise ApiError(status, message, kind=ERROR_TYPES.get(status, HTTPStatus(status).phrase))
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        self.last_request = body
        model = body.get("model")
        if model is not None and model != self.name:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")
        if self.engine_dead():
            raise ApiError(500, "EngineCore encountered an issue. See stack trace for the cause.")
        return body

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.generate(request, chat=False)

    async def generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if self.sleeping:
            self.hit_while_sleeping += 1
            return ApiError(500, "EngineCore is sleeping").response()
        try:
            body = await self.parse(request)
            if chat:
                prompt = body.get("messages")
                if not isinstance(prompt, list) or not prompt:
                    raise ApiError(400, "`messages` must be a non-empty list.", "messages")
            else:
                prompt = body.get("prompt")
                if not isinstance(prompt, str | list):
                    raise ApiError(400, "`prompt` must be a string or a list.", "prompt")
            check_fields(body, chat, self.max_model_len)
            max_tokens = lax_int(body, "max_completion_tokens") if chat else None
            max_tokens = lax_int(body, "max_tokens") if max_tokens is None else max_tokens
            stop = body.get("stop")
            stop = [stop] if isinstance(stop, str) else stop
            if stop is not None and (
                not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
            ):
                raise ApiError(400, "`stop` must be a string or a list of strings.", "stop")
            tools = body.get("tools") if chat else None
            if tools is not None and not isinstance(tools, list):
                raise ApiError(400, "`tools` must be a list.", "tools")
            prompt_tokens = count_words(prompt)
            truncate = lax_int(body, "truncate_prompt_tokens", low=-1)
            n, finish = self.budget(max_tokens, prompt_tokens, truncate)
            if truncate is not None:
                prompt_tokens = min(prompt_tokens, self.max_model_len - 1)
        except ApiError as exc:
            return exc.response()

        if self.eos and n >= self.default_tokens:
            n, finish = self.default_tokens, "stop"
        gen = Generation(self, chat, n, finish, prompt_tokens)
        if stop:
            gen.apply_stop(stop)
        if tools:
            gen.call_tool(tool_name(tools[0]))
        self.running += 1
        try:
            if lax_bool(body, "stream"):
                options = body.get("stream_options") or {}
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                return await gen.stream(request, include_usage)
            return await gen.complete()
        finally:
            self.running -= 1

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Messages, as vLLM 0.32 serves them (a chat request underneath): text
        only, errors as vLLM answers them there; `max_tokens` is required and the model ends its
        answer after FAKE_VLLM_TOKENS tokens (a smaller budget cuts it)."""
        try:
            body = await self.parse(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise refused("messages", "Field required", messages)
            max_tokens = body.get("max_tokens")
            if max_tokens is None:
                raise refused("max_tokens", "Field required", body)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
                raise refused("max_tokens", "Input should be a valid integer", max_tokens)
            if max_tokens <= 0:
                raise refused("max_tokens", "Value error, max_tokens must be positive", max_tokens)
            thinking = body.get("thinking")
            if isinstance(thinking, dict) and thinking.get("type") == "enabled":
                spent = thinking.get("budget_tokens")
                if isinstance(spent, int) and spent >= max_tokens:
                    text = "Value error, thinking.budget_tokens must be less than max_tokens"
                    raise refused(None, text)
            # vLLM sets both max_tokens and max_completion_tokens: the refusal names the latter.
            check_budget({"max_completion_tokens": max_tokens}, True, self.max_model_len)
            check_fields(body, True, self.max_model_len)  # the chat request's own checks
            prompt_tokens = count_words(messages) + count_words(body.get("system"))
            n, finish = self.budget(max_tokens, prompt_tokens)
        except ApiError as exc:
            return exc.anthropic_response()
        if n > self.default_tokens:
            n, finish = self.default_tokens, "stop"
        gen = Generation(self, True, n, finish, prompt_tokens)
        if lax_bool(body, "stream"):
            return await gen.stream_events(request, gen.anthropic_events())
        await asyncio.sleep(self.token_delay * n)
        return web.json_response(gen.anthropic_message(n, gen.anthropic_usage(n)))

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Responses, as vLLM 0.32 serves them: `input` a string or a list of items;
        `max_output_tokens` tokens (within the context), else FAKE_VLLM_TOKENS."""
        try:
            body = await self.parse(request)
            given = body.get("input")
            if not isinstance(given, str | list):
                raise refused("input", "Field required", given)
            max_tokens = lax_int(body, "max_output_tokens")
            check_budget(body, False, self.max_model_len, "max_output_tokens")
            prompt_tokens = count_words(given) + count_words(body.get("instructions"))
            truncate = -1 if body.get("truncation") == "auto" else None
            n, finish = self.budget(max_tokens, prompt_tokens, truncate)
        except ApiError as exc:
            return exc.response()
        gen = Generation(self, True, n, finish, prompt_tokens)
        whole = gen.response_object(n, gen.responses_usage(n))
        self.stored[whole["id"]] = whole
        if lax_bool(body, "stream"):
            return await gen.stream_events(request, gen.responses_events())
        await asyncio.sleep(self.token_delay * n)
        return web.json_response(whole)

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await self.parse(request)
            texts = body.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ApiError(400, "`input` must be a string or a list of strings.", "input")
        except ApiError as exc:
            return exc.response()
        data = [
            {"object": "embedding", "index": i, "embedding": embed(text)}
            for i, text in enumerate(texts)
        ]
        words = count_words(texts)
        return web.json_response(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": self.name,
                "data": data,
                "usage": {"prompt_tokens": words, "total_tokens": words, "completion_tokens": 0},
            }
        )

    async def stored_response(self, request: web.Request) -> web.Response:
        found = self.stored.get(request.match_info["response_id"])
        if found is None:
            return ApiError(404, "Response not found").response()
        return web.json_response(found)


def tool_name(tool: object) -> str:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else "tool"


def embed(text: str) -> list[float]:
    """16 deterministic floats from the text, L2-normalised."""
    raw = [b / 127.5 - 1.0 for b in hashlib.sha256(text.encode()).digest()[:16]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


class Generation:
    """One chat/text completion of `n` deterministic tokens."""

    def __init__(
        self, server: FakeVllm, chat: bool, n: int, finish_reason: str, prompt_tokens: int
    ) -> None:
        self.server, self.chat, self.n = server, chat, n
        self.finish_reason, self.prompt_tokens = finish_reason, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.pieces = [token(i) for i in range(n)]  # the text, as streamed
        self.completion_tokens = n
        self.tool: tuple[str, list[str]] | None = None  # (name, argument fragments)

    def apply_stop(self, stop: list[str]) -> None:
        """Generation ends at the token completing the first stop string; the text is cut
        before that stop string."""
        text = "".join(self.pieces)
        matches = [(text.find(s) + len(s), text.find(s)) for s in stop if s and s in text]
        if not matches:
            return
        end, cut = min(matches)
        used, length = 0, 0
        while length < end:
            length += len(self.pieces[used])
            used += 1
        kept: list[str] = []
        length = 0
        for piece in self.pieces[:used]:
            piece = piece[: max(cut - length, 0)]
            length += len(piece)
            if piece:
                kept.append(piece)
        self.pieces, self.completion_tokens, self.finish_reason = kept, used, "stop"

    def call_tool(self, name: str) -> None:
        raw = os.environ.get("FAKE_VLLM_TOOL_ARGS_RAW")
        arguments = '{"city": "Paris"}' if raw is None else raw
        middle = len(arguments) // 2
        self.tool = (name, [arguments[:middle], arguments[middle:]])
        self.pieces, self.completion_tokens, self.finish_reason = [], 2, "tool_calls"

    def usage(self, completion_tokens: int) -> JSON:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def envelope(self, choices: list[JSON], chunk: bool) -> JSON:
        kind = "chat.completion" if self.chat else "text_completion"
        obj = f"{kind}.chunk" if chunk and self.chat else kind
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.server.name,
            "choices": choices,
        }

    async def complete(self) -> web.Response:
        await asyncio.sleep(self.server.token_delay * self.completion_tokens)
        text = "".join(self.pieces)
        choice: JSON = {"index": 0, "logprobs": None, "finish_reason": self.finish_reason}
        if self.tool is not None:
            name, fragments = self.tool
            function = {"name": name, "arguments": "".join(fragments)}
            call = {"id": "call_fake0", "type": "function", "function": function}
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
        elif self.chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice["stop_reason"] = None
        body = self.envelope([choice], chunk=False)
        body["usage"] = self.usage(self.completion_tokens)
        return web.json_response(body)

    def tool_chunks(self) -> list[JSON]:
        if self.tool is None:
            return []
        name, fragments = self.tool
        first = {
            "index": 0,
            "id": "call_fake0",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        deltas = [first] + [{"index": 0, "function": {"arguments": f}} for f in fragments]
        chunks = []
        for delta in deltas:
            choice: JSON = {"index": 0, "logprobs": None, "finish_reason": None}
            choice["delta"] = {"tool_calls": [delta]}
            chunks.append(self.envelope([choice], chunk=True))
        return chunks

    def chunk(self, text: str | None, finish_reason: str | None = None) -> JSON:
        choice: JSON = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            delta = {"role": "assistant", "content": ""} if text is None else {"content": text}
            choice["delta"] = delta if text is None or text else {}
        else:
            choice["text"] = text or ""
        return self.envelope([choice], chunk=True)

    async def stream(self, request: web.Request, include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        if self.server.hang_after is not None and self.server.hang_after < 0:
            await self.hang(request, 0)  # before the headers
            return resp
        await resp.prepare(request)

        async def send(event: JSON | str) -> None:
            data = event if isinstance(event, str) else json.dumps(event)
            await resp.write(f"data: {data}\n\n".encode())

        server = self.server
        try:
            if self.chat:
                await send(self.chunk(None))
            for i, piece in enumerate(self.pieces):
                if server.crash_after is not None and i >= server.crash_after:
                    log(f"ERROR: fake crash after {i} chunks of request {self.id}")
                    os.kill(os.getpid(), signal.SIGKILL)
                if server.hang_after is not None and i >= server.hang_after:
                    await self.hang(request, i)
                    return resp
                if server.error_after is not None and i >= server.error_after:
                    log(f"ERROR: fake engine error after {i} chunks of request {self.id}")
                    await send(ENGINE_ERROR)
                    await send("[DONE]")
                    await resp.write_eof()
                    return resp
                if server.token_delay:
                    await asyncio.sleep(server.token_delay)
                # vLLM sends the last token's text in the chunk that carries finish_reason.
                last = i == len(self.pieces) - 1 and self.tool is None
                await send(self.chunk(piece, self.finish_reason if last else None))
            for tool_chunk in self.tool_chunks():
                await send(tool_chunk)
            if self.tool is not None or not self.pieces:
                await send(self.chunk("", self.finish_reason))
            if include_usage:
                usage = self.envelope([], chunk=True)
                usage["usage"] = self.usage(self.completion_tokens)
                await send(usage)
            await send("[DONE]")
            await resp.write_eof()
        except ConnectionResetError:  # client went away: stop generating
            self.abort()
        except asyncio.CancelledError:  # handler cancelled (server shutdown)
            self.abort()
            raise
        return resp

    # ---- Anthropic's Messages and OpenAI's Responses, as vLLM translates a chat into them ----

    def anthropic_usage(self, output_tokens: int) -> JSON:
        return {"input_tokens": self.prompt_tokens, "output_tokens": output_tokens}

    def anthropic_message(self, done: int, usage: JSON) -> JSON:
        """The message after `done` tokens (0: the one `message_start` carries)."""
        text = "".join(self.pieces[:done])
        stop = None
        if done == len(self.pieces):
            stop = "max_tokens" if self.finish_reason == "length" else "end_turn"
        return {
            "id": f"msg_{self.id}",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": text}] if done else [],
            "model": self.server.name,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def anthropic_events(self) -> list[tuple[str, JSON]]:
        """vLLM's event sequence: usage in `message_start` (no output yet) and, whole, in
        `message_delta`."""
        n = len(self.pieces)
        start = self.anthropic_message(0, self.anthropic_usage(0))
        events: list[tuple[str, JSON]] = [
            ("message_start", {"type": "message_start", "message": start})
        ]
        block = {"type": "text", "text": ""}
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
        )
        for piece in self.pieces:
            text_delta = {"type": "text_delta", "text": piece}
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": text_delta},
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        stop = self.anthropic_message(n, {})["stop_reason"]
        delta: JSON = {"stop_reason": stop, "stop_sequence": None}
        usage = self.anthropic_usage(n)
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def responses_usage(self, output_tokens: int) -> JSON:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + output_tokens,
        }

    def response_object(self, done: int, usage: JSON | None) -> JSON:
        finished = done == len(self.pieces) and usage is not None
        status = "in_progress"
        if finished:
            status = "incomplete" if self.finish_reason == "length" else "completed"
        text = {"type": "output_text", "text": "".join(self.pieces[:done]), "annotations": []}
        item = {
            "id": f"msg_{self.id}",
            "type": "message",
            "role": "assistant",
            "status": "completed" if finished else "in_progress",
            "content": [text],
        }
        return {
            "id": f"resp_{self.id}",
            "object": "response",
            "created_at": self.created,
            "model": self.server.name,
            "status": status,
            "output": [item] if finished else [],
            "usage": usage,
        }

    def responses_events(self) -> list[tuple[str, JSON]]:
        """vLLM's event sequence: `usage` null until the whole response in
        `response.completed`."""
        n = len(self.pieces)
        events: list[tuple[str, JSON]] = []

        def add(kind: str, **fields: Any) -> None:
            events.append((kind, {"type": kind, "sequence_number": len(events), **fields}))

        add("response.created", response=self.response_object(0, None))
        add("response.in_progress", response=self.response_object(0, None))
        for piece in self.pieces:
            add("response.output_text.delta", item_id=f"msg_{self.id}", output_index=0,
                content_index=0, delta=piece)  # fmt: skip
        add("response.completed", response=self.response_object(n, self.responses_usage(n)))
        return events

    async def stream_events(
        self, request: web.Request, events: list[tuple[str, JSON]]
    ) -> web.StreamResponse:
        """Named SSE events (`event: NAME` then `data: JSON`), one token's event per
        FAKE_VLLM_TOKEN_DELAY; no `[DONE]`."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        self.server.running += 1
        try:
            for name, data in events:
                if self.server.token_delay and "delta" in name:
                    await asyncio.sleep(self.server.token_delay)
                await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            await asyncio.sleep(self.server.end_delay)  # the stream's end after its last event
            await resp.write_eof()
        except ConnectionResetError:
            self.abort()
        finally:
            self.server.running -= 1
        return resp

    async def hang(self, request: web.Request, sent: int) -> None:
        """Send nothing more until the client goes away (the server does not cancel handlers:
        watch the connection)."""
        log(f"INFO: fake hang after {sent} chunks of request {self.id}")
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.05)
        self.abort()

    def abort(self) -> None:
        self.server.aborted += 1
        log(f"INFO: Aborted request {self.id}.")


# ---- process lifecycle ---------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fake vLLM OpenAI API server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--max-model-len", type=int, default=env_int("FAKE_VLLM_MAX_MODEL_LEN", 2048)
    )
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    args, _unknown = parser.parse_known_args(argv)
    if args.max_model_len == -1:  # auto-fit, as vLLM: the fake's whole (default) context fits
        args.max_model_len = env_int("FAKE_VLLM_MAX_MODEL_LEN", 2048)
    return args


def spawn_grandchild() -> subprocess.Popen[bytes]:
    # The trailing argument only makes the process findable with `pgrep -f fake_vllm`.
    code = "import time; print('up', flush=True); time.sleep(3600)"
    if env_flag("FAKE_VLLM_GRANDCHILD_IGNORE_TERM"):  # an engine slow to stop: SIGKILL only
        code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + code
    child = subprocess.Popen(
        [sys.executable, "-c", code, "fake_vllm_enginecore"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    # Up (its SIGTERM handling set) before the server says it is: a stop right after the start
    # meets the engine it means to test, not one still starting.
    assert child.stdout is not None
    child.stdout.readline()
    child.stdout.close()
    pidfile = os.environ.get("FAKE_VLLM_GRANDCHILD_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{child.pid}\n")
    log(f"INFO: Started EngineCore process [{child.pid}]")
    return child


def stop_grandchild(child: subprocess.Popen[bytes] | None) -> None:
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


async def serve(args: argparse.Namespace) -> int:
    pid = os.getpid()
    log(f"INFO: fake vLLM API server version 0.0.0+fake, pid {pid}")
    log(f"INFO: args: {vars(args)}")
    if os.environ.get("FAKE_VLLM_CRASH_AT_START") in ("1", "memory"):
        log(f"INFO: Initializing an engine with config: model={args.model!r}")
        log("ERROR: EngineCore failed to start.")
        log("Traceback (most recent call last):")
        log('  File "fake_vllm.py", line 1, in <module>')
        if os.environ.get("FAKE_VLLM_CRASH_AT_START") == "memory":
            log(
                "ValueError: No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine."
            )
            # Then, as vLLM's API server does, its own traceback: longer than the error tail.
            log("Traceback (most recent call last):")
            for depth in range(30):
                log(f'  File "vllm/entrypoints/openai/api_server.py", line {depth}, in run')
            log("RuntimeError: Engine core initialization failed. See root cause above.")
        else:
            log("RuntimeError: fake crash at start")
        return 3

    child = spawn_grandchild() if env_flag("FAKE_VLLM_GRANDCHILD") else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if env_flag("FAKE_VLLM_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def wait_stop(seconds: float) -> bool:
        """Sleep up to `seconds`; True if asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(seconds, 0.0))
        return stop.is_set()

    runner: web.AppRunner | None = None
    try:
        if await wait_stop(env_float("FAKE_VLLM_SILENT_START", 0.0) or 0.0):
            return 0
        delay = env_float("FAKE_VLLM_START_DELAY", 0.0) or 0.0
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            log(f"INFO: Loading model weights ... {delay - left:.1f}/{delay:.1f} s")
            if await wait_stop(min(0.2, left)):
                return 0

        server = FakeVllm(args)
        runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        server.ready_at = time.monotonic()
        log(f"INFO:     Started server process [{pid}]")
        log("INFO:     Waiting for application startup.")
        log("INFO: Application startup complete.")
        log(f"INFO:     Uvicorn running on http://{args.host}:{args.port} (Press CTRL+C to quit)")
        await stop.wait()
        log("INFO:     Shutting down")
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        stop_grandchild(child)
        log(f"INFO:     Finished server process [{pid}]")
        nanobind_report(env_int("FAKE_VLLM_NANOBIND_AT_EXIT") or 0)


def nanobind_report(lines: int) -> None:
    """nanobind's report of leaked objects at interpreter exit, `lines` lines long."""
    if lines <= 0:
        return
    tail = [
        "nanobind: this is likely caused by a reference counting issue in the binding code.",
        "See https://nanobind.readthedocs.io/en/latest/refleaks.html",
    ]
    objects = max(lines - 3 - len(tail), 0)
    kinds = [("instances", objects // 2), ("types", objects - objects // 2)]
    report: list[str] = []
    for kind, count in kinds:
        report.append(f"nanobind: leaked {count} {kind}!")
        for i in range(count):
            if kind == "instances":
                what = f'instance 0x7f{i:08x} of type "xgrammar.xgrammar_bindings.TokenizerInfo"'
            else:
                what = f'type "xgrammar.xgrammar_bindings.GrammarCompiler{i}"'
            report.append(f" - leaked {what}")
    report.append(" - ... skipped remainder")
    report += tail
    os.write(2, "".join(line + "\n" for line in report[:lines]).encode())


def main() -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    args = parse_args(sys.argv[1:])
    marker = os.environ.get("FAKE_VLLM_PORT_TAKEN_ONCE")  # a file: absent the first time
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        if os.environ.get("FAKE_VLLM_PORT_TAKEN_WORDING") == "vllm":  # its own bind's traceback
            log("Traceback (most recent call last):")
            log("    sock.bind(addr)")
            log("OSError: [Errno 98] Address already in use")
        else:  # uvicorn's
            log(f"OSError: [Errno 98] error while attempting to bind on address "
                f"('{args.host}', {args.port}): address already in use")  # fmt: skip
        sys.exit(1)
    deaf = os.environ.get("FAKE_VLLM_DEAF_ONCE")  # a file: absent the first time
    if deaf and not os.path.exists(deaf):
        # As vLLM was seen to do when another process took its port: it says it serves, stays
        # up, and listens on nothing.
        open(deaf, "w").close()
        log(f"INFO: Starting vLLM server on http://{args.host}:{args.port}")
        while True:
            time.sleep(1)
            log("INFO: still up")
    sys.exit(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
