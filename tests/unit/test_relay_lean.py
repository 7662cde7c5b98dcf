"""The relay's cheaper paths answer exactly as the plain ones they replace: json.loads, finding
a stream's usage, a uuid4 request id, and the drain's cut of a request still waiting."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

import aiohttp
import pytest

from vllama.api.inflight import InFlight
from vllama.api.observe import new_request_id
from vllama.api.ollama.stream import _loads, ndjson, ndjson_lines
from vllama.api.usage import StreamUsage, token_counts, usage_of, usage_of_events


def outcome(parse: Any, data: bytes) -> tuple[str, str]:
    try:
        return "value", repr(parse(data))
    except Exception as exc:  # the error's kind is part of the answer
        return "error", type(exc).__name__


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"b":[true,null,"x"]}',
        b"[1,2]",
        b'"text"',
        b"12",
        b"1.5e3",
        b"NaN",
        b'{"a":"\xc3\xa9"}',
        b'{"s":"\\ud800"}',  # a lone surrogate, escaped
        b'"\xed\xa0\x80"',  # a lone surrogate in UTF-8 (json.loads passes it)
        b" {}",
        b"{} ",
        b"{}{}",
        b'{"a":1} x',
        b'{"a":',
        b"",
        b"\xff",
        b"tru",
        b'{"a":[' * 3,
    ],
)
def test_loads_answers_as_json_loads(data: bytes) -> None:
    assert outcome(_loads, data) == outcome(json.loads, data)


@pytest.mark.parametrize(
    "obj",
    [
        {"a": "é\u2028<>&\n", "b": [1, 2.5, None, True, {"c": []}]},
        {"n": 2**70},  # past orjson's 64 bits: Python's json writes it
        {1: "x"},  # a key that is not a string: likewise
    ],
)
def test_ndjson_lines_read_back_as_what_was_written(obj: dict[Any, Any]) -> None:
    line = ndjson(obj)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert json.loads(line) == json.loads(json.dumps(obj))
    assert ndjson_lines([obj, {"done": True}]) == line + b'{"done":true}\n'


def test_ndjson_writes_nan_as_null() -> None:
    # Python's json would write NaN, which is not JSON: Ollama's own clients would fail the line.
    assert ndjson({"x": float("nan")}) == b'{"x":null}\n'


def usage_line_by_line(chunk: bytes) -> dict[str, object] | None:
    """The plain way: every line of the piece, in order, each usage merged over the last."""
    merged: dict[str, object] | None = None
    for line in chunk.split(b"\n"):
        if not line.startswith(b"data: {") or b'"usage"' not in line:
            continue
        if b'"usage":null' in line or b'"usage": null' in line:
            continue
        usage = usage_of(line[6:])
        if usage is not None:
            merged = usage if merged is None else {**merged, **usage}
    return merged


def test_usage_of_events_finds_what_a_line_by_line_search_finds() -> None:
    pieces = [
        b'data: {"choices":[]}\n\n',
        b'data: {"usage":null}\n\n',
        b'data: {"usage": {"prompt_tokens": 3}}\n\n',
        b'data: {"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
        b'x"usage"y\n',
        b'data: {"usage":[1]}\n',
        b'data: {"x":"\\"usage\\"","usage":{"completion_tokens":1}}\n\n',
        b'data: {"usage":{"a":1}',
        b"\n",
        b'event: message_start\ndata: {"message":{"usage":{"input_tokens":3}}}\n\n',
        b'data: {"type":"message_delta","usage":{"output_tokens":4}}\n\n',
        b'data: {"response":{"usage":null}}\n\n',
        b'data: {"response":{"id":"r","usage":{"input_tokens":1,"output_tokens":2}}}\n\n',
    ]
    rng = random.Random(13)
    for _ in range(20_000):
        chunk = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        chunk = chunk[rng.randint(0, len(chunk)) :] if rng.random() < 0.3 else chunk
        assert usage_of_events(chunk) == usage_line_by_line(chunk), chunk


ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":7,'
    b'"cache_read_input_tokens":2,"output_tokens":1}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"text":"\\"usage\\""}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":12}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def test_a_streams_usage_is_found_however_its_pieces_are_cut() -> None:
    # Anthropic's real API names only output_tokens in message_delta: the input tokens are
    # message_start's (its cache reads count as prompt).
    rng = random.Random(7)
    for _ in range(2000):
        cuts = sorted(rng.sample(range(1, len(ANTHROPIC_STREAM)), rng.randint(0, 8)))
        tally = StreamUsage()
        for start, end in zip([0, *cuts], [*cuts, len(ANTHROPIC_STREAM)], strict=True):
            tally.feed(ANTHROPIC_STREAM[start:end])
        assert tally.usage is not None, cuts
        assert token_counts(tally.usage) == (9, 12), cuts


@pytest.mark.parametrize(
    ("usage", "counts"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, (3, 2)),
        ({"prompt_tokens": 3}, (3, None)),
        ({"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}, (4, 6)),  # Responses
        ({"input_tokens": 1, "cache_creation_input_tokens": 5, "output_tokens": 0}, (6, 0)),
        ({"input_tokens": True, "output_tokens": "2"}, (0, None)),
    ],
)
def test_token_counts_of_each_apis_usage(
    usage: dict[str, object], counts: tuple[int, int | None]
) -> None:
    assert token_counts(usage) == counts


def test_request_ids_are_uuid4s() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


class Pending:
    """A request whose answer (headers) has not come yet."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def answer(self) -> aiohttp.ClientResponse:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("no answer comes")


async def test_a_cut_ends_a_wait_for_headers_with_none_and_cancels_the_request() -> None:
    in_flight, pending = InFlight(), Pending()
    waiting = asyncio.create_task(in_flight.unless_cut(pending.answer()))
    await pending.started.wait()
    in_flight.cut("stopping")
    assert await waiting is None
    assert pending.cancelled
    assert waiting.cancelling() == 0  # the cut's own cancellation is spent
    late = Pending()
    assert await in_flight.unless_cut(late.answer()) is None  # after the cut: never sent
    await asyncio.sleep(0)
    assert not late.started.is_set()


async def test_a_client_that_goes_away_cancels_the_wait_cut_or_not() -> None:
    for cut_too in (False, True):
        in_flight, pending = InFlight(), Pending()
        waiting = asyncio.create_task(in_flight.unless_cut(pending.answer()))
        await pending.started.wait()
        waiting.cancel()  # the client went away
        if cut_too:
            in_flight.cut("stopping")
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pending.cancelled
