"""Describe models on disk the way Ollama's /api/tags, /api/show and /api/ps need.

Everything is read from a model's own Hugging Face style files (config.json, safetensors headers,
tokenizer_config.json, chat_template.jinja, generation_config.json). Weights are never loaded:
parameter counts come from the safetensors headers, and the digest hashes file metadata, so
describing a multi-GB model costs a few small reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any

from vllama.config.units import format_parameter_count


class ModelFormatError(ValueError):
    """A model folder (or the derived-model store) is missing or malformed."""


@dataclass(frozen=True)
class ModelDetails:
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    parent_model: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"parent_model": data.pop("parent_model"), **data}  # Ollama's key order


@dataclass(frozen=True)
class ModelFiles:
    """One model folder. `digest` is NOT Ollama's content digest (a sha256 of a blob): it hashes
    each file's relative path, size and mtime plus config.json's bytes, so it changes whenever
    the files do, without reading gigabytes of weights."""

    path: Path
    size: int
    modified_at: datetime
    digest: str
    details: ModelDetails
    config: dict[str, Any]
    context_length: int | None
    template: str
    capabilities: list[str]
    parameter_count: int = 0
    weight_bytes: int = 0  # the weight files vLLM loads (`size` counts every file)
    weight_files: tuple[Path, ...] = ()  # those files
    generation_config: dict[str, Any] = field(default_factory=dict)
    # What parser detection reads (catalog.families): the tokenizer's special and added tokens,
    # the top-level file names, tokenizer_config.json.
    special_tokens: frozenset[str] = frozenset()
    file_names: frozenset[str] = frozenset()
    tokenizer_config: dict[str, Any] = field(default_factory=dict)

    def model_info(self) -> dict[str, object]:
        family = self.details.family
        info: dict[str, object] = {
            "general.architecture": family,
            "general.parameter_count": self.parameter_count,
            "general.basename": _basename(self.path),
        }
        # Multimodal configs keep the language model's sizes in text_config.
        text = self.config.get("text_config")
        merged = dict(text) if isinstance(text, dict) else {}
        merged.update(self.config)
        scalars = {k: v for k, v in merged.items() if _is_scalar(v) and k not in _INFO_SKIP}
        for source, target in _INFO_RENAMES:
            if source in scalars:
                info[f"{family}.{target}"] = scalars.pop(source)
        if self.context_length is not None:
            info.setdefault(f"{family}.context_length", self.context_length)
        for key in sorted(scalars):
            info.setdefault(f"{family}.{key}", scalars[key])
        vision = self.config.get("vision_config")
        if isinstance(vision, dict):
            for key in sorted(vision):
                if _is_scalar(vision[key]) and key not in _INFO_SKIP:
                    info[f"{family}.vision.{key}"] = vision[key]
        return info


_INFO_RENAMES = (
    ("max_position_embeddings", "context_length"),
    ("hidden_size", "embedding_length"),
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("intermediate_size", "feed_forward_length"),
    ("vocab_size", "vocab_size"),
)
# Bookkeeping, not architecture; model_type is already general.architecture.
_INFO_SKIP = frozenset({"model_type", "transformers_version", "_name_or_path"})

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")

# Capabilities (Ollama's `capabilities`): what the architecture can serve.
# Encoders without a language-model head: all they can serve is embeddings.
_DTYPE_LEVELS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_LEVEL_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def read_model(path: Path) -> ModelFiles:
    """Describe the model folder `path`; `ModelFormatError` if it is not one."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir():
        raise ModelFormatError(f"{path}: not a folder")
    if not config_file.is_file():
        raise ModelFormatError(f"{path}: no config.json, so not a Hugging Face model folder")
    config_bytes = config_file.read_bytes()
    config = json_object(config_bytes, config_file)
    files = _regular_files(path)
    manifest = hashlib.sha256()
    for rel, stat in files:
        manifest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    manifest.update(config_bytes)
    newest = max(stat.st_mtime for _, stat in files)

    count, level, fmt, weight_files = _weights(path, config, files)
    details = ModelDetails(
        format=fmt,
        family=_family(config),
        families=_families(config),
        parameter_size=format_parameter_count(count) if fmt else "",
        quantization_level=level,
    )
    template = _template(path)
    tokenizer_config = _optional_json(path / "tokenizer_config.json")
    return ModelFiles(
        path=path,
        size=sum(stat.st_size for _, stat in files),
        modified_at=datetime.fromtimestamp(newest, UTC),
        digest=manifest.hexdigest(),
        details=details,
        config=config,
        context_length=_context_length(config),
        template=template,
        capabilities=capabilities_of(path, config),
        parameter_count=count,
        weight_bytes=sum(f.stat().st_size for f in weight_files),
        weight_files=weight_files,
        generation_config=_optional_json(path / "generation_config.json"),
        special_tokens=_special_tokens(path, tokenizer_config),
        file_names=frozenset(rel for rel, _ in files if "/" not in rel),
        tokenizer_config=tokenizer_config,
    )


def _special_tokens(path: Path, tokenizer_config: dict[str, Any]) -> frozenset[str]:
    """Every added or special token the tokenizer knows, by text (vLLM's parsers look tokens up
    by text and refuse to start without theirs)."""
    found: set[str] = set()
    for key, value in tokenizer_config.items():
        if key.endswith("_token"):
            found.update(_token_texts([value]))
    decoder = tokenizer_config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        found.update(_token_texts(decoder.values()))
    found.update(_token_texts(_optional_json(path / "tokenizer.json").get("added_tokens") or []))
    # A Mistral-native folder's tokenizer (tekken.json) lists its control tokens itself.
    found.update(_token_texts(_optional_json(path / "tekken.json").get("special_tokens") or []))
    return frozenset(found)


def _token_texts(items: Any) -> list[str]:
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            text = item.get("content", item.get("token_str"))
            if isinstance(text, str):
                texts.append(text)
    return texts


def json_object(data: bytes, source: Path) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ModelFormatError(f"{source}: expected a JSON object")
    return value


def _optional_json(file: Path) -> dict[str, Any]:
    """An auxiliary JSON file's object, or {}: a broken one must not hide the model."""
    try:
        return json_object(file.read_bytes(), file)
    except (OSError, ModelFormatError):
        return {}


def _regular_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of every file, sorted; HF cache snapshots hold symlinks to blobs,
    so stat follows them. Hidden folders (.git, .cache of `hf download`) are not the model."""
    found: list[tuple[str, os.stat_result]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            full = Path(folder, name)
            try:
                info = full.stat()
            except OSError:  # a dangling symlink: an interrupted download
                continue
            if S_ISREG(info.st_mode):
                found.append((full.relative_to(root).as_posix(), info))
    found.sort(key=lambda item: item[0])
    return found


def _weights(
    path: Path, config: dict[str, Any], files: list[tuple[str, os.stat_result]]
) -> tuple[int, str, str, tuple[Path, ...]]:
    """(parameter count, quantization level, format, the files vLLM loads); format "" when there
    are no weights. Only the weights vLLM loads count: an index's shards, else the top-level
    files (never an `original/` copy or a consolidated twin)."""
    quant = config.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    quant_level = str(method).upper() if method else ""

    shards = _safetensors_shards(path, files)
    if shards:
        per_dtype: Counter[str] = Counter()
        for shard in shards:
            for dtype, elements in _safetensors_counts(shard).items():
                per_dtype[dtype] += elements
        dominant = max(sorted(per_dtype), key=lambda d: per_dtype[d]) if per_dtype else ""
        level = quant_level or ("FP8" if dominant.startswith("F8") else dominant)
        return sum(per_dtype.values()), level, "safetensors", tuple(shards)

    pickled = [
        (path / rel, stat.st_size)
        for rel, stat in files
        if "/" not in rel and rel.endswith((".bin", ".pt", ".pth")) and "training_args" not in rel
    ]
    if pickled:
        torch_dtype = config.get("torch_dtype") or config.get("dtype")
        level = _DTYPE_LEVELS.get(str(torch_dtype), "")
        # Without a header to read, estimate; half precision is the common case when unstated.
        count = sum(size for _, size in pickled) // _LEVEL_BYTES.get(level, 2)
        return count, quant_level or level, "pytorch", tuple(file for file, _ in pickled)
    return 0, quant_level, "", ()


def _safetensors_shards(path: Path, files: list[tuple[str, os.stat_result]]) -> list[Path]:
    # Some repos (Mistral's) ship a consolidated copy beside the shards; the index names the set
    # that transformers loads, so the count isn't doubled.
    index = _optional_json(path / "model.safetensors.index.json").get("weight_map")
    if isinstance(index, dict) and index:
        listed = sorted({str(name) for name in index.values()})
        if all((path / name).is_file() for name in listed):
            return [path / name for name in listed]
    return [path / rel for rel, _ in files if "/" not in rel and rel.endswith(".safetensors")]


def _safetensors_counts(file: Path) -> dict[str, int]:
    """Elements per dtype, from the header alone: an 8-byte little-endian length, then JSON."""
    try:
        with file.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise ModelFormatError(f"{file}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise ModelFormatError(f"{file}: safetensors header of {length} bytes")
            header = json_object(handle.read(length), file)
    except OSError as exc:
        raise ModelFormatError(f"{file}: unreadable ({exc})") from exc
    counts: Counter[str] = Counter()
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        elements = 1
        for dim in entry.get("shape", []):
            elements *= int(dim)
        counts[str(entry.get("dtype", ""))] += elements
    return dict(counts)


def _family(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    return str(model_type) if model_type else "unknown"


def _families(config: dict[str, Any]) -> list[str]:
    families = [_family(config)]
    for sub in ("text_config", "vision_config"):
        part = config.get(sub)
        if isinstance(part, dict) and part.get("model_type"):
            name = str(part["model_type"])
            if name not in families:
                families.append(name)
    return families


def _context_length(config: dict[str, Any]) -> int | None:
    text = config.get("text_config")
    for source in (config, text if isinstance(text, dict) else {}):
        for key in _CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


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


def _template(path: Path) -> str:
    """The chat template; chat_template.jinja wins, as it does for transformers."""
    try:
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    for file in ("tokenizer_config.json", "chat_template.json"):
        value = _optional_json(path / file).get("chat_template")
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            named = {
                item.get("name"): item.get("template") for item in value if isinstance(item, dict)
            }
            chosen = named.get("default", next(iter(named.values()), None))
            if isinstance(chosen, str):
                return chosen
    return ""


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _basename(path: Path) -> str:
    # An HF cache snapshot is named after its revision; the repo is two levels up.
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.rsplit("--", 1)[-1]
    return path.name
