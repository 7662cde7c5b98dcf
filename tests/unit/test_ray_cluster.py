"""Multi-node models on Ray: the pure parts (what the cluster check concludes, the worker's argv
and environment, the local share), and the check's process against a stand-in `ray`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vllama.catalog.facts import ModelFacts
from vllama.config.settings import ModelSpec
from vllama.engine import ray_cluster
from vllama.engine.argv import build_argv, build_env
from vllama.scheduling.sizing import estimate

FAKE_RAY = str(Path(__file__).resolve().parents[1] / "fake_ray")
GiB = 1 << 30


def test_a_cluster_with_the_devices_free_fits() -> None:
    answer = {"total": {"GPU": 8, "CPU": 64}, "free": {"GPU": 4}, "nodes": ["10.0.0.2", "10.0.0.3"]}
    cluster = ray_cluster.judge("head:6379", 4, answer)
    assert (cluster.device, cluster.free, cluster.nodes) == ("GPU", 4.0, ("10.0.0.2", "10.0.0.3"))


def test_a_small_cluster_says_what_it_has_and_what_is_needed() -> None:
    answer = {"total": {"GPU": 4}, "free": {"GPU": 2}, "nodes": ["a", "b"]}
    with pytest.raises(
        ray_cluster.ClusterUnfit, match=r"has 2 GPU free of 4 on 2 node\(s\); the model needs 4"
    ):
        ray_cluster.judge("head:6379", 4, answer)


def test_a_cpu_cluster_counts_cpus_and_an_error_is_passed_on() -> None:
    answer = {"total": {"CPU": 2}, "free": {"CPU": 2}, "nodes": ["a", "b"]}
    assert ray_cluster.judge("h", 2, answer).device == "CPU"
    with pytest.raises(ray_cluster.ClusterUnfit, match="is not usable: ConnectionError: nobody"):
        ray_cluster.judge("h", 2, {"error": "ConnectionError: nobody"})


def test_a_ray_model_runs_vllms_ray_backend_against_its_cluster() -> None:
    spec = ModelSpec(model="org/big", ray_address="10.0.0.2:6379", args=("-tp", "4"))
    argv = build_argv(["vllm"], "big", spec, "127.0.0.1", 24000)
    assert argv[-2:] == ["--distributed-executor-backend", "ray"]
    assert build_env({}, spec)["RAY_ADDRESS"] == "10.0.0.2:6379"
    own = ModelSpec(model="org/big", ray_address="x:1", args=("--distributed-executor-backend=mp",))
    assert "ray" not in build_argv(["vllm"], "big", own, "127.0.0.1", 24000)
    from_env = ModelSpec(model="org/big", env={"RAY_ADDRESS": "y:1"})
    assert from_env.ray == "y:1" and "ray" in build_argv(["vllm"], "big", from_env, "h", 1)
    plain = ModelSpec(model="org/big", args=("-tp", "4"))
    assert "--distributed-executor-backend" not in build_argv(["vllm"], "big", plain, "h", 1)


def test_only_the_local_share_counts_on_this_host() -> None:
    facts = ModelFacts(weight_bytes=16 * GiB)
    spread = estimate(ModelSpec(model="m", args=("-tp", "2", "-pp", "2")), facts, "gpu", GiB)
    on_ray = estimate(
        ModelSpec(model="m", args=("-tp", "2", "-pp", "2"), ray_address="h:1"), facts, "gpu", GiB
    )
    assert (spread.devices, on_ray.devices) == (4, 1)
    assert on_ray.share == spread.share  # one worker's part of the weights, as on any node


async def test_the_check_runs_ray_in_a_child_process() -> None:
    cluster = {"total": {"CPU": 2}, "free": {"CPU": 2}, "nodes": ["127.0.0.1", "127.0.0.2"]}
    env = {"PYTHONPATH": FAKE_RAY, "FAKE_RAY_CLUSTER": json.dumps(cluster)}
    found = await ray_cluster.check("127.0.0.1:26379", 2, sys.executable, env)
    assert found.nodes == ("127.0.0.1", "127.0.0.2")
    env["FAKE_RAY_UNREACHABLE"] = "Could not find any running Ray instance"
    with pytest.raises(ray_cluster.ClusterUnfit, match="Could not find any running Ray instance"):
        await ray_cluster.check("127.0.0.1:26379", 2, sys.executable, env)
    env["FAKE_RAY_MISSING"] = "1"
    with pytest.raises(ray_cluster.ClusterUnfit, match="the ray package is not installed for"):
        await ray_cluster.check("127.0.0.1:26379", 2, sys.executable, env)
