"""Ollama's `/api/embed` options against real vLLM: `dimensions` (the demo embedding model is
Matryoshka, as nomic-embed is) and `truncate` (on by default, as in Ollama; off, an input over the
model's 512 positions is refused)."""

from __future__ import annotations

import math

import ollama
import pytest

from tests.daemon import Daemon

pytestmark = pytest.mark.e2e

LONG = "word " * 2000  # ~2000 tokens: over tiny-embed's 512 positions


def client(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=300)


def test_dimensions_shorten_the_vector_and_keep_it_normalised(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    full = api.embed(model="tiny-embed", input="hello world").embeddings[0]
    short = api.embed(model="tiny-embed", input="hello world", dimensions=16).embeddings[0]
    assert len(full) == 128 and len(short) == 16
    # vLLM cuts the vector, then normalises it again: the direction of the first 16 components.
    norm = math.sqrt(sum(x * x for x in full[:16]))
    assert short == pytest.approx([x / norm for x in full[:16]], abs=1e-4)
    assert math.sqrt(sum(x * x for x in short)) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ollama.ResponseError) as info:  # vLLM's own range check, relayed
        api.embed(model="tiny-embed", input="hello world", dimensions=4096)
    assert info.value.status_code == 400 and "dimensions" in str(info.value)


def test_truncate_is_on_by_default_and_off_refuses_a_long_input(vllama_daemon: Daemon) -> None:
    api = client(vllama_daemon)
    cut = api.embed(model="tiny-embed", input=LONG)
    assert len(cut.embeddings[0]) == 128
    assert cut.prompt_eval_count == 512  # the model's whole context, no more
    assert api.embed(model="tiny-embed", input=LONG, truncate=True).embeddings == cut.embeddings
    with pytest.raises(ollama.ResponseError) as info:
        api.embed(model="tiny-embed", input=LONG, truncate=False)
    assert info.value.status_code == 400
    assert "512" in str(info.value)  # vLLM names the model's length
