"""The JSON log line's timestamp and encoding read as structlog's own TimeStamper and
JSONRenderer would write them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from vllama.ops import logsetup


class Custom:
    def __structlog__(self) -> str:
        return "custom"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 12, 7, 12, 0, 5, 123456, tzinfo=UTC),
        datetime(2026, 12, 7, 12, 0, 6, 0, tzinfo=UTC),  # isoformat leaves out a zero fraction
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ],
)
def test_timestamps_read_as_isoformat_in_utc(
    moment: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamper = logsetup._UtcStamper()
    stamper({}, "info", {})  # a second already formatted, then another one
    ns = (int(moment.replace(microsecond=0).timestamp()) * 1_000_000 + moment.microsecond) * 1000
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    for _ in range(2):  # formatted, then from memory
        assert stamper({}, "info", {})["timestamp"] == moment.isoformat().replace("+00:00", "Z")


def test_lines_encode_as_structlogs_json_renderer() -> None:
    event = {
        "event": "request",
        "path": '/v1/ch\u00e4t\n"x"',
        "status": 200,
        "seconds": 0.0123,
        "model": None,
        "where": Path("/tmp/x"),
        "custom": Custom(),
        "nested": {"a": [1, 2.5, True]},
    }
    ours = structlog.processors.JSONRenderer(logsetup._encode)(None, "info", dict(event))
    theirs = structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert ours == theirs
    assert json.loads(ours)["custom"] == "custom"
