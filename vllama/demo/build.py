"""Tiny, deterministic models that real vLLM serves, built locally with no model hub.

No machine here reaches a hub, yet tests and the out-of-the-box demo need real vLLM workers. These
models have random weights (their text is gibberish), but every request path is real: tokenizer,
chat template, sampling, streaming, usage counts, embeddings. They are small (a few MB), build in
seconds, and are cached: a complete build is recognised by a marker file written last, so callers
can ask for them on every start.

Builds are atomic and cached (`vllama.demo.cache`); the training text is `vllama.demo.text`.

Heavy libraries (torch, transformers, tokenizers) are imported inside the builders so that importing
this module stays cheap for the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vllama.demo.cache import build_once
from vllama.demo.text import training_text, wordpiece_vocab

CHAT_MODEL_DIRNAME = "vllama-tiny-chat"
EMBED_MODEL_DIRNAME = "vllama-tiny-embed"
RERANK_MODEL_DIRNAME = "vllama-tiny-rerank"

# Bump a version whenever what a builder writes changes, so cached folders are rebuilt.
_CHAT_FORMAT = "vllama-tiny-chat/5"
_EMBED_FORMAT = "vllama-tiny-embed/2"
_RERANK_FORMAT = "vllama-tiny-rerank/1"
_LORA_FORMAT = "vllama-tiny-lora/1"
_LORA_RANK = 8

_VOCAB_SIZE = 1000
# Long enough for coding agents' prompts; the KV cache per token is 2 KiB (2 layers x 2 KV heads
# x 64 x K and V x 4 bytes), so a whole 65,536-token context fits in 128 MiB.
_CHAT_MAX_POSITIONS = 65536
_EMBED_MAX_POSITIONS = 512

# A Qwen-style chat template, so that vllama's automatic parser choice gives the demo model tools
# and thinking the way it does a real Qwen3 (hermes tool calls in <tool_call> tags, a <think> block
# switched by `enable_thinking` and opened in the generation prompt; `<|thinking|>` before it
# tells the weights, see `_end_answers`). Any role renders, so OpenAI "tool" messages never make a
# request fail; `content` may be null on assistant messages that carry tool calls. Testing `is
# string` (rather than looping over parts) makes vLLM detect the "string" content format and
# flatten text parts for us. Tool arguments arrive as an object (Ollama) or a JSON string (OpenAI).
_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}"
    "{{- '<|system|>\\n' -}}"
    "{%- if messages[0]['role'] == 'system' and messages[0]['content'] is string -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\\nYou may call functions. Their signatures, in <tools></tools>:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\nFor each call, answer with <tool_call>' -}}"
    "{{- '{\"name\": <name>, \"arguments\": <arguments>}</tool_call>' + eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|tool|>\\n<tool_response>\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- endif -%}"
    "{{- '\\n</tool_response>' + eos_token + '\\n' -}}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "{%- set arguments = function['arguments'] -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' -}}"
    "{{- (arguments if arguments is string else (arguments | tojson)) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant|>\\n<|answer|>' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}"
    "{{- '<|thinking|><think>\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
# Added to the vocabulary whole: vLLM's parsers look for these exact tokens.
_CHAT_MARKERS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
# Opens the answer being generated (only there: history turns do not hold it), so the model can
# measure how far its answer has gone and end it (see `_end_answers`).
_ANSWER_TOKEN = "<|answer|>"
# Follows `<|answer|>` when thinking is on (only there), so the model knows to close its <think>
# block. A token of its own rather than <think>: message text may hold a literal <think> too.
_THINKING_TOKEN = "<|thinking|>"


def build_chat_model(dest: Path) -> Path:
    """Build (once) a tiny Llama chat model with a byte-level BPE tokenizer at `dest`."""
    return build_once(Path(dest), _CHAT_FORMAT, _write_chat_model)


def build_embedding_model(dest: Path) -> Path:
    """Build (once) a tiny BERT embedding model with a WordPiece tokenizer at `dest`."""
    return build_once(Path(dest), _EMBED_FORMAT, lambda folder: _write_bert(folder, "BertModel"))


def build_rerank_model(dest: Path) -> Path:
    """Build (once) a tiny BERT cross-encoder (one relevance score per query and document)."""
    head = "BertForSequenceClassification"
    return build_once(Path(dest), _RERANK_FORMAT, lambda folder: _write_bert(folder, head))


def build_lora_adapter(dest: Path, base: Path) -> Path:
    """Build (once) a PEFT LoRA adapter for the tiny chat model at `base` (rank 8 on the query
    and value projections). Its weights are random, not zero as PEFT starts them, so a worker
    serving it answers differently from the base model: that difference proves it is applied."""
    return build_once(Path(dest), _LORA_FORMAT, lambda folder: _write_lora(folder, Path(base)))


def ensure_demo_models(models_dir: Path) -> dict[str, Path]:
    """The demo models under `models_dir`, built on first use."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    return {
        "chat": build_chat_model(models_dir / CHAT_MODEL_DIRNAME),
        "embed": build_embedding_model(models_dir / EMBED_MODEL_DIRNAME),
        "rerank": build_rerank_model(models_dir / RERANK_MODEL_DIRNAME),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllama.demo.build",
        description="Build the tiny demo models (chat, embedding, rerank) that vLLM can serve.",
    )
    parser.add_argument("models_dir", type=Path, help="folder to build the models in")
    args = parser.parse_args(argv)
    for kind, path in ensure_demo_models(args.models_dir).items():
        print(f"{kind}: {path}")
    return 0


# --- chat model ------------------------------------------------------------------------------


def _write_chat_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    transformers = _untyped("transformers")

    specials = ["<unk>", "<s>", "</s>", "<pad>", *_CHAT_MARKERS, _ANSWER_TOKEN, _THINKING_TOKEN]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(seed=0), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    # A prompt sent to /v1/completions starts with BOS like one rendered by the chat template,
    # which vLLM tokenizes without adding special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )

    with _quiet_transformers():
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            model_max_length=_CHAT_MAX_POSITIONS,
            chat_template=_CHAT_TEMPLATE,
            clean_up_tokenization_spaces=False,
        )
        config = transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            # head_dim 64: vLLM's CPU attention kernel rejects smaller heads such as 16.
            num_attention_heads=2,
            # Two KV heads: layer 0's are the answer's clock (`_end_answers`), layer 1's random.
            num_key_value_heads=2,
            max_position_embeddings=_CHAT_MAX_POSITIONS,
            attention_bias=True,
            rope_theta=_ROPE_THETA,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            # Untied: the output row of end-of-sequence reads the clock, its input row does not.
            tie_word_embeddings=False,
            dtype="float32",
        )
        model = _seeded(lambda: transformers.LlamaForCausalLM(config), torch)
        ids = {
            name: int(tokenizer.convert_tokens_to_ids(token))
            for name, token in (
                ("answer", _ANSWER_TOKEN),
                ("thinking", _THINKING_TOKEN),
                ("think", "<think>"),
                ("end_think", "</think>"),
                ("eos", tokenizer.eos_token),
            )
        }
        _end_answers(model, ids, torch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


# --- answers that end -----------------------------------------------------------------------
#
# The chat model's weights are random, except for a clock built by hand: greedy or sampled, it
# emits end-of-sequence about `_ANSWER_TOKENS` tokens after the `<|answer|>` token that opens the
# answer being generated, whatever the prompt's length. With thinking on (`<|thinking|>` right
# after `<|answer|>`), it first thinks, closes its block with `</think>` about `_THINK_TOKENS` in,
# and only then answers, as a real reasoning model does. Residual dimensions that the random
# weights neither read nor write carry it:
# - `_ONE` is a constant in every embedding; `_MARK`, `_THINK_MARK` and `_CLOSE_MARK` are set
#   only in the embeddings of `<|answer|>`, `<|thinking|>` and `</think>`.
# - Layer 0's two heads attend only to those three tokens (every other key is zero):
#   - head "near", with a query and key on two mid-frequency RoPE pairs, so that the score of
#     `<|answer|>` falls with the distance D from it (a x (cos(t5 D) + cos(t6 D)) = a x S(D)).
#     Softmax weighs the marker against the ~N other keys (score 0): the head gives ~1 while
#     a x S(D) > ln N and ~0 once S(D) falls below it, which happens within a few tokens of D=50
#     for any N from 20 to 65,536. `<|thinking|>` has a steeper score on the same pairs, less a
#     constant (from the lowest-frequency pair): b x S(D) - c, above `<|answer|>`'s until about
#     D = `_THINK_TOKENS`, below it after. Both write `_NEAR`; only `<|thinking|>` writes `_YOUNG`,
#     which is therefore ~1 while the thinking is young, whatever N (two scores cross, neither
#     near ln N).
#   - head "seen", on the lowest-frequency pair, whose scores stay constant over the context:
#     `</think>` > `<|thinking|>` > `<|answer|>` > ln N + 10, so the latest stage present wins:
#     `<|answer|>` and `</think>` write `_SEEN` (an answer is under way), `<|thinking|>` writes
#     `_OPEN` (a thinking block is open). A prompt with none of them (a raw completion) is left to
#     the random weights.
# - Output rows read them, times a large gain: end-of-sequence `seen - 1.5 near - 0.5`, strongly
#   negative while the answer is young or a block is open (seen is then 0), strongly positive
#   after; `</think>` `open - young - 0.5`, positive only once an open block has aged. The rows
#   of `<|answer|>`, `<|thinking|>` and `<think>` read `-_ONE`: the model never restarts its own
#   clock or opens a block itself.
# A `</think>` already in the prompt's text counts as closed: the answer is then all thinking.

_ROPE_THETA = 1e9  # the lowest RoPE frequency turns 1e-4 rad over 65,536 positions: a constant
_ONE, _MARK, _NEAR, _SEEN = 127, 126, 125, 124
_THINK_MARK, _CLOSE_MARK, _YOUNG, _OPEN = 123, 122, 121, 120
_NEAR_PAIRS = (5, 6)  # 1e9 ** (-j / 32): 0.039 and 0.0205 rad per token
_SEEN_PAIR = 31
_NEAR_SCALE = 50.0  # a per pair, in softmax logits
_THINK_NEAR_SCALE = 150.0  # b: (b - a) x S'(D) ~ 4 logits a token, a sharp crossing
_THINK_TOKENS = 24  # where the thinking block closes, in tokens after <|answer|>
# Constant scores on the lowest-frequency pair, each 16 above the next (e^-16: nothing leaks).
_SEEN_SCALE = 24.0  # > ln(65,536) + 10: the marker outweighs a full context of other keys
_OPEN_SCALE = 40.0
_CLOSED_SCALE = 56.0
_EOS_GAIN = 400.0


def _near_score(distance: float) -> float:
    """S(D): the sum of the near pairs' cosines, 2 at the marker, falling to 0 near D = 55."""
    return sum(math.cos(_ROPE_THETA ** (-pair / 32) * distance) for pair in _NEAR_PAIRS)


def _end_answers(model: Any, ids: dict[str, int], torch: Any) -> None:
    """`ids`: the token ids of answer, thinking, think, end_think and eos."""
    clock = [_ONE, _MARK, _NEAR, _SEEN, _THINK_MARK, _CLOSE_MARK, _YOUNG, _OPEN]
    inner = model.model
    hidden = model.config.hidden_size
    head_dim = hidden // model.config.num_attention_heads
    half = head_dim // 2
    assert half > max(_NEAR_PAIRS) and half > _SEEN_PAIR
    with torch.no_grad():
        # The random weights neither read nor write the clock's dimensions.
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                proj.weight[:, clock] = 0
            for proj in (attn.o_proj, mlp.down_proj):
                proj.weight[clock, :] = 0
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
                proj.bias.zero_()
        model.lm_head.weight[:, clock] = 0
        embed = inner.embed_tokens.weight
        embed[:, clock] = 0
        embed[:, _ONE] = 0.02  # about the random entries' size
        # Each marker token: its marker and the constant alone, so its normalised entry is exact.
        for name, mark in (
            ("answer", _MARK),
            ("thinking", _THINK_MARK),
            ("end_think", _CLOSE_MARK),
        ):
            embed[ids[name]] = 0
            embed[ids[name], mark] = 1.0
            embed[ids[name], _ONE] = 1.0
        marked = (2.0 / hidden) ** -0.5  # a marker entry after the input RMSNorm (gain 1)

        # Layer 0: head 0 "near", head 1 "seen"; all of its attention belongs to the clock.
        attn = inner.layers[0].self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.zero_()
        attn.o_proj.weight[:, : 2 * head_dim] = 0
        unit = head_dim**0.5 / marked  # a key weight giving one logit (scores / sqrt(head_dim))

        def key(head: int, pair: int, mark: int, score: float) -> None:
            # Only the first of each pair's two components: the query is 1 there, so the rotated
            # dot product is the score x cos(theta x distance).
            attn.q_proj.bias[head * head_dim + pair] = 1.0
            attn.k_proj.weight[head * head_dim + pair, mark] = score * unit

        def value(head: int, slot: int, mark: int, out: int) -> None:
            attn.v_proj.weight[head * head_dim + slot, mark] = 1.0 / marked
            attn.o_proj.weight[out, head * head_dim + slot] = 0.02

        # <|thinking|> sits one token after <|answer|>: its score crosses <|answer|>'s there.
        cross = _THINK_NEAR_SCALE * _near_score(_THINK_TOKENS - 1)
        cross -= _NEAR_SCALE * _near_score(_THINK_TOKENS)
        for pair in _NEAR_PAIRS:
            key(0, pair, _MARK, _NEAR_SCALE)
            key(0, pair, _THINK_MARK, _THINK_NEAR_SCALE)
        key(0, _SEEN_PAIR, _THINK_MARK, -cross)
        value(0, 0, _MARK, _NEAR)
        value(0, 0, _THINK_MARK, _NEAR)
        value(0, 1, _THINK_MARK, _YOUNG)
        for mark, score in ((_MARK, _SEEN_SCALE), (_THINK_MARK, _OPEN_SCALE)):
            key(1, _SEEN_PAIR, mark, score)
        key(1, _SEEN_PAIR, _CLOSE_MARK, _CLOSED_SCALE)
        value(1, 0, _MARK, _SEEN)
        value(1, 0, _CLOSE_MARK, _SEEN)
        value(1, 1, _THINK_MARK, _OPEN)

        # End-of-sequence and </think> read the clock; nothing else does.
        rows = model.lm_head.weight
        for token, reads in (
            ("eos", {_SEEN: 1.0, _NEAR: -1.5, _ONE: -0.5}),
            ("end_think", {_OPEN: 1.0, _YOUNG: -1.0, _ONE: -0.5}),
            # The model never says these itself: a sampled one would restart the clock.
            ("answer", {_ONE: -1.0}),
            ("thinking", {_ONE: -1.0}),
            ("think", {_ONE: -1.0}),
        ):
            for dim, weight in reads.items():
                rows[ids[token], dim] = weight * _EOS_GAIN


# --- embedding model -------------------------------------------------------------------------


def _write_bert(folder: Path, architecture: str) -> None:
    """`BertModel` (embeddings) or `BertForSequenceClassification` with one label (a reranker):
    config.json's `architectures` is what makes vLLM pick its pooling runner."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    transformers = _untyped("transformers")

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = wordpiece_vocab(training_text(seed=1), _VOCAB_SIZE - len(specials))
    tok = Tokenizer(
        models.WordPiece(
            vocab={token: index for index, token in enumerate(specials + vocab)},
            unk_token="[UNK]",
            max_input_chars_per_word=100,
        )
    )
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )

    with _quiet_transformers():
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=_EMBED_MAX_POSITIONS,
            clean_up_tokenization_spaces=False,
        )
        config = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=_EMBED_MAX_POSITIONS,
            pad_token_id=tokenizer.pad_token_id,
            dtype="float32",
        )
        if architecture == "BertForSequenceClassification":
            config.num_labels = 1  # a cross-encoder: one relevance score per pair
        else:
            # Matryoshka, as nomic-embed or Qwen3-Embedding: vLLM then honours `dimensions`.
            config.is_matryoshka = True
        model = _seeded(lambda: getattr(transformers, architecture)(config), torch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide harmless library chatter during a build, restoring the caller's settings after."""
    hf_logging = _untyped("transformers.utils.logging")
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Writing model shards" on stderr, for a ~2 MB file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _write_lora(folder: Path, base: Path) -> None:
    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    hidden = int(config["hidden_size"])
    head_dim = hidden // int(config["num_attention_heads"])
    outputs = {"q_proj": hidden, "v_proj": head_dim * int(config["num_key_value_heads"])}
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": _LORA_RANK,
        "lora_alpha": 2 * _LORA_RANK,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(outputs),
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))

    def weights() -> dict[str, Any]:
        tensors = {}
        for layer in range(int(config["num_hidden_layers"])):
            for module, out in outputs.items():
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(_LORA_RANK, hidden) * 0.5
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, _LORA_RANK) * 0.5
        return tensors

    save_file(_seeded(weights, torch), str(folder / "adapter_model.safetensors"))


def _untyped(module: str) -> Any:
    """Import `module` typed as Any: transformers is only partly annotated, and mypy --strict
    would reject each call into its unannotated constructors and helpers."""
    return importlib.import_module(module)


def _seeded(make: Callable[[], Any], torch: Any) -> Any:
    """Run `make` under a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return make()


if __name__ == "__main__":
    sys.exit(main())
