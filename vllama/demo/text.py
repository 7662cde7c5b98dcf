"""Deterministic training text and a deterministic WordPiece vocabulary for the demo tokenizers."""

from __future__ import annotations

import random
import string

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


def training_text(seed: int, sentences: int = 4000) -> list[str]:
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


def wordpiece_vocab(text: list[str], size: int) -> list[str]:
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
