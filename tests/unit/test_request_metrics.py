"""Request metrics through the cached label children read as `labels()` calls would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from vllama.ops.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # when each series began: differs by a moment
        and s.name.startswith(
            ("vllama_request", "vllama_time_to_first", "vllama_prompt", "vllama_generated")
        )
    }


def by_labels(metrics: Metrics) -> None:
    for model, endpoint, status, seconds, ttft in CALLS:
        metrics.requests.labels(model, endpoint, status).inc()
        metrics.request_seconds.labels(model, endpoint).observe(seconds)
        if ttft is not None:
            metrics.ttft_seconds.labels(model, endpoint).observe(ttft)
    metrics.prompt_tokens.labels("a").inc(3)
    metrics.generated_tokens.labels("a").inc(5)
    metrics.prompt_tokens.labels("a").inc(4)
    metrics.generated_tokens.labels("a").inc(6)


CALLS = [
    ("a", "/v1/completions", "200", 0.5, 0.1),
    ("a", "/v1/completions", "200", 0.7, 0.2),
    ("a", "/v1/completions", "499", 0.1, None),
    ("b", "/api/tags", "200", 0.01, None),  # never streamed: no time-to-first-byte series
    ("", "unmatched", "404", 0.001, None),
]


def test_count_request_and_usage_expose_what_labels_calls_would() -> None:
    cached, plain = Metrics(), Metrics()
    for model, endpoint, status, seconds, ttft in CALLS:
        cached.count_request(model, endpoint, status, seconds, ttft)
    cached.count_usage("a", 3, 5)
    cached.count_usage("a", 4, 6)
    by_labels(plain)
    got = samples(cached)
    assert got == samples(plain)
    assert (
        got[
            (
                "vllama_requests_total",
                (("endpoint", "/v1/completions"), ("model", "a"), ("status", "200")),
            )
        ]
        == 2
    )
    assert got[("vllama_generated_tokens_total", (("model", "a"),))] == 11
    assert not any(
        name.startswith("vllama_time_to_first") and ("model", "b") in labels for name, labels in got
    )
