"""Model names as clients write them: Ollama's `name:tag`, Hugging Face's `org/name`."""

from __future__ import annotations


def normalize_name(name: str) -> str:
    """Ollama's `name:tag` form: `tiny` -> `tiny:latest`, `org/name` -> `org/name:latest`."""
    if not name:
        raise ValueError("a model name must not be empty")
    # A colon before the last slash is part of a host ("host:port/name"), never a tag.
    head, slash, tail = name.rpartition("/")
    if tail.endswith(":"):
        tail = tail[:-1]
    if ":" not in tail:
        tail += ":latest"
    return head + slash + tail


def strip_latest(name: str) -> str:
    return name.removesuffix(":latest")
