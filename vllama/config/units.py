"""Units in vllama's own settings and in Ollama's requests: durations and byte sizes.

Durations are Ollama's: a number is seconds, a string is Go's duration syntax; `keep_alive` accepts
both forms, and a negative value means "forever", represented as `math.inf`.

Sizes ("1073741824", "1GiB", "4.5G", "512MiB", "1.5 GB") use binary units whatever the case
(k = 2**10 ... t = 2**40), fractions allowed: operators write memory budgets, and "4g" meaning
4 GiB is the least surprising reading. (vLLM's own flags read lowercase as decimal;
`vllama.config.vllm_args` follows vLLM's rules for those.)
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


FOREVER_AFTER = 1e10  # seconds


class DurationError(ValueError):
    pass


def parse_duration(value: object) -> float:
    """Seconds for an Ollama duration; negative durations become `math.inf` (never expire)."""
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}: expected a number or a string like '5m'")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = _parse_duration_string(value.strip())
        else:
            raise DurationError(
                f"invalid duration {value!r}: expected a number or a string like '5m'"
            )
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    if math.isnan(seconds):
        raise DurationError(f"invalid duration {value!r}")
    # Negative means forever, as in Ollama; so does anything past ~317 years, which no timer,
    # date or deadline downstream could represent.
    return math.inf if seconds < 0 or seconds > FOREVER_AFTER else seconds


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


# -- sizes --------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*$")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class SizeError(ValueError):
    pass


def parse_size(value: object) -> int:
    """Bytes for an int or a size string; raises SizeError for anything else."""
    if isinstance(value, bool):
        raise SizeError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"invalid size {value!r}: must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            number, unit = float(match.group(1)), match.group(2).lower()
            return int(number * (1024 ** _POWERS[unit]))
    raise SizeError(f"invalid size {value!r}: expected bytes or e.g. '20GiB', '512MiB'")


def format_parameter_count(count: int) -> str:
    """Ollama style: "8.0B", "135M", "1.2K"; one decimal below 100 units, none above."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)
