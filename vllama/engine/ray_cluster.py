"""The Ray cluster a multi-node model runs on (`ray_address`): checked before its worker starts.

vLLM runs such a model with `--distributed-executor-backend ray`: its API server (here) is the
driver, and Ray places the tensor/pipeline-parallel workers on the cluster's nodes. vllama does not
run the cluster; it checks, with the engine's own Python (where `ray` must be installed), that the
cluster answers and has the devices the model needs free, so a missing or small cluster is a clear
load error instead of vLLM waiting for a placement group that never comes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass

# Runs in a child process: `ray.init` starts threads and holds sockets the daemon should not.
PROBE = """
import json, sys
try:
    import ray
except ImportError as exc:
    print(json.dumps({"error": f"the ray package is not installed for {sys.executable}: {exc}"}))
    sys.exit(0)
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))
    answer = {"total": ray.cluster_resources(), "free": ray.available_resources(), "nodes": nodes}
    ray.shutdown()
except Exception as exc:
    answer = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(answer))
"""
PROBE_TIMEOUT = 60.0
# Unset, `ray.init` to an address where no cluster answers retries for ~14 minutes (20 attempts of
# ~41 s, measured with ray 2.60); these make it give up with a ConnectionError in ~20 s.
RAY_CONNECT_LIMITS = {
    "RAY_gcs_server_port_wait_time_s": "1",
    "RAY_py_gcs_connect_timeout_s": "3",
    "RAY_gcs_rpc_server_connect_timeout_s": "1",
}


class ClusterUnfit(Exception):
    """The cluster is missing, unreachable or too small; the message says which."""


@dataclass(frozen=True)
class Cluster:
    address: str
    nodes: tuple[str, ...]
    device: str  # the Ray resource the model's workers take: "GPU", or "CPU" on a CPU cluster
    free: float
    total: float


async def check(address: str, need: int, python: str, env: Mapping[str, str]) -> Cluster:
    """The cluster at `address`, if `need` of its devices are free; `ClusterUnfit` otherwise."""
    process = await asyncio.create_subprocess_exec(
        python,
        "-c",
        PROBE,
        address,
        env={**RAY_CONNECT_LIMITS, **env},  # the operator's own settings win
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT)
    except TimeoutError:
        raise ClusterUnfit(
            f"the Ray cluster at {address} did not answer in {PROBE_TIMEOUT:g}s"
        ) from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return judge(address, need, _answer(out))


def judge(address: str, need: int, answer: Mapping[str, object]) -> Cluster:
    """Pure: the probe's answer against the model's need."""
    if "error" in answer:
        raise ClusterUnfit(f"the Ray cluster at {address} is not usable: {answer['error']}")
    total, free = answer.get("total"), answer.get("free")
    nodes = answer.get("nodes")
    if not isinstance(total, dict) or not isinstance(free, dict) or not isinstance(nodes, list):
        raise ClusterUnfit(f"the Ray cluster at {address} answered something unexpected")
    device = "GPU" if total.get("GPU") else "CPU"
    available, whole = float(free.get(device, 0)), float(total.get(device, 0))
    if available < need:
        raise ClusterUnfit(
            f"the Ray cluster at {address} has {available:g} {device} free of {whole:g} on "
            f"{len(nodes)} node(s); the model needs {need} (tensor x pipeline x data parallel)"
        )
    return Cluster(address, tuple(str(n) for n in nodes), device, available, whole)


def _answer(out: bytes) -> dict[str, object]:
    for line in reversed(out.decode(errors="replace").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {"error": "the check printed no answer"}
