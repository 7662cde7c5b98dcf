"""Ollama library names (`qwen3:8b`, `llama3.1:8b-instruct-q4_K_M`) -> vLLM-ready Hub repos.

The table is data (`library.toml` in this package, extended or overridden by `library.toml` in the
models folder); the rules here are pure: a name's tag is a size (`8b`, or the table's default for
`latest`), optionally `-instruct`/`-it`, optionally a quantization. Ollama's quantizations map to
what vLLM serves on GPUs: `q4_*` to the int4 repo (AWQ or GPTQ), `q8_0` to int8, `fp8` to FP8,
`fp16`/`bf16` to the original weights. GGUF-only ones (`q5_K_M`, `q6_K`, ...) and precisions a
size has no repo for are refused with the nearest tag that exists (docs/MODELS.md).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vllama.catalog.names import is_repo_id

PRECISIONS = ("bf16", "fp8", "int8", "int4")
# Bits per weight, to find the nearest precision (GGUF-only quantizations are `q<bits>`).
_BITS = {"bf16": 16, "fp8": 8, "int8": 8, "int4": 4, "q2": 2, "q3": 3, "q5": 5, "q6": 6}
# How a precision is written in a tag (the first is what a suggestion shows).
_TAG_OF = {"bf16": "", "fp8": "fp8", "int8": "q8_0", "int4": "q4_K_M"}
# Ollama's quantization tags (lowercased) -> a precision, or the bits of a GGUF-only one.
_QUANT: dict[str, str] = {
    "fp16": "bf16",
    "bf16": "bf16",
    "f16": "bf16",
    "fp8": "fp8",
    "q8_0": "int8",
    "int8": "int8",
    "q4_0": "int4",
    "q4_1": "int4",
    "q4_k_m": "int4",
    "q4_k_s": "int4",
    "int4": "int4",
    "awq": "int4",
    "qat": "int4",  # gemma3's quantization-aware `-it-qat` tags are 4-bit
}
_GGUF_ONLY = re.compile(r"^i?q([2356])(_[0-9a-z_]+)?\Z")  # q2_K, q3_K_M, q5_0, q6_K, iq3_xxs ...
_VARIANT = {"instruct", "it", "chat"}  # Ollama's default is the instruct model anyway
_HOSTS = ("registry.ollama.ai/", "ollama.com/")
LIBRARY_FILE = "library.toml"


class LibraryError(ValueError):
    """A library name with a tag that has no vLLM-ready repo (a 400 naming the nearest)."""


@dataclass(frozen=True)
class Entry:
    name: str
    default: str
    sizes: dict[str, dict[str, str]]  # size tag -> precision -> repo
    aliases: dict[str, str]  # other tag -> size tag
    args: tuple[str, ...] = ()  # vLLM arguments every repo of it needs (--trust-remote-code)


@dataclass(frozen=True)
class Match:
    """What a library name means: `repo` at `precision`, pulled as `name` (`qwen3:8b`)."""

    name: str
    repo: str
    size: str
    precision: str
    args: tuple[str, ...] = ()  # its entry's vLLM arguments


Library = dict[str, Entry]


def parse(document: dict[str, Any], source: str) -> Library:
    """A library.toml document -> entries; `ValueError` naming `source` when malformed."""
    library: Library = {}
    for name, table in document.items():
        where = f"{source}: [{name}]"
        if not isinstance(table, dict) or not isinstance(table.get("sizes"), dict):
            raise ValueError(f"{where}: needs a sizes table")
        sizes: dict[str, dict[str, str]] = {}
        for size, repos in table["sizes"].items():
            if not isinstance(repos, dict) or not isinstance(repos.get("bf16"), str):
                raise ValueError(f'{where}: sizes.{size} needs bf16 = "org/name"')
            unknown = set(repos) - set(PRECISIONS)
            if unknown:
                raise ValueError(f"{where}: sizes.{size}: unknown precision {sorted(unknown)}")
            bad = [repo for repo in repos.values() if not is_repo_id(str(repo))]
            if bad:  # a pull puts it under the models folder: nothing else may stand there
                raise ValueError(f"{where}: sizes.{size}: not a repo id (org/name): {bad}")
            sizes[size.lower()] = {str(k): str(v) for k, v in repos.items()}
        default = str(table.get("default", next(iter(sizes), ""))).lower()
        aliases = {str(k).lower(): str(v).lower() for k, v in table.get("aliases", {}).items()}
        if default not in sizes or any(v not in sizes for v in aliases.values()):
            raise ValueError(f"{where}: default and aliases must name sizes")
        args = table.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{where}: args must be a list of strings")
        library[name.lower()] = Entry(name.lower(), default, sizes, aliases, tuple(args))
    return library


def builtin() -> Library:
    text = resources.files("vllama.catalog").joinpath(LIBRARY_FILE).read_text(encoding="utf-8")
    return parse(tomllib.loads(text), f"vllama/catalog/{LIBRARY_FILE}")


def load(models_dir: Path) -> Library:
    """Blocking: the built-in table, with the models folder's library.toml over it."""
    library = builtin()
    extra = models_dir / LIBRARY_FILE
    if extra.is_file():
        with extra.open("rb") as handle:
            library |= parse(tomllib.load(handle), str(extra))
    return library


def args_by_repo(library: Library) -> dict[str, tuple[str, ...]]:
    """Repo -> the vLLM arguments its library entry says it needs (only those that need any)."""
    return {
        repo: entry.args
        for entry in library.values()
        if entry.args
        for repos in entry.sizes.values()
        for repo in repos.values()
    }


def split(requested: str) -> tuple[str, str]:
    """`library/qwen3:8b` -> (`qwen3`, `8b`); the tag is "" when absent."""
    name = requested
    for host in _HOSTS:
        name = name.removeprefix(host)
    name = name.removeprefix("library/")
    base, _, tag = name.partition(":")
    return base.lower(), "" if tag == "latest" else tag


def lookup(requested: str, library: Library) -> Match | None:
    """The repo a library name means; None for a name not in the library (an `org/name` repo,
    a local model); `LibraryError` for a library name whose tag cannot be served."""
    if "/" in requested.removeprefix("library/") and not requested.startswith(_HOSTS):
        return None
    base, tag = split(requested)
    entry = library.get(base)
    if entry is None:
        return None
    size, precision = _parse_tag(entry, tag.lower())
    repos = entry.sizes[size]
    if precision not in repos:
        raise LibraryError(
            f"{base}:{tag} has no vLLM-ready repo ({_why(tag, precision)}); "
            f"the nearest is {nearest(entry, size, precision)}"
        )
    pulled_tag = tag or "latest"
    return Match(f"{base}:{pulled_tag}", repos[precision], size, precision, entry.args)


def nearest(entry: Entry, size: str, precision: str) -> str:
    """The closest tag that exists for `size`: the fewest bits away, more bits on a tie."""
    repos = entry.sizes[size]
    bits = _BITS.get(precision, 16)
    best = min(repos, key=lambda p: (abs(_BITS[p] - bits), -_BITS[p]))
    suffix = f"-{_TAG_OF[best]}" if _TAG_OF[best] else ""
    return f"{entry.name}:{size}{suffix} ({repos[best]})"


def tags(entry: Entry) -> list[str]:
    """Every tag a size and precision of `entry` is pulled by, default first (for the docs)."""
    order = [entry.default, *(s for s in entry.sizes if s != entry.default)]
    return [
        f"{size}-{_TAG_OF[p]}" if _TAG_OF[p] else size for size in order for p in entry.sizes[size]
    ]


def _parse_tag(entry: Entry, tag: str) -> tuple[str, str]:
    """A tag -> (size, precision); `LibraryError` listing the sizes for one not understood."""
    if not tag:
        return entry.default, "bf16"
    parts = tag.split("-")
    size = entry.default
    for end in range(len(parts), 0, -1):  # the longest leading size or alias (`30b-a3b`)
        head = "-".join(parts[:end])
        if head in entry.sizes or head in entry.aliases:
            size, parts = entry.aliases.get(head, head), parts[end:]
            break
    parts = [p for p in parts if p not in _VARIANT]
    if not parts:
        return size, "bf16"
    if len(parts) == 1:
        precision = quantization(parts[0])
        if precision:
            return size, precision
    raise LibraryError(
        f"{entry.name}:{tag}: unknown tag; {entry.name} has sizes {', '.join(entry.sizes)} "
        "(with -fp8, -q8_0 or -q4_K_M where a repo exists; see docs/MODELS.md)"
    )


def quantization(tag: str) -> str | None:
    """What an Ollama quantization tag (`q4_K_M`, `Q8_0`, `fp8`) means: a precision, or
    `q<bits>` for a GGUF-only one; None for a tag that is not one."""
    quant = tag.lower()
    return _QUANT.get(quant) or _gguf_only(quant)


def _gguf_only(quant: str) -> str | None:
    """A GGUF-only quantization, as `q<bits>` (no precision serves it), else None."""
    match = _GGUF_ONLY.match(quant)
    return f"q{match.group(1)}" if match else None


def _why(tag: str, precision: str) -> str:
    if precision.startswith("q"):
        return f"{tag.rsplit('-', 1)[-1]} is a GGUF quantization, which vLLM does not serve"
    return f"no {precision} repo for this size"
