"""What a model can do (Ollama's `capabilities`), read from its own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Encoders without a language-model head: all they can serve is embeddings.
_ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "nomic_bert", "distilbert", "mpnet", "electra"}
    | {"deberta", "deberta-v2", "modernbert", "camembert", "new"}
)
_GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "ForSeq2SeqLM")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")
# sentence-transformers ships these beside any model it wraps, decoder-based embedders included.
_SENTENCE_TRANSFORMERS_FILES = ("config_sentence_transformers.json", "modules.json")


def capabilities_of(path: Path, config: dict[str, Any]) -> list[str]:
    """What the architecture can serve. Tools and thinking depend on vLLM's parsers as well:
    `catalog.families` decides those, and the registry adds them."""
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if any((path / f).is_file() for f in _SENTENCE_TRANSFORMERS_FILES):
        return ["embedding"]
    if any(a.endswith(_CLASSIFIER_SUFFIXES) for a in architectures):
        return ["rerank"]  # cross-encoders and classifiers: /rerank, /score, /classify
    generative = any(a.endswith(_GENERATIVE_SUFFIXES) for a in architectures)
    # A bare backbone (BertModel, LlamaModel) has no LM head: all it gives is hidden states.
    backbone = any(a.endswith("Model") for a in architectures)
    if not generative and (backbone or config.get("model_type") in _ENCODER_TYPES):
        return ["embedding"]
    capabilities = ["completion"]
    if isinstance(config.get("vision_config"), dict):
        capabilities.append("vision")
    return capabilities
