"""What vLLM 0.32 says about its memory in its output, read into numbers: pure.

Its start-up log (`v1/worker/gpu_worker.py`, `gpu_model_runner.py`, `v1/core/kv_cache_utils.py`)
says what the weights took, the KV cache it got (bytes and tokens) and the CUDA-graph pool; its
refusals say what was missing. vLLM prints GiB with two decimals (`format_gib`), so a figure read
back is within 0.005 GiB: a shortfall is rounded up by that much.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

GiB = 1 << 30
_ROUNDING = GiB // 100  # two decimals of GiB, either way, on both figures of a difference
# A refusal that names no figure grows the share by this much.
GROW_STEP = 2 * GiB

# vLLM's refusals of a start for memory (its KV-cache and free-memory checks at start-up).
MEMORY_REFUSALS = (
    "No available memory for the cache blocks",
    "To serve at least one request",
    "Cannot auto-fit",
    "Free memory on device",
)
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_KV_SHORT = re.compile(
    rf"\({_NUMBER} GiB KV cache is needed, which is larger than the available KV cache "
    rf"memory \({_NUMBER} GiB\)"
)
_FREE_SHORT = re.compile(rf"Free memory on device \S+ \({_NUMBER}/{_NUMBER} GiB\)")
_WEIGHTS = re.compile(rf"Model loading took {_NUMBER} GiB memory")
_KV_BYTES = re.compile(rf"Available KV cache memory: {_NUMBER} GiB")
_KV_TOKENS = re.compile(r"GPU KV cache size: ([0-9,]+) tokens")
_GRAPHS = re.compile(rf"Estimated CUDA graph memory: {_NUMBER} GiB")
_GRAPHS_TAKEN = re.compile(rf"Graph capturing finished in [0-9]+ secs, took {_NUMBER} GiB")


@dataclass(frozen=True)
class Refusal:
    """vLLM refused its share. `missing`: bytes the share lacked (0 when the share was right
    but the GPU was not as free as measured: placing it again is the remedy)."""

    missing: int
    line: str  # vLLM's own words


def refusal(lines: Iterable[str]) -> Refusal | None:
    """The memory refusal in a failed start's output, if it was one."""
    found = None
    for line in lines:
        if any(marker in line for marker in MEMORY_REFUSALS):
            found = line.strip()
    if found is None:
        return None
    short = _KV_SHORT.search(found)
    if short is not None:
        needed, available = (_gib(text) for text in short.groups())
        return Refusal(needed - available + 2 * _ROUNDING, found)
    if _FREE_SHORT.search(found) is not None:
        return Refusal(0, found)
    return Refusal(GROW_STEP, found)


@dataclass(frozen=True)
class StartReport:
    """What a started worker said about its memory (per GPU); None where it did not say."""

    weights: int | None = None
    kv_bytes: int | None = None
    kv_tokens: int | None = None
    graphs: int | None = None

    @property
    def complete(self) -> bool:
        return self.weights is not None and self.kv_bytes is not None


def is_report_line(line: str) -> bool:
    """Whether a line of a starting worker's output is one `start_report` reads."""
    return any(
        pattern.search(line) is not None
        for pattern in (_WEIGHTS, _KV_BYTES, _KV_TOKENS, _GRAPHS, _GRAPHS_TAKEN)
    )


def start_report(lines: Iterable[str]) -> StartReport:
    weights = kv_bytes = kv_tokens = graphs = None
    for line in lines:
        if (match := _WEIGHTS.search(line)) is not None:
            weights = _gib(match.group(1))
        elif (match := _KV_BYTES.search(line)) is not None:
            kv_bytes = _gib(match.group(1))
        elif (match := _KV_TOKENS.search(line)) is not None:
            kv_tokens = int(match.group(1).replace(",", ""))
        elif (match := _GRAPHS.search(line)) is not None:
            graphs = _gib(match.group(1))
        elif (match := _GRAPHS_TAKEN.search(line)) is not None and graphs is None:
            graphs = _gib(match.group(1))
    return StartReport(weights, kv_bytes, kv_tokens, graphs)


def _gib(text: str) -> int:
    return math.ceil(float(text) * GiB)
