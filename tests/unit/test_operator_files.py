"""The operator files in configs/ parse, and every metric they query is one that vllama's
`/metrics` actually serves."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import aiohttp
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vllama.engine.states import WorkerState
from vllama.ops.metrics import Metrics
from vllama.remote.peers import PeerView
from vllama.scheduling.devices import Devices
from vllama.scheduling.events import LoadFailed, ModelLoaded, ModelUnloaded, ModelWoken
from vllama.scheduling.status import ModelStatus, SchedulerStatus

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# vLLM's own metrics that the files use (merged into vllama's scrape from each worker's own).
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
}


def exposed_metrics() -> set[str]:
    """The series names in vllama's exposition, rendered by prometheus_client from vllama's own
    registry with every family given a sample: counters as NAME_total, histograms as
    NAME_bucket/_sum/_count, gauges as named."""
    metrics = Metrics()
    model = ModelStatus(
        name="m",
        state=WorkerState.READY,
        reason="",
        devices=("cpu",),
        footprint=1,
        in_flight=0,
        waiting=0,
        keep_alive=300.0,
        expires_at=None,
        context_length=None,
        pid=os.getpid(),  # a process tree to measure
        url="http://127.0.0.1:9",  # no worker metrics to merge: a closed port
    )
    status = SchedulerStatus(models=(model,), queued=0)
    peer = PeerView("gpu2", "http://10.0.0.12:11434", True, "ollama", ("m2",), (), None, 0.0)
    metrics.attach(lambda: status, Devices(use_gpus=False), lambda: [peer])

    async def sample() -> None:
        async with aiohttp.ClientSession() as http:
            await metrics.sample(http)

    asyncio.run(sample())
    # What the scheduler's events and the API middleware (vllama/api/observe.py) record.
    metrics.listen(ModelLoaded("m", 1.0, restarted_after="exited"))
    metrics.listen(ModelWoken("m", 0.4))
    metrics.listen(LoadFailed("m"))
    metrics.listen(ModelUnloaded("m", "memory"))
    metrics.count_usage("m", 3, 5)
    metrics.requests.labels("m", "/api/chat", "200").inc()
    metrics.request_seconds.labels("m", "/api/chat").observe(0.5)
    metrics.ttft_seconds.labels("m", "/api/chat").observe(0.1)
    text = generate_latest(metrics.registry).decode()
    families = list(text_string_to_metric_families(text))
    unsampled = [family.name for family in families if not family.samples]
    assert not unsampled, f"give these a sample above, so their series are checked: {unsampled}"
    return {sample.name for family in families for sample in family.samples}


def known_metrics() -> set[str]:
    return exposed_metrics() | VLLM_METRICS | {"up"}


def test_exposed_names_are_the_series_names_not_the_base_names() -> None:
    names = exposed_metrics()
    assert {"vllama_requests_total", "vllama_model_state"} <= names
    assert {f"vllama_request_duration_seconds_{end}" for end in ("bucket", "sum", "count")} <= names
    assert not {"vllama_requests", "vllama_request_duration_seconds"} & names


def used_metrics(expressions: list[str]) -> set[str]:
    found = set()
    for expr in expressions:
        found |= set(re.findall(r"\b(vllama_[a-z_]+|vllm:[a-z_:]+|up)\b", expr))
    return found


def test_prometheus_files_parse_and_query_known_metrics() -> None:
    scrape = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    rules = yaml.safe_load((CONFIGS / "vllama-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    unknown = used_metrics(exprs) - known_metrics()
    assert not unknown, unknown


def test_grafana_dashboard_parses_and_queries_known_metrics() -> None:
    dashboard = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) > 10
    unknown = used_metrics(exprs) - known_metrics()
    assert not unknown, unknown
