from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from tests.component.fakes import eventually_blocking
from vllama.catalog.adapters import adapter_rank
from vllama.catalog.derived import DerivedModel, DerivedStore
from vllama.catalog.discover import hf_cache_dir, scan_hf_cache, scan_models_dir
from vllama.catalog.files import ModelFormatError, read_model
from vllama.catalog.names import InvalidName, check_name, is_repo_id, normalize_name
from vllama.catalog.pull import loaded_weight_bytes
from vllama.catalog.pulled import PulledNames
from vllama.catalog.registry import FILES_FRESH, Registry, parsers_for
from vllama.catalog.store import StoreError, StoreFull, StoreRefused
from vllama.config.settings import ConfigError, ModelSpec, load_config
from vllama.config.units import format_parameter_count
from vllama.demo.build import ensure_demo_models

LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "vocab_size": 100,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "transformers_version": "4.50.0",
}
BERT_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 8,
    "max_position_embeddings": 512,
}


def make_model(
    folder: Path,
    config: dict[str, Any],
    tensors: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if tensors is None:
        tensors = {"embed": np.zeros((100, 16), np.float32), "norm": np.zeros(16, np.float32)}
    if tensors:
        save_file(tensors, str(folder / "model.safetensors"))
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


def test_normalize_name() -> None:
    assert normalize_name("tiny") == "tiny:latest"
    assert normalize_name("tiny:v1") == "tiny:v1"
    assert normalize_name("org/name") == "org/name:latest"
    assert normalize_name("org/name:q4") == "org/name:q4"
    assert normalize_name("host:5000/org/name") == "host:5000/org/name:latest"
    assert normalize_name("tiny:") == "tiny:latest"
    with pytest.raises(ValueError):
        normalize_name("")


def test_format_parameter_count() -> None:
    assert format_parameter_count(8_030_261_248) == "8.0B"
    assert format_parameter_count(134_515_008) == "135M"
    assert format_parameter_count(1_234) == "1.2K"
    assert format_parameter_count(999) == "999"
    assert format_parameter_count(70_553_706_496) == "70.6B"
    assert format_parameter_count(405_000_000_000) == "405B"


def test_details_from_safetensors_headers(tmp_path: Path) -> None:
    model = read_model(make_model(tmp_path / "m", LLAMA_CONFIG))
    assert model.details.format == "safetensors"
    assert model.details.family == "llama"
    assert model.details.families == ["llama"]
    assert model.parameter_count == 100 * 16 + 16
    assert model.details.parameter_size == "1.6K"
    assert model.details.quantization_level == "F32"
    assert model.details.to_json() == {
        "parent_model": "",
        "format": "safetensors",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.6K",
        "quantization_level": "F32",
    }
    assert model.context_length == 4096


def test_dominant_dtype_and_quant_method(tmp_path: Path) -> None:
    tensors = {
        "big": np.zeros((64, 64), np.float16),
        "small": np.zeros(8, np.float32),
    }
    assert (
        read_model(make_model(tmp_path / "a", LLAMA_CONFIG, tensors)).details.quantization_level
        == "F16"
    )
    quantized = {**LLAMA_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}}
    model = read_model(make_model(tmp_path / "b", quantized, tensors))
    assert model.details.quantization_level == "AWQ"


def test_sharded_safetensors_are_summed_once(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", LLAMA_CONFIG, tensors={})
    save_file(
        {"a": np.zeros((10, 10), np.float32)}, str(folder / "model-00001-of-00002.safetensors")
    )
    save_file({"b": np.zeros(50, np.float32)}, str(folder / "model-00002-of-00002.safetensors"))
    assert read_model(folder).parameter_count == 150
    # A consolidated duplicate beside the shards must not double the count.
    save_file(
        {"a": np.zeros((10, 10), np.float32), "b": np.zeros(50, np.float32)},
        str(folder / "consolidated.safetensors"),
    )
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert read_model(folder).parameter_count == 150


def test_pytorch_bin_is_estimated_from_size(tmp_path: Path) -> None:
    config = {**LLAMA_CONFIG, "torch_dtype": "bfloat16"}
    folder = make_model(tmp_path / "m", config, tensors={})
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 4000)
    details = read_model(folder).details
    assert (details.format, details.parameter_size, details.quantization_level) == (
        "pytorch",
        "2.0K",
        "BF16",
    )


def test_size_modified_at_and_digest(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", LLAMA_CONFIG, files={"tokenizer.json": "{}"})
    first = read_model(folder)
    expected = sum(p.stat().st_size for p in folder.iterdir())
    assert first.size == expected
    assert first.modified_at.tzinfo == UTC
    assert len(first.digest) == 64 and int(first.digest, 16) >= 0
    assert read_model(folder).digest == first.digest  # stable when nothing changes

    (folder / "tokenizer.json").write_text('{"changed": true}')
    second = read_model(folder)
    assert second.digest != first.digest
    assert second.size == first.size + len('{"changed": true}') - 2

    # config.json's bytes are hashed too: same size and mtime, new content, new digest.
    config_file = folder / "config.json"
    stat = config_file.stat()
    text = config_file.read_text()
    config_file.write_text(text.replace('"llama"', '"llamb"'))
    os.utime(config_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert read_model(folder).digest != second.digest


def test_template_discovery(tmp_path: Path) -> None:
    jinja = "{{ messages }}{% if tools %}{{ tools }}{% endif %}"
    model = read_model(
        make_model(tmp_path / "a", LLAMA_CONFIG, files={"chat_template.jinja": jinja})
    )
    assert model.template == jinja

    tokenizer = {"chat_template": "{{ enable_thinking }}<think>"}
    files = {"tokenizer_config.json": json.dumps(tokenizer)}
    assert read_model(make_model(tmp_path / "b", LLAMA_CONFIG, files=files)).template == (
        "{{ enable_thinking }}<think>"
    )

    named = {
        "chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]
    }
    files = {"tokenizer_config.json": json.dumps(named)}
    assert read_model(make_model(tmp_path / "c", LLAMA_CONFIG, files=files)).template == "D"

    assert read_model(make_model(tmp_path / "d", LLAMA_CONFIG)).template == ""


def test_capabilities(tmp_path: Path) -> None:
    plain = read_model(
        make_model(tmp_path / "plain", LLAMA_CONFIG, files={"chat_template.jinja": "x"})
    )
    assert plain.capabilities == ["completion"]

    # The architecture's capabilities; tools and thinking come from the parsers (below).
    template = "{% if tools %}...{% endif %}{% if enable_thinking %}<think>{% endif %}"
    rich = {**LLAMA_CONFIG, "vision_config": {"model_type": "siglip", "hidden_size": 4}}
    model = read_model(make_model(tmp_path / "rich", rich, files={"chat_template.jinja": template}))
    assert model.capabilities == ["completion", "vision"]
    assert model.details.families == ["llama", "siglip"]

    assert read_model(make_model(tmp_path / "bert", BERT_CONFIG)).capabilities == ["embedding"]
    xlm = {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}
    assert read_model(make_model(tmp_path / "xlm", xlm)).capabilities == ["embedding"]
    # sentence-transformers packaging marks a decoder-based embedder.
    st = make_model(tmp_path / "st", LLAMA_CONFIG, files={"modules.json": "[]"})
    assert read_model(st).capabilities == ["embedding"]
    reranker = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    assert read_model(make_model(tmp_path / "rr", reranker)).capabilities == ["rerank"]


QWEN_LIKE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "<tool_call>{...}</tool_call>{% endif %}"
    "{% if enable_thinking is defined and enable_thinking %}<think>\n{% endif %}"
)


def test_parsers_follow_the_template_and_the_tokens_the_tokenizer_has(tmp_path: Path) -> None:
    markers = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
    tokenizer_config = {
        "eos_token": "</s>",
        "added_tokens_decoder": {str(i): {"content": m} for i, m in enumerate(markers)},
        "chat_template": QWEN_LIKE,
    }
    files = {"tokenizer_config.json": json.dumps(tokenizer_config)}
    model = read_model(make_model(tmp_path / "q", LLAMA_CONFIG, files=files))
    assert set(markers) | {"</s>"} <= model.special_tokens
    parsers = parsers_for(ModelSpec(model=str(model.path)), model)
    assert (parsers.tool_parser, parsers.reasoning_parser) == ("hermes", "qwen3")
    assert parsers.engine_args() == (
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--reasoning-parser", "qwen3",
    )  # fmt: skip
    # Overrides: "none" turns a role off; explicit args win and are not repeated.
    off = parsers_for(ModelSpec(model=str(model.path), reasoning_parser="none"), model)
    assert off.reasoning_parser is None and off.tool_parser == "hermes"
    given = ModelSpec(model=str(model.path), args=("--tool-call-parser", "pythonic"))
    assert parsers_for(given, model).engine_args() == (
        "--enable-auto-tool-choice", "--reasoning-parser", "qwen3",
    )  # fmt: skip
    # Without the think tokens in the vocabulary vLLM would not start: no reasoning parser.
    bare = {"chat_template": QWEN_LIKE}
    files = {"tokenizer_config.json": json.dumps(bare)}
    plain = read_model(make_model(tmp_path / "bare", LLAMA_CONFIG, files=files))
    assert parsers_for(ModelSpec(model=str(plain.path)), plain).reasoning_parser is None


def test_parser_overrides_are_checked_when_the_config_loads() -> None:
    assert ModelSpec(model="m", tool_parser="none").tool_parser == "none"
    with pytest.raises(ValueError, match="unknown tool parser 'nope'"):
        ModelSpec(model="m", tool_parser="nope")
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        ModelSpec(model="m", reasoning_parser="hermes")


def test_model_info(tmp_path: Path) -> None:
    info = read_model(make_model(tmp_path / "my-model", LLAMA_CONFIG)).model_info()
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] == 1616
    assert info["general.basename"] == "my-model"
    assert info["llama.context_length"] == 4096
    assert info["llama.embedding_length"] == 16
    assert info["llama.block_count"] == 2
    assert info["llama.attention.head_count"] == 4
    assert info["llama.attention.head_count_kv"] == 2
    assert info["llama.feed_forward_length"] == 32
    assert info["llama.vocab_size"] == 100
    assert info["llama.rms_norm_eps"] == 1e-5
    assert info["llama.tie_word_embeddings"] is True
    for absent in ("llama.hidden_size", "llama.rope_scaling", "llama.architectures"):
        assert absent not in info
    assert "llama.transformers_version" not in info
    assert list(info) == list(read_model(tmp_path / "my-model").model_info())


def test_context_length_variants(tmp_path: Path) -> None:
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 1024}
    assert read_model(make_model(tmp_path / "g", gpt2)).context_length == 1024
    nested = {"model_type": "llava", "text_config": {"max_position_embeddings": 8192}}
    assert read_model(make_model(tmp_path / "n", nested)).context_length == 8192
    assert read_model(make_model(tmp_path / "x", {"model_type": "x"})).context_length is None


def test_read_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="not a folder"):
        read_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=r"config\.json"):
        read_model(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{nope")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_model(tmp_path / "bad")


def test_hf_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "hub-cache"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    assert hf_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"


def test_scan_hf_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    blob = repo / "blobs" / "0123"
    blob.parent.mkdir(parents=True)
    blob.write_text(json.dumps(LLAMA_CONFIG))
    for rev in ("abc", "def"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "config.json").symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (cache / "models--gpt2" / "snapshots" / "r1").mkdir(parents=True)
    (cache / "models--gpt2" / "snapshots" / "r1" / "config.json").write_text("{}")
    (cache / "models--org--nocfg" / "snapshots" / "r1").mkdir(parents=True)
    (cache / "datasets--org--data" / "snapshots" / "r1").mkdir(parents=True)

    found = scan_hf_cache(cache)
    assert found == {
        "gpt2": cache / "models--gpt2/snapshots/r1",
        "org/name": repo / "snapshots/abc",
    }
    model = read_model(found["org/name"])
    assert model.size == blob.stat().st_size  # symlinks followed
    assert model.model_info()["general.basename"] == "name"

    (repo / "refs" / "main").unlink()
    os.utime(repo / "snapshots" / "def", (2e9, 2e9))
    assert scan_hf_cache(cache)["org/name"] == repo / "snapshots/def"
    assert scan_hf_cache(tmp_path / "nowhere") == {}


def test_scan_models_dir(tmp_path: Path) -> None:
    make_model(tmp_path / "tiny", LLAMA_CONFIG, tensors={})
    make_model(tmp_path / "org" / "name", LLAMA_CONFIG, tensors={})
    make_model(tmp_path / ".hidden", LLAMA_CONFIG, tensors={})
    make_model(tmp_path / "org" / ".partial", LLAMA_CONFIG, tensors={})
    (tmp_path / "notes").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert scan_models_dir(tmp_path) == {
        "org/name": tmp_path / "org" / "name",
        "tiny": tmp_path / "tiny",
    }
    assert scan_models_dir(tmp_path / "nowhere") == {}


def test_derived_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "derived.json"
    store = DerivedStore(path)
    assert store.all() == [] and not path.exists()
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    model = DerivedModel(
        name="mine",
        base="tiny",
        system="Be terse.",
        parameters={"temperature": 0.2, "stop": ["</s>"], "num_ctx": 1024},
        created_at=created,
    )
    assert model.name == "mine:latest"
    store.put_blocking(model)
    store.put_blocking(DerivedModel(name="copy:v2", base="mine:latest", created_at=created))

    again = DerivedStore(path)
    assert again.get("mine") == model
    assert again.get("mine:latest") == model
    assert [m.name for m in again.all()] == ["copy:v2", "mine:latest"]
    assert again.get("copy:v2") == DerivedModel("copy:v2", "mine:latest", created_at=created)
    assert again.get("other") is None

    assert again.delete_blocking("mine") is True
    assert again.delete_blocking("mine") is False
    assert [m.name for m in DerivedStore(path).all()] == ["copy:v2"]


def test_derived_store_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "derived.json"
    store = DerivedStore(path)
    store.put_blocking(DerivedModel(name="a", base="tiny"))
    before = path.read_bytes()

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.put_blocking(DerivedModel(name="b", base="tiny"))
    assert len(replaced) == 1
    assert Path(replaced[0][0]).parent == tmp_path and replaced[0][1] == str(path)

    def fail(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", fail)
    current = path.read_bytes()
    with pytest.raises(StoreError, match="I/O error"):
        store.put_blocking(DerivedModel(name="c", base="tiny"))
    assert path.read_bytes() == current != before
    assert store.get("c") is None  # memory holds what the file holds
    with pytest.raises(StoreError):
        store.delete_blocking("a")
    assert store.get("a") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".derived.json.lock", "derived.json"]


def test_derived_store_writers_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that saves slowly is not overtaken by a second one (whose save it would then
    undo with its older document): every model put is in the file."""
    path = tmp_path / "derived.json"
    store = DerivedStore(path)
    real_replace = os.replace
    replaced: list[str] = []
    second_saved = threading.Event()

    def slow_first(src: str, dst: str) -> None:
        replaced.append(src)
        if len(replaced) == 1:
            second_saved.wait(1)  # the first writer is slow; nothing may overtake it
        real_replace(src, dst)
        if len(replaced) > 1:
            second_saved.set()

    monkeypatch.setattr(os, "replace", slow_first)
    first = threading.Thread(target=store.put_blocking, args=(DerivedModel("a", "tiny"),))
    second = threading.Thread(target=store.put_blocking, args=(DerivedModel("b", "tiny"),))
    first.start()
    eventually_blocking(lambda: replaced, within=5, what="the first writer saving", every=0.01)
    second.start()
    first.join()
    second.join()
    assert [m.name for m in DerivedStore(path).all()] == ["a:latest", "b:latest"]
    assert [m.name for m in store.all()] == ["a:latest", "b:latest"]


def test_derived_store_shared_by_two_processes(tmp_path: Path) -> None:
    """Two daemons on one models folder: each change is made to the file as it is now."""
    path = tmp_path / "derived.json"
    one, two = DerivedStore(path), DerivedStore(path)
    one.put_blocking(DerivedModel("a", "tiny"))
    two.put_blocking(DerivedModel("b", "tiny"))
    assert [m.name for m in DerivedStore(path).all()] == ["a:latest", "b:latest"]
    assert two.delete_blocking("a") is True
    one.put_blocking(DerivedModel("c", "tiny"))
    assert [m.name for m in DerivedStore(path).all()] == ["b:latest", "c:latest"]
    assert [m.name for m in one.all()] == ["b:latest", "c:latest"]


def test_derived_store_refuses_what_it_cannot_save(tmp_path: Path) -> None:
    path = tmp_path / "derived.json"
    store = DerivedStore(path)
    store.put_blocking(DerivedModel("a", "tiny"))
    before = path.read_bytes()
    deep: dict[str, object] = {}
    for _ in range(100_000):
        deep = {"x": deep}
    with pytest.raises(StoreRefused, match="cannot be stored"):
        store.put_blocking(DerivedModel("deep", "tiny", parameters=deep))
    assert store.get("deep") is None and path.read_bytes() == before
    store.put_blocking(DerivedModel("b", "tiny"))  # and the store still works
    assert [m.name for m in DerivedStore(path).all()] == ["a:latest", "b:latest"]


def test_pulled_names_saved_before_they_change_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pulled.json"
    names = PulledNames(path)
    names.put("qwen3:8b", "Qwen/Qwen3-8B")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreFull, match="No space left"):
        names.put("qwen3", "Qwen/Qwen3-8B")
    with pytest.raises(StoreFull):
        names.delete("qwen3:8b")
    assert names.all() == {"qwen3:8b": "Qwen/Qwen3-8B"} == PulledNames(path).all()


def test_derived_store_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "derived.json"
    path.write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"derived\.json"):
        DerivedStore(path)
    path.write_text(json.dumps({"models": [{"name": "x"}]}))
    with pytest.raises(ModelFormatError, match=r"derived\.json"):
        DerivedStore(path)


def test_demo_models(tmp_path: Path) -> None:
    paths = ensure_demo_models(tmp_path)
    chat = read_model(paths["chat"])
    assert chat.details.family == "llama"
    assert "completion" in chat.capabilities
    assert chat.template
    assert chat.context_length == 65536
    expected = 0
    for file in sorted(paths["chat"].glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for key in handle.keys():
                expected += int(np.prod(handle.get_slice(key).get_shape()))
    assert chat.parameter_count == expected
    assert chat.details.parameter_size == format_parameter_count(expected)
    assert chat.details.quantization_level == "F32"

    embed = read_model(paths["embed"])
    assert embed.capabilities == ["embedding"]
    assert embed.details.family == "bert"


def write_adapter(folder: Path, rank: int = 4) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_adapters_resolve_to_their_base_models_worker(tmp_path: Path) -> None:
    base = make_model(tmp_path / "base", LLAMA_CONFIG)
    adapter = write_adapter(tmp_path / "adapter", rank=4)
    config = load_config(
        file_data={
            "server": {"models_dir": str(tmp_path / "models")},
            "models": {"base": {"model": str(base), "adapters": {"ad": str(adapter)}}},
        }
    )
    registry = Registry(config)
    resolved = registry.resolve("ad:latest")
    assert (resolved.served_name, resolved.adapter, resolved.upstream_model) == ("base", "ad", "ad")
    assert registry.resolve("base").upstream_model == "base"
    registry.derived.put_blocking(DerivedModel(name="mine", base="base", adapter=str(adapter)))
    mine = registry.resolve("mine")
    assert (mine.served_name, mine.upstream_model) == ("base", "mine")
    args = registry._lora_args(config.models["base"])
    assert args[:5] == ("--enable-lora", "--max-lora-rank", "8", "--max-loras", "2")
    assert {json.loads(a)["name"] for a in args[6:]} == {"ad", "mine"}


def test_adapter_folders_are_checked(tmp_path: Path) -> None:
    assert adapter_rank(write_adapter(tmp_path / "ok", rank=16)) == 16
    with pytest.raises(ModelFormatError, match="not a PEFT adapter"):
        adapter_rank(tmp_path)
    prefix = write_adapter(tmp_path / "prefix")
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ModelFormatError, match="vLLM serves LoRA"):
        adapter_rank(prefix)
    with pytest.raises(ConfigError, match=r"adapters\.ad: local folder"):
        load_config(file_data={"models": {"b": {"model": "org/b", "adapters": {"ad": "/nope"}}}})


def test_the_weights_vllm_loads_are_counted_once() -> None:
    listing = {
        "model-00001-of-00002.safetensors": 5,
        "model-00002-of-00002.safetensors": 3,
        "consolidated.safetensors": 8,  # Mistral's copy of the same weights
        "original/consolidated.00.pth": 8,  # Meta's copy
        "pytorch_model.bin": 9,
        "config.json": 1,
    }
    assert loaded_weight_bytes(listing) == 8
    assert loaded_weight_bytes({"pytorch_model.bin": 9, "original/x.pth": 9}) == 9
    assert loaded_weight_bytes({"config.json": 1}) is None


async def test_local_weights_count_only_what_vllm_loads(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", LLAMA_CONFIG)
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_text("x" * 1000)
    model = read_model(folder)
    assert model.size > model.weight_bytes > 0  # the .pth copy is on disk, not loaded
    # ... and what reading weights ahead reads (engine/page_cache.py)
    assert model.weight_files == tuple(sorted(folder.glob("*.safetensors")))
    assert model.weight_bytes == sum(f.stat().st_size for f in model.weight_files)
    config = load_config(file_data={"models": {"m": {"model": str(folder)}}})
    facts = await Registry(config).facts(config.models["m"])
    assert facts.weight_files == tuple(str(f) for f in model.weight_files)


@pytest.mark.parametrize(
    "name", ["evil\n", "qwen3:8b\n", "org/name\n", "a\n:b", "host:11434/ns/name\n"]
)
def test_a_name_with_a_trailing_newline_is_refused(name: str) -> None:
    # `$` matches before a trailing newline; names are matched whole.
    with pytest.raises(InvalidName):
        check_name(name)


def test_a_repo_id_with_a_trailing_newline_is_not_one() -> None:
    assert is_repo_id("org/name") and not is_repo_id("org/name\n")


async def test_a_folders_description_is_remembered_and_its_removal_seen_once_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every relayed request asks for the files: a fresh description comes from memory, without
    a `stat` of the folder; a folder removed is seen once FILES_FRESH has passed."""
    folder = make_model(tmp_path / "m", LLAMA_CONFIG)
    config = load_config(
        file_data={
            "server": {"models_dir": str(tmp_path / "models")},
            "models": {"m": {"model": str(folder)}},
        }
    )
    registry = Registry(config)
    resolved = registry.resolve("m")
    described = await registry.files(resolved)
    assert described is not None and "completion" in described.capabilities
    stats: list[str] = []
    real_is_dir = Path.is_dir

    def counted_is_dir(self: Path) -> bool:
        stats.append(str(self))
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", counted_is_dir)
    assert await registry.files(resolved) is described
    assert stats == []  # fresh: from memory
    shutil.rmtree(folder)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + FILES_FRESH + 1)
    assert await registry.files(resolved) is None  # stale: looked at again, and gone
    assert await registry.files(registry.resolve("m")) is None
