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
_CHAT_FORMAT = "vllama-tiny-chat/4"
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
# switched by `enable_thinking`). Any role renders, so OpenAI "tool" messages never make a request
# fail; `content` may be null on assistant messages that carry tool calls. Testing `is string`
# (rather than looping over parts) makes vLLM detect the "string" content format and flatten text
# parts for us. Tool arguments arrive as an object (Ollama) or a JSON string (OpenAI).
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
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)
# Added to the vocabulary whole: vLLM's parsers look for these exact tokens.
_CHAT_MARKERS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
# Opens the answer being generated (only there: history turns do not hold it), so the model can
# measure how far its answer has gone and end it (see `_end_answers`).
_ANSWER_TOKEN = "<|answer|>"


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

    specials = ["<unk>", "<s>", "</s>", "<pad>", *_CHAT_MARKERS, _ANSWER_TOKEN]
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
        eos = int(tokenizer.eos_token_id)
        _end_answers(model, int(tokenizer.convert_tokens_to_ids(_ANSWER_TOKEN)), eos, torch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


# --- answers that end -----------------------------------------------------------------------
#
# The chat model's weights are random, except for a clock built by hand: greedy or sampled, it
# emits end-of-sequence about `_ANSWER_TOKENS` tokens after the `<|answer|>` token that opens the
# answer being generated, whatever the prompt's length. Four residual dimensions that the random
# weights neither read nor write carry it:
# - `_MARK` is set only in the embedding of `<|answer|>`; `_ONE` is a constant in every embedding.
# - Layer 0's two heads attend only to `<|answer|>` (every other key is zero; a key from
#   `_MARK` alone): head "near" with a query and key on two mid-frequency RoPE pairs, so its
#   score falls with the distance D from `<|answer|>` (a x (cos(t5 D) + cos(t6 D))), head
#   "seen" on the lowest-frequency pair, whose score stays constant over the whole context.
#   Softmax weighs the marker against the ~N other keys (score 0): "near" gives ~1 while
#   a x S(D) > ln N and ~0 once S(D) falls below it, which happens within a few tokens of D=50
#   for any N from 20 to 65,536; "seen" gives ~1 whenever the prompt holds the marker at all, so a
#   prompt without one (a raw completion) is left to the random weights.
# - Each head writes its weight (the value is 1 on the marker, 0 elsewhere) to `_NEAR`/`_SEEN`,
#   and end-of-sequence's output row reads `seen - 1.5 near - 0.5` (times a large gain) from
#   them: strongly negative while the answer is young, strongly positive after it. The output row
#   of `<|answer|>` reads `-_ONE`, so no answer restarts its own clock.

_ROPE_THETA = 1e9  # the lowest RoPE frequency turns 1e-4 rad over 65,536 positions: a constant
_ONE, _MARK, _NEAR, _SEEN = 127, 126, 125, 124
_NEAR_PAIRS = (5, 6)  # 1e9 ** (-j / 32): 0.039 and 0.0205 rad per token
_SEEN_PAIR = 31
_NEAR_SCALE = 50.0  # a per pair, in softmax logits
_SEEN_SCALE = 24.0  # > ln(65,536) + 10: the marker outweighs a full context of other keys
_EOS_GAIN = 400.0


def _end_answers(model: Any, answer_id: int, eos_id: int, torch: Any) -> None:
    clock = [_ONE, _MARK, _NEAR, _SEEN]
    inner = model.model
    hidden = model.config.hidden_size
    head_dim = hidden // model.config.num_attention_heads
    half = head_dim // 2
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
        # <|answer|>: the marker and the constant alone, so its normalised marker entry is exact.
        embed[answer_id] = 0
        embed[answer_id, _MARK] = 1.0
        embed[answer_id, _ONE] = 1.0
        marked = (2.0 / hidden) ** -0.5  # its _MARK entry after the input RMSNorm (gain 1)

        # Layer 0: head 0 "near", head 1 "seen"; all of its attention belongs to the clock.
        attn = inner.layers[0].self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.zero_()
        attn.o_proj.weight[:, : 2 * head_dim] = 0
        scale = head_dim**0.5  # scores are divided by sqrt(head_dim)
        heads = ((0, _NEAR_PAIRS, _NEAR_SCALE, _NEAR), (1, (_SEEN_PAIR,), _SEEN_SCALE, _SEEN))
        for head, pairs, strength, out in heads:
            base = head * head_dim
            for pair in pairs:
                # Only the first of each pair's two components: the rotated dot product is then
                # q x k x cos(theta x distance).
                attn.q_proj.bias[base + pair] = 1.0
                attn.k_proj.weight[base + pair, _MARK] = strength * scale / marked
            attn.v_proj.weight[base, _MARK] = 1.0 / marked
            attn.o_proj.weight[out, base] = 0.02
        assert half > max(_NEAR_PAIRS) and half > _SEEN_PAIR

        # End-of-sequence reads the clock; nothing else does.
        row = model.lm_head.weight[eos_id]
        row[_SEEN] = _EOS_GAIN
        row[_NEAR] = -1.5 * _EOS_GAIN
        row[_ONE] = -0.5 * _EOS_GAIN
        # The model never says <|answer|> itself: a sampled one would restart the clock.
        model.lm_head.weight[answer_id, _ONE] = -_EOS_GAIN


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
