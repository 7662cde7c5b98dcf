"""Schemathesis hooks for the API fuzz (`test_openapi.py`): every other generated body names
the served model, so the fuzz reaches a real (fake-engine) worker and not only 404s."""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

SERVED = "m"
_turn = itertools.count()


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    # Only a name is replaced: a model of the wrong type, or "" (under the schema's minLength),
    # must stay for the negative cases.
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str) and model and next(_turn) % 2 == 0:
        return {**body, "model": SERVED}
    return body
