"""Output budgets that fit the context (vllama/api/budget.py, ollama/options.fit_output): pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vllama.api.budget import BUDGET_FIELDS, clamp, fit, refused_context
from vllama.api.ollama.options import Sampling, fit_output
from vllama.api.ollama.request import chat_call, generate_call
from vllama.api.protocol import JsonObject
from vllama.catalog.registry import ModelTraits
from vllama.config.settings import ModelSpec, load_config
from vllama.scheduling.reload import plan_reload

CHAT = BUDGET_FIELDS["/v1/chat/completions"]
MESSAGES = BUDGET_FIELDS["/v1/messages"]
RESPONSES = BUDGET_FIELDS["/v1/responses"]


def _refusal(message: str, envelope: str = "openai") -> bytes:
    if envelope == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": "BadRequestError"}}
        body["error"]["message"] = message
    else:
        body = {"error": {"message": message, "type": "BadRequestError", "code": 400}}
    return json.dumps(body).encode()


# vLLM 0.32's wording (renderers/params.py TokenizeParams), as each endpoint names its field.
@pytest.mark.parametrize(
    ("message", "envelope"),
    [
        ("max_completion_tokens=32000 cannot be greater than max_model_len=2048. "
         "Please request fewer output tokens.", "anthropic"),
        ("max_tokens=5000 cannot be greater than max_model_len=2048. "
         "Please request fewer output tokens.", "openai"),
        ("max_output_tokens=9999 cannot be greater than max_model_len=2048. "
         "Please request fewer output tokens.", "openai"),
    ],
)  # fmt: skip
def test_vllms_budget_refusal_names_the_context(message: str, envelope: str) -> None:
    assert refused_context(400, _refusal(message, envelope)) == 2048


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 2048 tokens. However, your prompt "
              "contains at least 2049 input tokens, which exceeds this limit even without any "
              "output tokens. Please reduce the length of the input prompt."),
        (400, "truncate_prompt_tokens=5000 cannot be greater than max_model_len = 2048. "
              "Please request a smaller truncation size."),
        (500, "max_tokens=5000 cannot be greater than max_model_len=2048."),
    ],
)  # fmt: skip
def test_other_answers_are_not_a_budget_refusal(status: int, message: str) -> None:
    assert refused_context(status, _refusal(message)) is None


def test_clamp_lowers_only_budgets_over_the_limit() -> None:
    payload: JsonObject = {"max_completion_tokens": 5000, "max_tokens": 100}
    assert clamp(payload, CHAT, 2048)
    assert payload == {"max_completion_tokens": 2048, "max_tokens": 100}
    assert not clamp(payload, CHAT, 2048)
    untouched: JsonObject = {"max_tokens": "lots", "max_completion_tokens": True}
    assert not clamp(untouched, CHAT, 10)  # not a number: vLLM's own 400 says so


def test_clamp_keeps_an_anthropic_thinking_budget_under_max_tokens() -> None:
    payload: JsonObject = {
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
    }
    assert clamp(payload, MESSAGES, 2048)
    assert payload == {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 2047}}
    small: JsonObject = {"max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 10}}
    clamp(small, MESSAGES, 2048)
    assert small["thinking"] == {"type": "enabled", "budget_tokens": 10}


@pytest.mark.parametrize(
    ("payload", "fields", "default", "context", "expected", "changed"),
    [
        ({}, CHAT, None, None, {}, False),
        ({}, CHAT, None, 2048, {}, False),  # no budget, no default: vLLM stops at the context
        ({}, CHAT, 512, 2048, {"max_completion_tokens": 512}, True),
        ({"max_tokens": None}, CHAT, 512, None,
         {"max_tokens": None, "max_completion_tokens": 512}, True),
        ({}, CHAT, 4096, 2048, {"max_completion_tokens": 2048}, True),
        ({"max_tokens": 100}, CHAT, 512, 2048, {"max_tokens": 100}, False),
        ({"max_tokens": 32000}, MESSAGES, 512, 2048, {"max_tokens": 2048}, True),
        ({"max_output_tokens": 9000}, RESPONSES, None, 2048, {"max_output_tokens": 2048}, True),
        ({"max_output_tokens": 9000}, RESPONSES, None, None, {"max_output_tokens": 9000}, False),
    ],
)  # fmt: skip
def test_fit_sets_the_default_and_caps_at_a_known_context(
    payload: JsonObject,
    fields: tuple[str, ...],
    default: int | None,
    context: int | None,
    expected: JsonObject,
    changed: bool,
) -> None:
    assert fit(payload, fields, default, context) is changed
    assert payload == expected


@pytest.mark.parametrize(
    ("num_predict", "options", "default", "context", "expected"),
    [
        (None, {}, None, 2048, None),  # none: vLLM stops at the context
        (None, {}, None, None, None),
        (None, {}, 300, 2048, 300),
        (None, {"num_predict": -1}, 300, 2048, 300),  # -1 is Ollama's own default: unset
        (None, {"num_predict": -2}, 300, 2048, None),  # -2: fill the context
        (100, {"num_predict": 100}, 300, 2048, 100),
        (32000, {"num_predict": 32000}, None, 2048, 2048),
        (None, {"num_ctx": 512}, None, 2048, 512),  # a smaller window bounds the answer
        (1000, {"num_ctx": 512}, None, 2048, 512),
        (None, {"num_ctx": 100_000}, None, 2048, None),  # a larger one is the model's context
        (5000, {"num_ctx": 100_000}, None, 2048, 2048),
        (None, {"num_ctx": 512}, None, None, 512),
        (None, {"num_ctx": 0}, None, 2048, None),
    ],
)
def test_ollamas_budget(
    num_predict: int | None,
    options: dict[str, object],
    default: int | None,
    context: int | None,
    expected: int | None,
) -> None:
    sampling: Sampling = {} if num_predict is None else {"max_tokens": num_predict}
    fit_output(sampling, options, default, context)
    assert sampling.get("max_tokens") == expected


def test_translated_requests_carry_the_models_default_budget() -> None:
    traits = ModelTraits(served_name="m", context_length=2048, max_output_tokens=256)
    assert generate_call({"prompt": "p"}, traits, "m").body["max_tokens"] == 256
    raw = generate_call({"prompt": "p", "raw": True}, traits, "m")
    assert raw.body["max_tokens"] == 256
    chat = chat_call({"messages": [], "options": {"num_predict": 9000}}, traits, "m")
    assert chat.body["max_tokens"] == 2048


def test_raw_generate_without_a_budget_runs_to_the_context_not_vllms_16() -> None:
    traits = ModelTraits(served_name="m", context_length=2048)
    assert generate_call({"prompt": "p", "raw": True}, traits, "m").body["max_tokens"] == 2048
    assert "max_tokens" not in generate_call({"prompt": "p"}, traits, "m").body


@pytest.mark.parametrize("where", ["server", "model"])
@pytest.mark.parametrize("value", [0, -5, "many", 1.5])
def test_max_output_tokens_is_validated(where: str, value: object) -> None:
    from vllama.config.settings import ConfigError

    table: dict[str, Any] = {"models": {"m": {"model": "a/b"}}}
    if where == "server":
        table["server"] = {"max_output_tokens": value}
    else:
        table["models"]["m"]["max_output_tokens"] = value
    with pytest.raises(ConfigError, match="max_output_tokens"):
        load_config(file_data=table)


def test_max_output_tokens_settings_load() -> None:
    table = {
        "server": {"max_output_tokens": 4096},
        "models": {"m": {"model": "a/b", "max_output_tokens": 512}, "n": {"model": "a/c"}},
    }
    config = load_config(file_data=table)
    assert config.server.max_output_tokens == 4096
    assert config.models["m"].max_output_tokens == 512
    assert config.models["n"].max_output_tokens is None


def test_a_changed_max_output_tokens_restarts_nothing() -> None:
    before = ModelSpec(model="a/b", max_output_tokens=512)
    after = ModelSpec(model="a/b", max_output_tokens=1024)
    plan = plan_reload({"m": before}, ["m"], {"m": after}, fatal=[])
    assert plan.changed == ()
    moved = ModelSpec(model="a/b", max_output_tokens=1024, args=("--max-model-len", "4096"))
    assert plan_reload({"m": before}, ["m"], {"m": moved}, fatal=[]).changed == ("m",)
