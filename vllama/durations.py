"""Ollama-style durations: a number is seconds, a string is Go's duration syntax.

`keep_alive` accepts both forms; a negative value means "forever", represented as `math.inf`.
"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class DurationError(ValueError):
    pass


def parse_duration(value: object) -> float:
    """Seconds for an Ollama duration; negative durations become `math.inf` (never expire)."""
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}: expected a number or a string like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_string(value.strip())
    else:
        raise DurationError(f"invalid duration {value!r}: expected a number or a string like '5m'")
    if math.isnan(seconds):
        raise DurationError(f"invalid duration {value!r}")
    return math.inf if seconds < 0 else seconds


def _parse_duration_string(text: str) -> float:
    sign = 1.0
    body = text
    if body and body[0] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if not body:
        raise DurationError(f"invalid duration {text!r}")
    try:  # a bare number in a string means seconds, as OLLAMA_KEEP_ALIVE=300 does
        return sign * float(body)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise DurationError(f"invalid duration {text!r}: expected e.g. '300', '5m', '1h30m', '-1'")
    return sign * total
