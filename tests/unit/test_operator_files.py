"""The operator files in configs/ parse, and every metric they query exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METRICS_SOURCE = Path(__file__).resolve().parents[2] / "vllama" / "ops" / "metrics.py"
# vLLM's own metrics that the files use (merged into vllama's scrape).
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
}


def known_metrics() -> set[str]:
    source = METRICS_SOURCE.read_text()
    names = set(re.findall(r'"(vllama_[a-z_]+)"', source))
    counters = set(re.findall(r'Counter\(\s*"(vllama_[a-z_]+)"', source))
    histograms = set(re.findall(r'Histogram\(\s*"(vllama_[a-z_]+)"', source))
    names |= {f"{name}_total" for name in counters}
    names |= {f"{name}_{suffix}" for name in histograms for suffix in ("bucket", "sum", "count")}
    return names | VLLM_METRICS | {"up"}


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
