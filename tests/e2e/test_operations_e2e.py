"""Operations on real workers: metrics after real traffic, the workers' own vLLM metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.component.fakes import eventually_blocking
from tests.daemon import Daemon

pytestmark = pytest.mark.e2e


def metric_samples(daemon: Daemon) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(daemon.url + "/metrics", timeout=10).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_metrics_after_real_traffic(vllama_daemon: Daemon) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    response = httpx.post(vllama_daemon.url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200
    assert response.headers["X-Request-Id"]
    samples = metric_samples(vllama_daemon)
    requests = [
        value
        for name, labels, value in samples
        if name == "vllama_requests_total"
        and labels == {"model": "tiny", "endpoint": "/v1/chat/completions", "status": "200"}
    ]
    assert requests and requests[0] >= 1
    assert any(
        name == "vllama_generated_tokens_total" and labels["model"] == "tiny" and value >= 4
        for name, labels, value in samples
    )
    assert any(
        name == "vllama_model_state" and labels == {"model": "tiny", "state": "ready"} and value
        for name, labels, value in samples
    )

    # vLLM's own metrics arrive through the same scrape within one sampling period (10 s).
    def with_vllms() -> set[tuple[str, str | None]] | None:
        """A scrape's (metric, model) pairs, once vLLM's own for tiny are among them."""
        found = {
            (name, labels.get("model_name")) for name, labels, _ in metric_samples(vllama_daemon)
        }
        return found if ("vllm:num_requests_running", "tiny") in found else None

    names = eventually_blocking(with_vllms, within=30, what="vLLM's metrics for tiny", every=1)
    assert any(name.startswith("vllm:") and model == "tiny" for name, model in names)
