"""structlog configuration: JSON lines off a terminal (journald), readable console output on one."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(_encode) if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _UtcStamper(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library (aiohttp's server: a request it could not
    # parse): their warnings and errors become events like vllama's own, one line each.
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(logging.WARNING)


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger(record.name)
        fields: dict[str, object] = {}
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            # A client's malformed request (bad header, line too long, ...): its reason, not
            # the parser's traceback.
            fields["error"] = " ".join(str(error).split())
        elif record.exc_info:
            fields["exc_info"] = record.exc_info
        level = record.levelname.lower() if record.levelno < logging.CRITICAL else "critical"
        getattr(log, level, log.error)(record.getMessage(), **fields)


def _fallback(value: object) -> object:
    """What JSON cannot hold as it is: its `__structlog__()` if it has one, else its repr (as
    structlog's own fallback)."""
    custom = getattr(value, "__structlog__", None)
    return custom() if callable(custom) else repr(value)


# One encoder for every line: `json.dumps` with a `default` builds a new JSONEncoder per call,
# and the access log writes a line per request.
_ENCODER = json.JSONEncoder(default=_fallback)


def _encode(event: Any, **_: Any) -> str:
    return _ENCODER.encode(event)


class _UtcStamper:
    """`TimeStamper(fmt="iso", utc=True)`'s text (2026-01-02T03:04:05.678901Z), its date and time
    formatted once a second rather than by `isoformat` on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: object, name: str, event: structlog.typing.EventDict) -> Any:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).isoformat()[:-6]  # no "+00:00"
        event["timestamp"] = f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"
        return event
