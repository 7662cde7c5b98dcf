"""Byte sizes in vllama's own settings: 1073741824, "1GiB", "4.5G", "512MiB", "1.5 GB".

Binary units whatever the case (k = 2**10 ... t = 2**40), fractions allowed: operators write
memory budgets, and "4g" meaning 4 GiB is the least surprising reading. (vLLM's own flags read
lowercase as decimal; `placement.kv_cache_bytes_from_args` follows vLLM's rules for those.)
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
