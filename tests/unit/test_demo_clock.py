"""The demo chat model ends its answers by itself (vllama/demo/build.py `_end_answers`), checked
with transformers' own forward pass, no vLLM: end-of-sequence comes ~50 tokens after the
template's `<|answer|>`, whatever the prompt's length and history; with thinking on, a `</think>`
comes first, ~22 tokens in, so the answer is thinking then content, as a reasoning model's; a
prompt without that token (a raw completion) is left to the random weights and runs on."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from vllama.demo.build import build_chat_model

ANSWER_TOKENS = range(40, 64)
# Where </think> comes (its index among the generated tokens) when thinking is on.
THINKING_TOKENS = range(12, 32)


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


def _chat(
    model: Any, tokenizer: Any, messages: list[dict[str, str]], thinking: bool, **sampling: Any
) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return _generate(model, tokenizer, ids, **sampling)


def _greedy_and_sampled(
    model: Any, tokenizer: Any, messages: list[dict[str, str]], thinking: bool
) -> list[list[int]]:
    torch: Any = importlib.import_module("torch")
    answers = [_chat(model, tokenizer, messages, thinking, do_sample=False)]
    for seed in range(3):
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0}
        answers.append(_chat(model, tokenizer, messages, thinking, **sampling))
    return answers


CONVERSATIONS = [
    [{"role": "user", "content": "Why is the sky blue?"}],
    [
        {"role": "user", "content": "Tell me a story. " * 500},
        {"role": "assistant", "content": "Once upon a time. " * 40},
        {"role": "user", "content": "And then?"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_answers_end_with_eos_after_about_fifty_tokens(
    model_and_tokenizer: tuple[Any, Any], messages: list[dict[str, str]]
) -> None:
    model, tokenizer = model_and_tokenizer
    end_think = tokenizer.convert_tokens_to_ids("</think>")
    for answer in _greedy_and_sampled(model, tokenizer, messages, thinking=False):
        assert answer[-1] == tokenizer.eos_token_id and len(answer) in ANSWER_TOKENS
        assert tokenizer.eos_token_id not in answer[:-1]
        assert end_think not in answer  # no thinking asked for: no block to close


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_thinking_closes_its_block_then_answers_and_ends(
    model_and_tokenizer: tuple[Any, Any], messages: list[dict[str, str]]
) -> None:
    model, tokenizer = model_and_tokenizer
    end_think = tokenizer.convert_tokens_to_ids("</think>")
    for answer in _greedy_and_sampled(model, tokenizer, messages, thinking=True):
        assert answer[-1] == tokenizer.eos_token_id and len(answer) in ANSWER_TOKENS
        assert tokenizer.eos_token_id not in answer[:-1]
        # One </think>, after some thinking and well before the end: content follows it.
        assert answer.count(end_think) == 1 and answer.index(end_think) in THINKING_TOKENS
        content = tokenizer.decode(answer[answer.index(end_think) + 1 : -1])
        assert len(answer) - answer.index(end_think) > 15 and content.strip()


def test_a_think_tag_in_the_text_opens_no_block(model_and_tokenizer: tuple[Any, Any]) -> None:
    # Only the template's <|thinking|> opens one; a user may well write "<think>".
    model, tokenizer = model_and_tokenizer
    messages = [{"role": "user", "content": "What does <think> mean in a prompt?"}]
    answer = _chat(model, tokenizer, messages, thinking=False, do_sample=False)
    assert tokenizer.convert_tokens_to_ids("</think>") not in answer
    assert answer[-1] == tokenizer.eos_token_id and len(answer) in ANSWER_TOKENS


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
    assert "<|thinking|>" not in text and "<think>" not in text
    thinking = tokenizer.apply_chat_template(
        history, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert thinking == text + "<|thinking|><think>\n"
