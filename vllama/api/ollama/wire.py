"""What the Ollama translation sends to vLLM's OpenAI API and reads back, as typed structures.

The requests are built here, so their types hold. The stream's chunks are vLLM's own output,
parsed and read as these shapes without a check per chunk (the relay's hot path): their readers
take every field as optional, as `total=False` says, and tolerate a null where vLLM sends one.
"""

from __future__ import annotations

from typing import Literal, Required, TypedDict

from vllama.api.ollama.options import Sampling
from vllama.api.protocol import Json, JsonObject

# -- requests ---------------------------------------------------------------------------------


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImageUrl(TypedDict):
    url: str


class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageUrl


Content = str | list[TextPart | ImagePart]


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(TypedDict, total=False):
    role: Required[str]
    content: Required[Content]
    tool_calls: list[ToolCall]
    tool_call_id: str
    tool_name: str  # Ollama's link of a tool result to its call; gone before the body is sent


class JsonSchemaFormat(TypedDict):
    name: str
    schema: JsonObject


class ResponseFormat(TypedDict, total=False):
    type: Required[Literal["json_object", "json_schema"]]
    json_schema: JsonSchemaFormat


class StreamOptions(TypedDict):
    include_usage: bool


class UpstreamBody(Sampling, total=False):
    """A `/v1/chat/completions` (`messages`) or `/v1/completions` (`prompt`) request."""

    model: Required[str]
    messages: list[ChatMessage]
    prompt: str
    stream: bool
    stream_options: StreamOptions
    response_format: ResponseFormat
    tools: list[JsonObject]
    chat_template_kwargs: dict[str, bool]
    reasoning_effort: str
    logprobs: bool | int  # chat: whether; completions: how many alternatives
    top_logprobs: int
    truncate_prompt_tokens: int


class EmbeddingBody(TypedDict, total=False):
    """A `/v1/embeddings` request."""

    model: Required[str]
    input: Required[list[str]]
    dimensions: int
    truncate_prompt_tokens: int


# -- the stream's chunks ----------------------------------------------------------------------


class FunctionDelta(TypedDict, total=False):
    name: str | None
    arguments: str | None


class ToolCallDelta(TypedDict, total=False):
    index: int
    id: str | None
    function: FunctionDelta | None


class Delta(TypedDict, total=False):
    content: str | None
    reasoning_content: str | None
    reasoning: str | None
    tool_calls: list[ToolCallDelta] | None


class Choice(TypedDict, total=False):
    index: int
    text: str | None  # a completions chunk
    delta: Delta | None  # a chat chunk
    finish_reason: str | None
    logprobs: Json  # either API's form: read by `response.ollama_logprobs`


class Usage(TypedDict, total=False):
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class Chunk(TypedDict, total=False):
    """One event of a chat or completions stream."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Choice] | None
    usage: Usage | None
