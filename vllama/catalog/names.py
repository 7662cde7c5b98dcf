"""Model names as clients write them: Ollama's `name:tag`, Hugging Face's `org/name`."""

from __future__ import annotations

import re

# Ollama's rules, applied where a name is stored or becomes a path:
# `[host/][namespace/]model[:tag]`, each part from a small character set and bounded; never `..`,
# a leading `/` or a NUL. Patterns end in `\Z`, not `$`: `$` also matches before a trailing
# newline, and "evil\n" would pass.
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}\Z")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(:[0-9]{1,5})?\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}\Z")
MAX_NAME = 350
# A Hugging Face repo id, `org/name`: it becomes a folder under the models folder when pulled.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class InvalidName(ValueError):
    """A model name that Ollama would refuse (and that could escape a folder)."""


def check_name(name: str) -> str:
    """`name` if it is a valid model name; `InvalidName` (a 400) otherwise."""
    if not name or len(name) > MAX_NAME:
        raise InvalidName(f"invalid model name: must be 1 to {MAX_NAME} characters")
    head, _, tail = name.rpartition("/")
    model, colon, tag = tail.partition(":")
    parts = head.split("/") if "/" in name else []
    ok = (
        len(parts) <= 2
        and all(_PART.match(part) for part in parts[1:])
        and (not parts or _HOST.match(parts[0]))
        and bool(_PART.match(model))
        and (not colon or bool(_TAG.match(tag)))
        and ".." not in name
    )
    if not ok:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidName(
            f"invalid model name {shown!r}: expected [host/][namespace/]name[:tag] of letters, "
            "digits, '_', '.' and '-'"
        )
    return name


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


def is_repo_id(text: str) -> bool:
    """Whether `text` is a Hugging Face repo id (`org/name`) that is safe as a relative path."""
    return bool(_REPO_ID.match(text)) and ".." not in text
