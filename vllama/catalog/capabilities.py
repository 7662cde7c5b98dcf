"""What a model can do (Ollama's `capabilities`), read from its own files."""

from __future__ import annotations

import re
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


def capabilities_of(path: Path, config: dict[str, Any], template: str) -> list[str]:
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if any((path / f).is_file() for f in _SENTENCE_TRANSFORMERS_FILES):
        return ["embedding"]
    if any(a.endswith(_CLASSIFIER_SUFFIXES) for a in architectures):
        return []  # rerankers and classifiers neither generate nor embed through Ollama's API
    generative = any(a.endswith(_GENERATIVE_SUFFIXES) for a in architectures)
    # A bare backbone (BertModel, LlamaModel) has no LM head: all it gives is hidden states.
    backbone = any(a.endswith("Model") for a in architectures)
    if not generative and (backbone or config.get("model_type") in _ENCODER_TYPES):
        return ["embedding"]
    capabilities = ["completion"]
    if re.search(r"\btools\b", template):
        capabilities.append("tools")
    if isinstance(config.get("vision_config"), dict):
        capabilities.append("vision")
    if "enable_thinking" in template or "<think>" in template:
        capabilities.append("thinking")
    return capabilities
