"""Who may call the daemon: API keys with a scope, and the origins and hosts browsers may use."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scope = Literal["admin", "inference"]
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


class ApiKey(BaseModel):
    """One `[[server.api_keys]]` entry: the key itself or its SHA-256, a scope, a name for logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(default=None, min_length=16, repr=False)
    key_sha256: str | None = None
    scope: Scope = "inference"
    name: str = ""

    @model_validator(mode="after")
    def _one_form(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        if self.key_sha256 is not None and not _HEX64.match(self.key_sha256.lower()):
            raise ValueError("key_sha256 must be 64 hexadecimal digits")
        return self

    @property
    def digest(self) -> str:
        """The SHA-256 of the key, in hex: all a running daemon keeps."""
        if self.key_sha256 is not None:
            return self.key_sha256.lower()
        assert self.key is not None
        return sha256_hex(self.key)


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
