"""A stand-in for the `ray` package, for the cluster check (vllama/engine/ray_cluster.py) where no
Ray cluster of the needed shape can be had on demand (GPUs on several nodes). Put this folder on
the check's PYTHONPATH; FAKE_RAY_CLUSTER is what the cluster reports (JSON: total, free, nodes),
FAKE_RAY_UNREACHABLE the message of the ConnectionError `init` raises instead, FAKE_RAY_MISSING
makes the import fail as it does where ray is not installed."""

from __future__ import annotations

import json
import os
from typing import Any

if os.environ.get("FAKE_RAY_MISSING"):
    raise ImportError("No module named 'ray'")


def _cluster() -> dict[str, Any]:
    return dict(json.loads(os.environ.get("FAKE_RAY_CLUSTER", "{}")))


def init(address: str | None = None, **_: Any) -> None:
    unreachable = os.environ.get("FAKE_RAY_UNREACHABLE")
    if unreachable:
        raise ConnectionError(unreachable)


def cluster_resources() -> dict[str, float]:
    return dict(_cluster().get("total", {}))


def available_resources() -> dict[str, float]:
    return dict(_cluster().get("free", {}))


def nodes() -> list[dict[str, Any]]:
    return [{"Alive": True, "NodeManagerAddress": ip} for ip in _cluster().get("nodes", [])]


def shutdown() -> None:
    return None
