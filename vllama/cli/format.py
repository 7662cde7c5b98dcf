"""How the `vllama` commands print what the daemon answers, as the `ollama` CLI prints it:
sizes, times, the processor share, tables, `show`'s sections, `--verbose` statistics. Pure
functions, tested without a daemon."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from vllama.config.units import format_parameter_count


def human_bytes(size: int) -> str:
    """Ollama's sizes: decimal units, one decimal below 100 units unless whole ("1.8 MB",
    "4.7 GB", "1 KB", "999 KB", "10.5 MB")."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            value = size / scale
            if value >= 100 or value == math.trunc(value):
                return f"{math.trunc(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_duration(seconds: float) -> str:
    """An approximate length of time, as Ollama words it ("About a minute", "4 hours")."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def human_time(moment: datetime | None, now: datetime, zero: str = "Never") -> str:
    """ "2 minutes ago", "4 minutes from now", "Forever" (more than 20 years ahead)."""
    if moment is None:
        return zero
    delta = (now - moment).total_seconds()
    if int(int(delta / 3600) / 24 / 365) < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def until_text(expires: datetime | None, now: datetime) -> str:
    """`ollama ps`'s UNTIL column: "Stopping..." once the expiry has passed."""
    if expires is not None and expires < now:
        return "Stopping..."
    return human_time(expires, now)


def processor_text(size: int, size_vram: int) -> str:
    """`ollama ps`'s PROCESSOR column, from the bytes in GPU memory against the total."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu = math.floor((size - size_vram) / size * 100 + 0.5)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 time from the API (`Z` or an offset; nanoseconds allowed); None if absent or
    Go's zero time."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None if moment.year <= 1 else moment


def short_id(digest: object) -> str:
    text = digest if isinstance(digest, str) else ""
    return text.removeprefix("sha256:")[:12]


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], padding: int = 4) -> str:
    """Left-aligned columns separated by `padding` spaces, no borders: Ollama's tables."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    gap = " " * padding
    return "\n".join(
        gap.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def list_rows(models: Sequence[dict[str, Any]], now: datetime, prefix: str = "") -> list[list[str]]:
    rows = []
    for model in models:
        name = str(model.get("name") or model.get("model") or "")
        if prefix and not name.lower().startswith(prefix.lower()):
            continue
        rows.append(
            [
                name,
                short_id(model.get("digest")),
                human_bytes(int(model.get("size") or 0)),
                human_time(parse_time(model.get("modified_at")), now),
            ]
        )
    return rows


def ps_rows(models: Sequence[dict[str, Any]], now: datetime, prefix: str = "") -> list[list[str]]:
    rows = []
    for model in models:
        name = str(model.get("name") or model.get("model") or "")
        if prefix and not name.startswith(prefix):
            continue
        size = int(model.get("size") or 0)
        context = model.get("context_length")
        rows.append(
            [
                name,
                short_id(model.get("digest")),
                human_bytes(size),
                processor_text(size, int(model.get("size_vram") or 0)),
                str(context) if context else "",
                until_text(parse_time(model.get("expires_at")), now),
            ]
        )
    return rows


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _section(title: str, rows: Sequence[Sequence[str]]) -> str:
    """One of `ollama show`'s sections: a title, then rows indented by the table padding."""
    body = format_table([""] * len(rows[0]), rows).split("\n")[1:] if rows else []
    return "\n".join([f"  {title}", *body, ""])


def _head(text: str, count: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [["", line] for line in lines[:count]]
    if len(lines) > count:
        rows.append(["", "..."])
    return rows


def show_text(info: dict[str, Any], verbose: bool = False) -> str:
    """`ollama show`'s summary: Model, Capabilities, Parameters, (Metadata), System, License."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = str(model_info.get("general.architecture") or details.get("family") or "")
    parameters = str(details.get("parameter_size") or "")
    count = model_info.get("general.parameter_count")
    if not parameters and isinstance(count, int | float) and count > 0:
        parameters = format_parameter_count(int(count))
    rows = [["", "architecture", arch], ["", "parameters", parameters]]
    for label, key in (
        ("context length", "context_length"),
        ("embedding length", "embedding_length"),
    ):
        value = model_info.get(f"{arch}.{key}")
        if value is None:  # the family may be unknown: any architecture's key will do
            value = next((v for k, v in model_info.items() if k.endswith(f".{key}")), None)
        if value is not None:
            rows.append(["", label, _number(value)])
    rows.append(["", "quantization", str(details.get("quantization_level") or "")])
    sections = [_section("Model", rows)]
    capabilities = info.get("capabilities") or []
    if capabilities:
        sections.append(_section("Capabilities", [["", str(c)] for c in capabilities]))
    parameter_rows = []
    for line in str(info.get("parameters") or "").splitlines():
        fields = line.split(None, 1)
        if fields:
            parameter_rows.append(["", fields[0], fields[1] if len(fields) > 1 else ""])
    if parameter_rows:
        sections.append(_section("Parameters", parameter_rows))
    if verbose and model_info:
        metadata = [["", key, _metadata_value(model_info[key])] for key in sorted(model_info)]
        sections.append(_section("Metadata", metadata))
    for title, key in (("System", "system"), ("License", "license")):
        text = info.get(key)
        if isinstance(text, str) and text.strip():
            sections.append(_section(title, _head(text, 2)))
    return "\n".join(sections)


def _metadata_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:3])
        return f"[{shown} ...+{len(value) - 3} more]" if len(value) > 3 else f"[{shown}]"
    return _number(value)


def go_duration(ns: int) -> str:
    """A duration in nanoseconds written as Go's time.Duration prints it ("1.5s", "230.1ms")."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def decimal(value: int, digits: int) -> str:
        whole, fraction = divmod(value, 10**digits)
        text = f"{whole}.{fraction:0{digits}d}".rstrip("0").rstrip(".")
        return text

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{decimal(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{decimal(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = decimal(rest, 9)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def verbose_stats(final: dict[str, Any]) -> str:
    """`ollama run --verbose`'s statistics, from a response's last object (durations in ns)."""

    def number(key: str) -> int:
        value = final.get(key)
        return int(value) if isinstance(value, int | float) else 0

    lines = []
    rows: list[tuple[str, str, str]] = [
        ("total duration:", "total_duration", ""),
        ("load duration:", "load_duration", ""),
        ("prompt eval count:", "prompt_eval_count", " token(s)"),
        ("prompt eval duration:", "prompt_eval_duration", ""),
        ("prompt eval rate:", "prompt_eval", ""),
        ("eval count:", "eval_count", " token(s)"),
        ("eval duration:", "eval_duration", ""),
        ("eval rate:", "eval", ""),
    ]
    for label, key, unit in rows:
        if key in ("prompt_eval", "eval"):
            duration = number(f"{key}_duration")
            if duration > 0:
                rate = number(f"{key}_count") / (duration / 1e9)
                lines.append(f"{label:<22}{rate:.2f} tokens/s")
        elif key.endswith("_count"):
            if number(key) > 0:
                lines.append(f"{label:<22}{number(key)}{unit}")
        elif number(key) > 0:
            lines.append(f"{label:<22}{go_duration(number(key))}")
    return "\n".join(lines)
