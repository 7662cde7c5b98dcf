"""Tiny, deterministic models that real vLLM serves, built locally with no model hub.

No machine here reaches a hub, yet tests and the out-of-the-box demo need real vLLM workers. These
models have random weights (their text is gibberish), but every request path is real: tokenizer,
chat template, sampling, streaming, usage counts, embeddings. They are small (a few MB), build in
seconds, and are cached: a complete build is recognised by a marker file written last, so callers
can ask for them on every start.

Builds are atomic: a model is assembled in a temporary sibling folder and renamed into place, and
builders of the same folder are serialised with a lock file, so two processes racing or a crash
mid-build never leave a half model where vLLM would load it.

Heavy libraries (torch, transformers, tokenizers) are imported inside the builders so that importing
this module stays cheap for the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import os
import random
import secrets
import shutil
import string
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHAT_MODEL_DIRNAME = "vllama-tiny-chat"
EMBED_MODEL_DIRNAME = "vllama-tiny-embed"

_MARKER = ".vllama-demo-complete"
# Bump a version whenever what a builder writes changes, so cached folders are rebuilt.
_CHAT_FORMAT = "vllama-tiny-chat/1"
_EMBED_FORMAT = "vllama-tiny-embed/1"

_VOCAB_SIZE = 1000
_CHAT_MAX_POSITIONS = 2048
_EMBED_MAX_POSITIONS = 512

# Any role renders, so OpenAI "tool" messages don't make a request fail; `content` may be null on
# assistant messages that carry tool calls. Testing `is string` (rather than looping over parts)
# makes vLLM detect the "string" content format and flatten text parts for us.
_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- endif -%}"
    "{{- eos_token + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# Real English words make ordinary prompts tokenize into fewer pieces; the generated pseudo-words
# give the BPE/WordPiece trainers enough distinct pairs to fill the vocabulary.
_ENGLISH = (
    "the a an and or but of to in on at for with from by is are was be have has it this that "
    "you i we they he she what why how who when where which hello hi world model answer question "
    "tell me say please thanks yes no one two three four five red green blue sky sea sun day night "
    "time good new old first last long short big small user system assistant json true false"
).split()
_ONSETS = ("", *"b c d f g h k l m n p r s t v w z br ch cl dr gr pl sh st th tr".split())
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "rk")


def build_chat_model(dest: Path) -> Path:
    """Build (once) a tiny Llama chat model with a byte-level BPE tokenizer at `dest`."""
    return _build_once(Path(dest), _CHAT_FORMAT, _write_chat_model)


def build_embedding_model(dest: Path) -> Path:
    """Build (once) a tiny BERT embedding model with a WordPiece tokenizer at `dest`."""
    return _build_once(Path(dest), _EMBED_FORMAT, _write_embedding_model)


def ensure_demo_models(models_dir: Path) -> dict[str, Path]:
    """Both demo models under `models_dir`, built on first use."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    return {
        "chat": build_chat_model(models_dir / CHAT_MODEL_DIRNAME),
        "embed": build_embedding_model(models_dir / EMBED_MODEL_DIRNAME),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllama.demo.build",
        description="Build the tiny demo models (chat and embedding) that vLLM can serve.",
    )
    parser.add_argument("models_dir", type=Path, help="folder to build the models in")
    args = parser.parse_args(argv)
    for kind, path in ensure_demo_models(args.models_dir).items():
        print(f"{kind}: {path}")
    return 0


# --- atomic, idempotent building -------------------------------------------------------------


def _is_complete(folder: Path, fmt: str) -> bool:
    try:
        return (folder / _MARKER).read_text(encoding="utf-8").strip() == fmt
    except OSError:
        return False


def _build_once(dest: Path, fmt: str, write: Callable[[Path], None]) -> Path:
    dest = dest.absolute()
    if _is_complete(dest, fmt):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.parent / f".{dest.name}.lock"):
        # Another process may have finished the build while we waited for the lock.
        if _is_complete(dest, fmt):
            return dest
        # Holding the lock means no one else is building: leftovers are from crashed builds.
        for stale in [
            *dest.parent.glob(f".{dest.name}.tmp-*"),
            *dest.parent.glob(f".{dest.name}.old-*"),
        ]:
            shutil.rmtree(stale, ignore_errors=True)
        # Not mkdtemp: its folders are private (0700), and a plain mkdir honours the umask, so a
        # vLLM worker running as another user can read the model like any other file.
        tmp = _sibling(dest, "tmp")
        tmp.mkdir()
        try:
            write(tmp)
            marker = tmp / _MARKER
            marker.write_text(fmt + "\n", encoding="utf-8")
            # safetensors writes its files 0600; give every file the mode the umask gives a new one.
            mode = marker.stat().st_mode & 0o777
            for file in tmp.rglob("*"):
                if file.is_file():
                    file.chmod(mode)
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _sibling(dest: Path, kind: str) -> Path:
    """A fresh hidden name beside `dest`: same file system, so renames between them are atomic."""
    return dest.parent / f".{dest.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move `src` to `dest`; an outdated or partial `dest` is swapped out, never merged into."""
    # rename(2) replaces only a missing or empty directory: move anything else aside first, so a
    # reader sees either the old folder or the new one, never a mixture.
    if dest.exists() or dest.is_symlink():
        trash = _sibling(dest, "old")
        os.replace(dest, trash)
        os.replace(src, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dest)


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


# --- training text ---------------------------------------------------------------------------


def _training_text(seed: int, sentences: int = 4000) -> list[str]:
    """Deterministic pseudo-English: a seeded lexicon, Zipf-like word choice, some punctuation."""
    rng = random.Random(seed)
    lexicon = list(_ENGLISH)
    while len(lexicon) < 3000:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            for _ in range(rng.randint(1, 3))
        )
        if word:
            lexicon.append(word)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    lines: list[str] = []
    for _ in range(sentences):
        words = rng.choices(lexicon, weights=weights, k=rng.randint(3, 14))
        words[0] = words[0].capitalize()
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        if rng.random() < 0.2:
            words[rng.randrange(len(words))] += ","
        lines.append(" ".join(words) + rng.choice(".....?!:"))
    # WordPiece has no byte fallback: every printable ASCII character must occur, both starting a
    # word and inside one ("##x"), or words holding it become [UNK].
    chars = string.ascii_letters + string.digits
    lines.append(" ".join(c + c + c for c in chars))
    lines.append(" ".join(string.punctuation))
    return lines


# --- chat model ------------------------------------------------------------------------------


def _write_chat_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    transformers = _untyped("transformers")

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(seed=0), trainer=trainer)
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
            num_key_value_heads=1,
            max_position_embeddings=_CHAT_MAX_POSITIONS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            # Tied embeddings keep the folder small; vLLM's Llama honours the flag.
            tie_word_embeddings=True,
            dtype="float32",
        )
        model = _seeded(lambda: transformers.LlamaForCausalLM(config), torch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


# --- embedding model -------------------------------------------------------------------------


def _write_embedding_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    transformers = _untyped("transformers")

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = _wordpiece_vocab(_training_text(seed=1), _VOCAB_SIZE - len(specials))
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
        # config.json's `architectures: ["BertModel"]` is what makes vLLM pick its pooling runner.
        model = _seeded(lambda: transformers.BertModel(config), torch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _wordpiece_vocab(text: list[str], size: int) -> list[str]:
    """A WordPiece vocabulary of at most `size` tokens learned from `text`, the same on every run.

    tokenizers' WordPieceTrainer is not deterministic: it numbers the "##x" pieces in hash-map
    order, which differs between processes, and that order breaks ties between equally frequent
    merges, so two builds got different vocabularies. Its plain BPE trainer is deterministic, so
    this learns subwords with it and converts them: a word's first piece keeps its form, the
    others get the "##" prefix, and the most frequent pieces are kept, in a fixed order.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.BertNormalizer(lowercase=True)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=size, show_progress=False))
    words: Counter[str] = Counter()
    for line in text:
        normalized = bpe.normalizer.normalize_str(line)
        words.update(word for word, _ in bpe.pre_tokenizer.pre_tokenize_str(normalized))
    # Every character seen, in both positions, so no training word ever becomes [UNK].
    required = {word[0] for word in words} | {"##" + c for word in words for c in word[1:]}
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        tokens = [token.value for token in bpe.model.tokenize(word)]
        pieces[tokens[0]] += count
        for token in tokens[1:]:
            pieces["##" + token] += count
    ranked = sorted(pieces.items(), key=lambda item: (-item[1], item[0]))
    chosen = set(required)
    for token, _ in ranked:
        if len(chosen) >= size:
            break
        chosen.add(token)
    return sorted(chosen)


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
