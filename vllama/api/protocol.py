"""Typed requests: one pydantic model per endpoint family, validated once per request.

A model is built from the parsed JSON body (`Request.parse`) before anything else reads it; a
body that does not fit raises `BadRequest`, in the API's own envelope like every other 400
(`api/errors`), with one message that names the field (`messages[2].role must be one of ...`).
Fields are strict (Ollama's Go decoder and vLLM's pydantic both refuse `"true"` for a boolean),
and unknown fields are not an error.

The relayed families (OpenAI, Anthropic Messages, Responses, vLLM's own routes) read only what
vllama itself uses (`model`, `stream`): the body goes upstream as received, its other fields
untouched, and vLLM's own validation answers for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from vllama.api.errors import BadRequest

# Any JSON value, recursively (what `json.loads` returns): the type of what vllama passes on
# without reading it (tool schemas, `format`, tool-call arguments).
Json = JsonValue
JsonObject = dict[str, JsonValue]

# A message for a field's errors, by where the field lies: names, with "*" for any list index.
# `{at}` is the field's place in the body, `messages[2].role`.
ErrorMessages = Mapping[tuple[str, ...], str]


def refused(message: str) -> PydanticCustomError:
    """A validator's error whose message is the 400's whole text (`{at}`: where it lies)."""
    return PydanticCustomError("vllama", message)


class Request(BaseModel):
    """A request body: strict types, unknown fields ignored (a relayed body goes upstream as
    received, so what vllama does not read is vLLM's to check)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    error_messages: ClassVar[ErrorMessages] = {}

    @classmethod
    def parse(cls, payload: Mapping[str, object]) -> Self:
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise bad_request(exc.errors(include_url=False)[0], cls.error_messages) from None


def bad_request(error: ErrorDetails, messages: ErrorMessages) -> BadRequest:
    """pydantic's first error as the 400 vllama answers."""
    loc = error["loc"]
    if error["type"] == "vllama":
        return BadRequest(error["msg"].replace("{at}", _place(loc)), param=_param(loc))
    for end in range(len(loc), 0, -1):
        pattern = tuple("*" if isinstance(part, int) else part for part in loc[:end])
        message = messages.get(pattern)
        if message is not None:
            return BadRequest(message.replace("{at}", _place(loc[:end])), param=_param(loc))
    if error["type"] == "missing":
        return BadRequest(f"{_place(loc)} is required", param=_param(loc))
    return BadRequest(f"{_place(loc)}: {error['msg']}", param=_param(loc))


def _place(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def _param(loc: tuple[int | str, ...]) -> str | None:
    return "model" if loc[:1] == ("model",) else None


def _model_name(value: object) -> str:
    if value is None or value == "":
        raise refused("model is required")
    if not isinstance(value, str):
        raise refused("model must be a string")
    return value


def _streams(value: object) -> bool:
    return value is True


# The model a request names: required, a string.
ModelName = Annotated[str, BeforeValidator(_model_name)]


class Relayed(Request):
    """A body relayed to vLLM as it came: what vllama reads of it. `stream` only decides how the
    answer is held (a stream is held to stream_idle_timeout); vLLM checks its type."""

    model: ModelName = Field(default=None, validate_default=True)
    stream: Annotated[bool, BeforeValidator(_streams)] = False


class ChatCompletionRequest(Relayed):
    """`/v1/chat/completions` (a derived model's system prompt goes into its `messages`)."""


class CompletionRequest(Relayed):
    """`/v1/completions`."""


class EmbeddingRequest(Relayed):
    """`/v1/embeddings`, `/v2/embed`."""


class MessagesRequest(Relayed):
    """Anthropic's `/v1/messages` and `/v1/messages/count_tokens`."""


class ResponsesRequest(Relayed):
    """OpenAI's Responses API, `/v1/responses`."""


class VllmRequest(Relayed):
    """vLLM's own routes by `model`: tokenize, pooling, classify, score, rerank."""
