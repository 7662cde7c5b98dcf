"""Byte sizes as operators and vLLM write them: 1073741824, "1GiB", "1G", "512MiB", "1.5 GB".

Binary units throughout (vLLM reads "1G" as 2**30 too): k/K = 2**10, m/M = 2**20, g/G = 2**30,
t/T = 2**40, with an optional "i" and "B".
"""

from __future__ import annotations

import re

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


def format_size(size: int) -> str:
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if size >= 1024**power:
            return f"{size / 1024**power:.1f} {unit}"
    return f"{size} B"
