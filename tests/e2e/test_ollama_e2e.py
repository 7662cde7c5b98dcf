"""Ollama's native API on real vLLM workers, through the official `ollama` Python client.

The demo model has random weights, so each option is verified by its effect on the tokens (greedy
output as the reference), never by the meaning of the text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.component.fakes import eventually_blocking, worker_ports
from tests.daemon import Daemon, free_port, write_config
from tests.e2e.conftest import real_model
from tests.e2e.helpers import WEATHER_TOOL, workers

pytestmark = pytest.mark.e2e

PROMPT = "The quick brown fox"
GREEDY = {"temperature": 0, "num_predict": 16}
ONE_TOKEN = {"temperature": 0, "num_predict": 1}


def client(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=300)


def text(daemon: Daemon, **options: object) -> str:
    reply = client(daemon).generate(model="tiny", prompt=PROMPT, options=options)
    assert reply.response is not None
    return reply.response


def test_root_version_and_tags(vllama_daemon: Daemon) -> None:
    assert httpx.get(vllama_daemon.url + "/").status_code == 200
    assert httpx.head(vllama_daemon.url + "/").status_code == 200
    assert httpx.get(vllama_daemon.url + "/api/version").json()["version"]
    listed = {m.model: m for m in client(vllama_daemon).list().models}
    assert {"tiny:latest", "tiny-tools:latest", "tiny2:latest", "tiny-embed:latest"} <= set(listed)
    tiny = listed["tiny:latest"]
    assert tiny.size and tiny.size > 1_000_000 and tiny.digest
    assert tiny.details is not None and tiny.details.family == "llama"
    assert tiny.details.format == "safetensors" and tiny.details.quantization_level == "F32"
    assert tiny.details.parameter_size and tiny.details.parameter_size.endswith("K")


def test_show_reads_the_models_own_files(vllama_daemon: Daemon) -> None:
    shown = client(vllama_daemon).show("tiny")
    assert shown.template and "{%" in shown.template  # the chat template, Jinja
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.embedding_length"] == 128
    assert {"tools", "thinking"} <= set(shown.capabilities)  # from its parsers
    embed = client(vllama_daemon).show("tiny-embed")
    assert embed.capabilities == ["embedding"]
    assert client(vllama_daemon).show("tiny-rerank").capabilities == ["rerank"]
    with pytest.raises(ollama.ResponseError) as info:
        client(vllama_daemon).show("no-such-model")
    assert info.value.status_code == 404


def test_generate_streamed_and_not(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    whole = api.generate(model="tiny", prompt=PROMPT, options=GREEDY)
    assert whole.done and whole.done_reason == "length"
    assert whole.eval_count == 16 and whole.prompt_eval_count and whole.prompt_eval_count > 0
    for duration in (whole.total_duration, whole.prompt_eval_duration, whole.eval_duration):
        assert duration is not None and duration > 0
    assert whole.total_duration is not None and whole.load_duration is not None
    assert whole.total_duration >= whole.load_duration
    parts = list(api.generate(model="tiny", prompt=PROMPT, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert len(parts) > 2
    assert "".join(p.response or "" for p in parts) == whole.response  # greedy: the same tokens
    assert parts[-1].eval_count == 16


def test_chat_streamed_and_not(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
    ]
    whole = api.chat(model="tiny:latest", messages=messages, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count == 16
    parts = list(api.chat(model="tiny-alias", messages=messages, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_num_predict_and_stop(vllama_daemon: Daemon) -> None:
    assert (
        client(vllama_daemon)
        .generate(model="tiny", prompt=PROMPT, options={"temperature": 0, "num_predict": 5})
        .eval_count
        == 5
    )
    # A seeded sample is reproducible and varied enough to hold a stop string mid-way.
    sampled = {"temperature": 1.0, "seed": 11, "num_predict": 24}
    reference = text(vllama_daemon, **sampled)
    middle = reference[len(reference) // 3 :]
    stop_at = next(middle[i : i + 2] for i in range(len(middle) - 1) if middle[i : i + 2].strip())
    cut = text(vllama_daemon, **sampled, stop=[stop_at])
    assert stop_at not in cut
    assert reference.startswith(cut) and len(cut) < len(reference)


def test_temperature_seed_and_truncation_options(vllama_daemon: Daemon) -> None:
    greedy = text(vllama_daemon, **GREEDY)
    assert text(vllama_daemon, **GREEDY) == greedy  # temperature 0 is deterministic
    hot = {"temperature": 1.5, "num_predict": 16}
    samples = {text(vllama_daemon, **hot, seed=seed) for seed in range(4)}
    assert len(samples) > 1  # sampling with different seeds differs
    assert text(vllama_daemon, **hot, seed=7) == text(vllama_daemon, **hot, seed=7)
    # Each truncation option at its extreme leaves only the most likely token: greedy again.
    assert text(vllama_daemon, **hot, seed=3, top_k=1) == greedy
    assert text(vllama_daemon, **hot, seed=3, top_p=1e-9) == greedy
    assert text(vllama_daemon, **hot, seed=3, min_p=1.0) == greedy


def test_penalties_change_the_output(vllama_daemon: Daemon) -> None:
    # 40 tokens (inside the demo's ~50-token answer): enough for the random weights to repeat a
    # token, which is all a penalty acts on; 16 held no repeat the penalties could change.
    longer = {**GREEDY, "num_predict": 40}
    greedy = text(vllama_daemon, **longer)
    assert text(vllama_daemon, **longer, repeat_penalty=2.0) != greedy
    assert text(vllama_daemon, **longer, presence_penalty=2.0) != greedy
    assert text(vllama_daemon, **longer, frequency_penalty=2.0) != greedy


def test_num_ctx_and_bad_options(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    api.generate(model="tiny", prompt=PROMPT, options={"num_predict": 1})
    pid = workers(vllama_daemon)["tiny"].pid
    reply = api.generate(model="tiny", prompt=PROMPT, options={"num_ctx": 512, "num_predict": 2})
    assert reply.eval_count == 2
    assert workers(vllama_daemon)["tiny"].pid == pid  # accepted without a reload
    # Above the served context: that context, as Ollama lowers num_ctx to a model's length.
    reply = api.generate(
        model="tiny", prompt=PROMPT, options={"num_ctx": 100_000, "num_predict": 2}
    )
    assert reply.done and reply.eval_count == 2
    # Below it: the answer is bounded by it.
    reply = api.generate(model="tiny", prompt=PROMPT, options={"num_ctx": 3, "temperature": 0})
    assert reply.done and reply.eval_count is not None and reply.eval_count <= 3
    assert workers(vllama_daemon)["tiny"].pid == pid
    raw = httpx.post(
        vllama_daemon.url + "/api/generate",
        json={"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}},
    )
    assert raw.status_code == 400 and "temperature" in raw.json()["error"]
    # Unknown and runner-only options are ignored, as Ollama does.
    assert (
        api.generate(
            model="tiny", prompt=PROMPT, options={"num_predict": 2, "num_gpu": 99, "wat": 1}
        ).eval_count
        == 2
    )


def test_raw_generate_and_unsupported_fields(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    reply = api.generate(model="tiny", prompt=PROMPT, raw=True, options=GREEDY)
    assert reply.response and reply.eval_count == 16
    for model, kwargs, fragment in (
        ("tiny", {"suffix": "end"}, "insert"),
        ("tiny2", {"think": True}, "does not support thinking"),  # reasoning_parser = "none"
        ("tiny", {"raw": True, "system": "x"}, "raw mode"),
        ("tiny", {"template": "{{ .Prompt }}"}, "template is not supported"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            api.generate(model=model, prompt=PROMPT, **kwargs)
        assert info.value.status_code == 400 and fragment in str(info.value)


def test_json_schema_format_parses(vllama_daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "blue"]}},
        "required": ["ok", "color"],
    }
    reply = client(vllama_daemon).chat(
        model="tiny-tools",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        format=schema,
        options={"temperature": 0, "num_predict": 64},
    )
    parsed = json.loads(reply.message.content or "")
    assert isinstance(parsed["ok"], bool) and parsed["color"] in ("red", "blue")


def test_tools_and_a_tool_call_history_reach_the_models_template(vllama_daemon: Daemon) -> None:
    # A random model rarely calls a tool on its own, so nothing here waits for one: what always
    # holds is that the tools, and the history's call (its arguments an object, as Ollama's
    # clients send them), are translated and rendered into the prompt. The way back (a parsed
    # call's arguments as an object) is tests/unit/test_ollama_translate.py's.
    api = client(vllama_daemon)
    question: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    result: dict[str, object] = {"role": "tool", "content": "sunny", "tool_name": "get_weather"}

    def call(arguments: dict[str, str]) -> dict[str, object]:
        function = {"name": "get_weather", "arguments": arguments}
        return {"role": "assistant", "content": "", "tool_calls": [{"function": function}]}

    def prompt_tokens(messages: list[dict[str, object]], tools: list[dict[str, Any]] | None) -> int:
        reply = api.chat(model="tiny-tools", messages=messages, tools=tools, options=ONE_TOKEN)
        assert reply.done and reply.prompt_eval_count is not None
        return reply.prompt_eval_count

    assert prompt_tokens(question, [WEATHER_TOOL]) > prompt_tokens(question, None)
    tools = [WEATHER_TOOL]
    no_call = prompt_tokens([*question, {"role": "assistant", "content": ""}, result], tools)
    paris = prompt_tokens([*question, call({"city": "Paris"}), result], tools)
    longer = prompt_tokens([*question, call({"city": "Paris, France"}), result], tools)
    assert no_call < paris < longer  # the call is rendered, and so are its arguments
    # The demo model's parsers are chosen from its own files: tools work on plain "tiny" too.
    assert api.chat(model="tiny", messages=question, tools=[WEATHER_TOOL], options=ONE_TOKEN).done
    with pytest.raises(ollama.ResponseError) as info:  # an embedding model cannot chat
        api.chat(model="tiny-embed", messages=question, tools=[WEATHER_TOOL])
    assert info.value.status_code == 400 and '"tiny-embed" does not support chat' in str(info.value)


def test_a_forced_tool_call_comes_back_as_a_call(vllama_daemon: Daemon) -> None:
    # OpenAI's named tool_choice makes vLLM answer with a call to that function whatever the
    # weights: the call must come back through vllama as an OpenAI tool call.
    body = {
        "model": "tiny-tools",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 48,
    }
    response = httpx.post(vllama_daemon.url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message.get("tool_calls"), f"no tool call came back: {message}"
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)  # OpenAI's shape: JSON text


def test_embed_and_legacy_embeddings(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    result = api.embed(model="tiny-embed", input=["hello world", "goodbye"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 128
    assert result.prompt_eval_count and result.prompt_eval_count > 0
    single = api.embed(model="tiny-embed", input="hello world")
    assert single.embeddings[0] == pytest.approx(result.embeddings[0], abs=1e-5)
    legacy = api.embeddings(model="tiny-embed", prompt="hello world")
    assert legacy.embedding == pytest.approx(result.embeddings[0], abs=1e-5)


def test_load_unload_and_ps(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    loaded = api.generate(model="tiny2", prompt="", keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    running = {m.model: m for m in api.ps().models}
    assert "tiny2:latest" in running
    entry = running["tiny2:latest"]
    assert entry.size and entry.size > 100_000_000  # the whole vLLM process tree's memory
    assert entry.context_length == 65536
    assert entry.expires_at is not None
    left = entry.expires_at.timestamp() - time.time()
    assert 540 < left <= 600
    forever = api.chat(model="tiny2", messages=[], keep_alive=-1)
    assert forever.done_reason == "load"
    by_name = {m.model: m for m in api.ps().models}
    assert by_name["tiny2:latest"].expires_at is not None
    assert by_name["tiny2:latest"].expires_at.year > 2100
    unloaded = api.generate(model="tiny2", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    eventually_blocking(
        lambda: "tiny2" not in workers(vllama_daemon), within=60, what="tiny2 unloaded", every=0.2
    )
    assert "tiny2:latest" not in {m.model for m in api.ps().models}


def test_create_copy_delete_a_derived_model(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    api.create(
        model="pirate", from_="tiny", system="You are a pirate.", parameters={"num_predict": 3}
    )
    shown = api.show("pirate")
    assert shown.details is not None and shown.details.parent_model == "tiny:latest"
    reply = api.generate(model="pirate", prompt=PROMPT)
    assert reply.eval_count == 3  # the derived model's parameter applies
    api.copy("pirate", "pirate-copy")
    assert api.generate(model="pirate-copy", prompt=PROMPT).eval_count == 3
    assert {"pirate:latest", "pirate-copy:latest"} <= {m.model for m in api.list().models}
    api.delete("pirate-copy")
    with pytest.raises(ollama.ResponseError) as info:
        api.show("pirate-copy")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        api.delete("tiny")  # configured in the file: not vllama's to delete
    assert info.value.status_code == 400


@pytest.fixture
def offline_daemon(
    demo_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Daemon]:
    """A daemon of its own, offline by construction on any host: its Hugging Face Hub is a
    closed local port and its Hub cache is empty (so a pull can neither download nor find a
    cached copy). Its model is never loaded."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # Not offline by switch (the run's default): a host without network, as a user's would be.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = write_config(
        tmp_path / "vllama.toml",
        {"models_dir": str(tmp_path / "models"), **worker_ports()},
        {"tiny": real_model(demo_models["chat"])},
    )
    with Daemon(config, free_port(), tmp_path / "vllama.log") as daemon:
        yield daemon


def test_pull_without_network_fails_fast_and_push_is_501(
    offline_daemon: Daemon, tmp_path: Path
) -> None:
    api = client(offline_daemon)
    began = time.monotonic()
    with pytest.raises(ollama.ResponseError) as info:
        api.pull("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.monotonic() - began < 30
    # It asked the closed local port (elsewhere it would fail on DNS, or download).
    assert "Qwen/Qwen2.5-0.5B-Instruct" in str(info.value)
    assert "cannot reach http://127.0.0.1:9" in str(info.value)
    assert not (tmp_path / "models" / "Qwen").exists()  # nothing was downloaded
    with pytest.raises(ollama.ResponseError) as info:
        api.pull("llama3.2")  # an Ollama library name: its repo, from the same closed port
    assert info.value.status_code == 503  # unavailable, with the reason (issue 25)
    assert "cannot reach" in str(info.value) and "meta-llama/" in str(info.value)
    with pytest.raises(ollama.ResponseError) as info:
        api.push("tiny")
    assert info.value.status_code == 501


def test_errors_use_ollamas_envelope(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    with pytest.raises(ollama.ResponseError) as info:
        api.generate(model="nope", prompt="x")
    assert info.value.status_code == 404 and "not found" in info.value.error
    response = httpx.post(vllama_daemon.url + "/api/chat", content=b"{broken")
    assert response.status_code == 400 and isinstance(response.json()["error"], str)
