"""What a model's worker took, as vLLM reported it, kept per model, arguments, environment and
GPU kind.

A share estimated before a model has run is a guess on the safe side (`sizing.py`); after a start,
vLLM has said what the weights took and how much KV cache the share left (`engine/vllm_report`).
The share less that KV cache is what the model needs besides its KV cache, whatever vLLM's
profile run, graph pool and workspaces came to: the next share is that plus the KV cache it
should hold. Kept in a small JSON file, replaced atomically, so a restart of vllama keeps it.
Policy (`learn`, `share_for`) is pure; `Footprints` is the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from vllama.engine.vllm_report import StartReport

log = structlog.get_logger("vllama.memory")

MiB = 1 << 20
FOOTPRINTS_FILE = ".vllama-footprints.json"  # in the models folder
# vLLM prints GiB with two decimals: each figure read back is within 5 MiB. Twice that, and
# the 150 MiB vLLM itself leaves when it suggests a KV size, on the safe side.
MARGIN = 160 * MiB


@dataclass(frozen=True)
class Footprint:
    """Per GPU: what vLLM took inside its share besides the KV cache (weights, workspaces, the
    profile run's peak, the graph pool), the KV cache and tokens it got, and the graph pool."""

    non_kv: int
    kv_bytes: int
    kv_tokens: int | None
    graphs: int | None


def learn(report: StartReport, utilization: float, cuda_total: int) -> Footprint | None:
    """A footprint from a start's report, told `utilization` of a GPU of `cuda_total` bytes;
    None when vLLM did not say enough (a fixed `--kv-cache-memory-bytes` still says)."""
    if report.kv_bytes is None:
        return None
    requested = math.ceil(cuda_total * utilization)
    return Footprint(requested - report.kv_bytes, report.kv_bytes, report.kv_tokens, report.graphs)


def share_for(footprint: Footprint, kv: int) -> int:
    """The share that leaves `kv` bytes of KV cache, by what the model took last time."""
    return footprint.non_kv + kv + MARGIN


# Variables of a model's `env` that cannot change what vLLM takes: credentials (a rotated token
# must not make the model's footprint unknown again) and logging. Everything else counts, unknown
# names included: allocator settings, attention backends, `VLLM_*` switches.
_SECRET = re.compile(r"(^|_)(TOKEN|KEY|KEY_ID|SECRET|PASSWORD)$")
_LOGGING = re.compile(r"(^|_)(LOG|LOGGING)(_|$)")
_SEPARATOR = "\x1f"
_FIELDS = 4  # model, arguments, environment, GPU kind


def memory_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of a model's configured environment that can change what its worker takes."""
    return {
        name: value
        for name, value in env.items()
        if not _SECRET.search(name.upper()) and not _LOGGING.search(name.upper())
    }


def key(model: str, args: Sequence[str], env: Mapping[str, str], gpu: str) -> str:
    """Footprints differ by model, by its vLLM arguments (batch sizes, eager, parallelism), by
    its environment (allocator, attention backend, vLLM's switches) and by GPU kind (vLLM's
    defaults and kernels follow it)."""
    settings = " ".join(f"{name}={value}" for name, value in sorted(memory_env(env).items()))
    # Arguments and environment as digests: the state file is readable by whoever reads the
    # models folder, and a model's arguments may carry a secret (`--api-key`, a token in a URL).
    return _SEPARATOR.join((model, _digest(" ".join(args)), _digest(settings), gpu))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Footprints:
    """The learned footprints, in memory and (with a path) on disk."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._known: dict[str, Footprint] = {}
        if path is not None:
            self._known = _read(path)

    def get(self, key: str) -> Footprint | None:
        return self._known.get(key)

    def put(self, key: str, footprint: Footprint) -> None:
        """Blocking but small: one JSON file of a few entries per model."""
        if self._known.get(key) == footprint:
            return
        self._known[key] = footprint
        if self._path is None:
            return
        try:
            _write(self._path, {k: asdict(v) for k, v in sorted(self._known.items())})
        except OSError as exc:  # a read-only state folder costs a re-estimate, nothing more
            log.warning("footprints not saved", path=str(self._path), error=str(exc))


def _read(path: Path) -> dict[str, Footprint]:
    try:
        document = json.loads(path.read_text())
        known = {k: Footprint(**v) for k, v in document.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("footprints unreadable; estimating again", path=str(path), error=str(exc))
        return {}
    # Keys of an older shape (before the environment counted) say nothing of the environment
    # they were measured under: dropped, so the file sheds them at its next write. Such a model
    # is estimated once more, then learned again.
    return {k: v for k, v in known.items() if k.count(_SEPARATOR) == _FIELDS - 1}


def _write(path: Path, document: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
