"""The demo chat model ends its answers by itself (vllama/demo/build.py `_end_answers`), checked
with transformers' own forward pass, no vLLM: end-of-sequence comes ~50 tokens after the
template's `<|answer|>`, whatever the prompt's length and history; a prompt without that token (a
raw completion) is left to the random weights and runs on."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from vllama.demo.build import build_chat_model

ANSWER_TOKENS = range(40, 64)


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    transformers: Any = importlib.import_module("transformers")
    folder = build_chat_model(tmp_path_factory.mktemp("demo") / "chat")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return model, tokenizer


def _generate(model: Any, tokenizer: Any, ids: Any, **sampling: Any) -> list[int]:
    out = model.generate(ids, max_new_tokens=100, pad_token_id=tokenizer.pad_token_id, **sampling)
    return list(out[0, ids.shape[1] :].tolist())


def _chat(model: Any, tokenizer: Any, messages: list[dict[str, str]], **sampling: Any) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return _generate(model, tokenizer, ids, **sampling)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Why is the sky blue?"}],
        [
            {"role": "user", "content": "Tell me a story. " * 500},
            {"role": "assistant", "content": "Once upon a time. " * 40},
            {"role": "user", "content": "And then?"},
        ],
    ],
)
def test_answers_end_with_eos_after_about_fifty_tokens(
    model_and_tokenizer: tuple[Any, Any], messages: list[dict[str, str]]
) -> None:
    model, tokenizer = model_and_tokenizer
    greedy = _chat(model, tokenizer, messages, do_sample=False)
    assert greedy[-1] == tokenizer.eos_token_id and len(greedy) in ANSWER_TOKENS
    assert tokenizer.eos_token_id not in greedy[:-1]
    torch: Any = importlib.import_module("torch")
    for seed in range(3):
        torch.manual_seed(seed)
        sampled = _chat(model, tokenizer, messages, do_sample=True, temperature=1.0, top_k=0)
        assert sampled[-1] == tokenizer.eos_token_id and len(sampled) in ANSWER_TOKENS


def test_a_prompt_without_the_answer_token_runs_on(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    assert tokenizer.eos_token_id not in _generate(model, tokenizer, ids, do_sample=False)


def test_the_template_opens_only_the_generated_answer(model_and_tokenizer: tuple[Any, Any]) -> None:
    _, tokenizer = model_and_tokenizer
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert text.count("<|answer|>") == 1 and text.endswith("<|assistant|>\n<|answer|>")
