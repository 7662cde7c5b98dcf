"""Ollama's request bodies as typed models, validated once (see `api/protocol`).

Ollama's Go decoder takes `null` for most fields as their zero value, and so do these models
(`raw`, embed's `truncate` and `input`, and the legacy `prompt` excepted, as before). What vLLM
cannot do is refused here, before any model is looked at; what depends on the model (thinking,
tools, `num_ctx`, `suffix`) is refused where the request is translated (`request`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, StrictStr, model_validator

from vllama.api.protocol import ErrorMessages, Json, JsonObject, Request, refused
from vllama.config.units import DurationError, parse_duration

TEMPLATE_REFUSED = (
    "template is not supported: vLLM renders the model's own Jinja chat template "
    "(Ollama's Go templates do not apply); see docs/API.md"
)
ROLES = ("system", "user", "assistant", "tool")
Role = Literal["system", "user", "assistant", "tool"]
Think = StrictBool | Literal["low", "medium", "high", "max"]
Effort = Literal["low", "medium", "high", "max"]


def _duration(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise refused(f"keep_alive: {exc}") from None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _falsy_is_none(value: object) -> object:
    return value or None


# `keep_alive` in seconds (`math.inf`: forever); None when unset.
KeepAlive = Annotated[float | None, BeforeValidator(_duration)]
_IMAGES: ErrorMessages = {
    ("images",): "images must be a list of base64 strings",
    ("images", "*"): "images must be base64 strings",
}


class Streamed(Request):
    """A request answered as NDJSON lines unless `stream` is false."""

    error_messages: ClassVar[ErrorMessages] = {("stream",): "stream must be a boolean"}

    stream: StrictBool | None = None

    @property
    def streaming(self) -> bool:
        return self.stream is not False


class _Inference(Streamed):
    """What `/api/generate` and `/api/chat` share."""

    error_messages: ClassVar[ErrorMessages] = {
        **Streamed.error_messages,
        ("options",): "options must be a JSON object",
        ("format",): 'format must be "json" or a JSON schema object',
        ("think",): 'think must be true, false, "low", "medium", "high" or "max"',
        ("logprobs",): "logprobs must be a boolean",
        ("top_logprobs",): "top_logprobs must be between 0 and 20",
        ("shift",): "shift must be a boolean",
        ("truncate",): "truncate must be a boolean",
    }

    keep_alive: KeepAlive = None
    options: dict[str, object] | None = None  # checked by `options.map_options`
    format: Literal["", "json"] | JsonObject | None = None
    think: Think | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    template: Json = None
    shift: StrictBool | None = None
    truncate: StrictBool | None = None

    def _refuse_unsupported(self) -> None:
        """Fields vLLM cannot honour (`truncate: true` it can: the oldest tokens go)."""
        if self.template:
            raise refused(TEMPLATE_REFUSED)
        if self.shift:
            raise refused(
                "shift is not supported: vLLM does not shift the context; a generation that "
                'reaches the context length stops with done_reason "length"'
            )


class GenerateRequest(_Inference):
    """`/api/generate`."""

    error_messages: ClassVar[ErrorMessages] = {
        **_Inference.error_messages,
        **_IMAGES,
        ("prompt",): "prompt must be a string",
        ("system",): "system must be a string",
        ("raw",): "raw must be a boolean",
        ("suffix",): "suffix must be a string",
    }

    prompt: StrictStr | None = None
    system: StrictStr | None = None
    raw: StrictBool = False
    suffix: StrictStr | None = None
    context: Json = None
    images: list[StrictStr] | None = None

    @model_validator(mode="after")
    def _supported(self) -> Self:
        if self.context:
            raise refused(
                "context (the deprecated token memory of /api/generate) is not supported; "
                "use /api/chat with the conversation's messages"
            )
        if self.raw and (self.template or self.system):
            raise refused("raw mode does not support template, system, or context")
        self._refuse_unsupported()
        if self.raw and self.images:
            raise refused("raw mode does not support images")
        return self

    @property
    def loads_only(self) -> bool:
        """An empty prompt only loads (or, with keep_alive 0, unloads) the model."""
        return not self.prompt and not self.images


class ToolFunction(Request):
    name: StrictStr
    arguments: Json = Field(default_factory=dict)


class ToolCall(Request):
    id: Annotated[str | None, BeforeValidator(_str_or_none)] = None
    function: ToolFunction


class Message(Request):
    """One of `/api/chat`'s messages."""

    role: Role
    content: StrictStr | None = None
    images: list[StrictStr] | None = None
    tool_calls: Annotated[list[ToolCall] | None, BeforeValidator(_falsy_is_none)] = None
    tool_call_id: Annotated[str | None, BeforeValidator(_str_or_none)] = None
    tool_name: Annotated[str | None, BeforeValidator(_str_or_none)] = None

    @model_validator(mode="after")
    def _tool_calls_from_the_assistant(self) -> Self:
        if self.tool_calls and self.role != "assistant":
            raise refused("{at}.tool_calls belong to assistant messages")
        return self


class ChatRequest(_Inference):
    """`/api/chat`."""

    error_messages: ClassVar[ErrorMessages] = {
        **_Inference.error_messages,
        ("messages",): "messages must be a list",
        ("messages", "*"): "{at} must be an object",
        ("messages", "*", "role"): f"{{at}} must be one of {', '.join(ROLES)}",
        ("messages", "*", "content"): "{at} must be a string",
        ("messages", "*", "images"): "images must be a list of base64 strings",
        ("messages", "*", "images", "*"): "images must be base64 strings",
        ("messages", "*", "tool_calls"): "{at} belong to assistant messages",
        ("messages", "*", "tool_calls", "*"): "{at} needs function.name",
        ("tools",): "tools must be a list of tool objects",
    }

    messages: list[Message] | None = None
    tools: list[JsonObject] | None = None

    @model_validator(mode="after")
    def _supported(self) -> Self:
        self._refuse_unsupported()
        return self

    @property
    def loads_only(self) -> bool:
        """No messages only loads (or, with keep_alive 0, unloads) the model."""
        return not self.messages


class EmbedRequest(Request):
    """`/api/embed`."""

    error_messages: ClassVar[ErrorMessages] = {
        ("input",): "input must be a string or a list of strings",
        ("dimensions",): "dimensions must be a positive integer",
        ("truncate",): "truncate must be a boolean",
    }

    keep_alive: KeepAlive = None
    input: StrictStr | list[StrictStr] = Field(default_factory=list)
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    truncate: StrictBool = True

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class EmbeddingsRequest(Request):
    """The older `/api/embeddings`."""

    error_messages: ClassVar[ErrorMessages] = {("prompt",): "prompt must be a string"}

    keep_alive: KeepAlive = None
    prompt: StrictStr = ""


# Bounds on what /api/create stores (the derived-model store is one file, rewritten on change).
MAX_SYSTEM = 256 * 1024  # characters
MAX_PARAMETERS = 64 * 1024  # bytes of JSON
_ADAPTERS = 'adapters must be one entry, {"<name>": "/path/to/peft-lora-folder"}'


class CreateRequest(Streamed):
    """`/api/create`: a derived model (its name is read as every request's model)."""

    error_messages: ClassVar[ErrorMessages] = {
        **Streamed.error_messages,
        ("from",): "from is required: vllama creates models from an existing model",
        ("system",): "system must be a string",
        ("adapters",): _ADAPTERS,
        ("parameters",): f"parameters must be an object of at most {MAX_PARAMETERS} bytes",
    }

    base: StrictStr = Field(default=None, validate_default=True, alias="from", min_length=1)
    files: Json = None
    quantize: Json = None
    adapters: Annotated[dict[str, Json] | None, BeforeValidator(_falsy_is_none)] = None
    system: StrictStr | None = None
    template: Json = None
    # Checked by the handler as a request's options are (`options.map_options`).
    parameters: Annotated[dict[str, object] | None, BeforeValidator(_falsy_is_none)] = None

    @model_validator(mode="after")
    def _supported(self) -> Self:
        for name, value in (("files", self.files), ("quantize", self.quantize)):
            if value:
                raise refused(f"{name} is not supported: vLLM loads Hugging Face folders")
        if self.adapters is not None and len(self.adapters) != 1:
            raise refused(_ADAPTERS)
        if self.system is not None and len(self.system) > MAX_SYSTEM:
            raise refused(f"system is longer than {MAX_SYSTEM} characters")
        if self.template:
            raise refused(TEMPLATE_REFUSED)
        for key, option in (self.parameters or {}).items():
            # What a Modelfile's PARAMETER lines can say: a value, or (`stop`) several.
            if not _is_parameter(option) and not (
                isinstance(option, list) and all(_is_parameter(item) for item in option)
            ):
                raise refused(
                    f"parameters: {key[:40]!r} must be a string, number or boolean, "
                    "or a list of them"
                )
        return self


def _is_parameter(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class CopyRequest(Request):
    """`/api/copy`."""

    error_messages: ClassVar[ErrorMessages] = {
        ("source",): "source is required",
        ("destination",): "destination is required",
    }

    source: StrictStr = Field(min_length=1)
    destination: StrictStr = Field(min_length=1)
