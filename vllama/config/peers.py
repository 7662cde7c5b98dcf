"""`[peers.<name>]`: other servers whose models this daemon serves by relaying to them."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PeerSpec(BaseModel):
    """Another vllama, an Ollama, a vLLM server or any OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    api_key: str | None = Field(default=None, min_length=1, repr=False)  # sent as a Bearer token
    # The peer's models, as clients name them here. Empty: read from the peer (its /api/tags, or
    # its /v1/models), and kept up to date by the health check.
    models: tuple[str, ...] = ()

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a model twice")
        return value
