"""Ollama library names -> repos (`catalog.library`), and which of a repo's files a pull fetches."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vllama.catalog import library
from vllama.catalog.hub import HubFile, PullError
from vllama.catalog.pull import loaded_weight_bytes, select_files, target_of
from vllama.catalog.pulled import PulledNames
from vllama.catalog.registry import ModelNotFound, Registry, with_library_models
from vllama.config.settings import ConfigError, load_config

TABLE = library.parse(
    tomllib.loads(
        """
[qwen3]
default = "8b"
aliases = { "30b-a3b" = "30b" }
[qwen3.sizes]
"0.6b" = { bf16 = "Qwen/Qwen3-0.6B", fp8 = "Qwen/Qwen3-0.6B-FP8" }
"8b" = { bf16 = "Qwen/Qwen3-8B", fp8 = "Qwen/Qwen3-8B-FP8", int4 = "Qwen/Qwen3-8B-AWQ" }
"30b" = { bf16 = "Qwen/Qwen3-30B-A3B" }
["qwen2.5"]
default = "7b"
sizes."7b" = { bf16 = "Qwen/Qwen2.5-7B-Instruct", int8 = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8" }
"""
    ),
    "test",
)


@pytest.mark.parametrize(
    ("requested", "name", "repo"),
    [
        ("qwen3", "qwen3:latest", "Qwen/Qwen3-8B"),
        ("qwen3:latest", "qwen3:latest", "Qwen/Qwen3-8B"),
        ("QWEN3:8B", "qwen3:8B", "Qwen/Qwen3-8B"),
        ("qwen3:8b-q4_K_M", "qwen3:8b-q4_K_M", "Qwen/Qwen3-8B-AWQ"),
        ("qwen3:8b-q4_0", "qwen3:8b-q4_0", "Qwen/Qwen3-8B-AWQ"),
        ("qwen3:8b-instruct-fp16", "qwen3:8b-instruct-fp16", "Qwen/Qwen3-8B"),
        ("qwen3:fp8", "qwen3:fp8", "Qwen/Qwen3-8B-FP8"),
        ("qwen3:0.6b-fp8", "qwen3:0.6b-fp8", "Qwen/Qwen3-0.6B-FP8"),
        ("qwen3:30b-a3b", "qwen3:30b-a3b", "Qwen/Qwen3-30B-A3B"),
        ("library/qwen3:8b", "qwen3:8b", "Qwen/Qwen3-8B"),
        ("registry.ollama.ai/library/qwen3:8b", "qwen3:8b", "Qwen/Qwen3-8B"),
        (
            "qwen2.5:7b-instruct-q8_0",
            "qwen2.5:7b-instruct-q8_0",
            "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8",
        ),
    ],
)
def test_a_library_name_means_one_repo(requested: str, name: str, repo: str) -> None:
    match = library.lookup(requested, TABLE)
    assert match is not None
    assert (match.name, match.repo) == (name, repo)


@pytest.mark.parametrize("requested", ["Qwen/Qwen3-8B", "tiny", "tiny:latest", "org/qwen3"])
def test_other_names_are_not_the_librarys(requested: str) -> None:
    assert library.lookup(requested, TABLE) is None


@pytest.mark.parametrize(
    ("requested", "nearest"),
    [
        # GGUF-only quantizations: the fewest bits away, more bits on a tie.
        ("qwen3:8b-q5_K_M", "qwen3:8b-q4_K_M (Qwen/Qwen3-8B-AWQ)"),
        ("qwen3:8b-q6_K", "qwen3:8b-fp8 (Qwen/Qwen3-8B-FP8)"),
        ("qwen3:8b-q3_K_S", "qwen3:8b-q4_K_M (Qwen/Qwen3-8B-AWQ)"),
        # A precision this size has no repo for.
        ("qwen3:0.6b-q4_K_M", "qwen3:0.6b-fp8 (Qwen/Qwen3-0.6B-FP8)"),
        ("qwen3:30b-a3b-fp8", "qwen3:30b (Qwen/Qwen3-30B-A3B)"),
        ("qwen2.5:7b-fp8", "qwen2.5:7b-q8_0 (Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8)"),
    ],
)
def test_a_tag_with_no_repo_names_the_nearest(requested: str, nearest: str) -> None:
    with pytest.raises(library.LibraryError, match="no vLLM-ready repo") as caught:
        library.lookup(requested, TABLE)
    assert str(caught.value).endswith(f"the nearest is {nearest}")


@pytest.mark.parametrize("requested", ["qwen3:9b", "qwen3:8b-banana", "qwen3:8b-q4_K_M-extra"])
def test_an_unknown_tag_lists_the_sizes(requested: str) -> None:
    with pytest.raises(library.LibraryError, match=r"unknown tag; qwen3 has sizes 0\.6b, 8b, 30b"):
        library.lookup(requested, TABLE)


def test_the_tags_of_an_entry_default_first() -> None:
    assert library.tags(TABLE["qwen3"]) == ["8b", "8b-fp8", "8b-q4_K_M", "0.6b", "0.6b-fp8", "30b"]


def test_an_entry_may_name_the_arguments_its_repos_need() -> None:
    document = {
        "x": {"args": ["--trust-remote-code"], "sizes": {"1b": {"bf16": "a/b", "fp8": "a/c"}}}
    }
    assert library.args_by_repo(library.parse(document, "t")) == {
        "a/b": ("--trust-remote-code",),
        "a/c": ("--trust-remote-code",),
    }
    assert library.args_by_repo(TABLE) == {}


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"x": {"default": "1b"}}, "needs a sizes table"),
        ({"x": {"sizes": {"1b": {"fp8": "a/b"}}}}, 'needs bf16 = "org/name"'),
        ({"x": {"sizes": {"1b": {"bf16": "a/b", "q4": "a/c"}}}}, "unknown precision"),
        ({"x": {"default": "2b", "sizes": {"1b": {"bf16": "a/b"}}}}, "must name sizes"),
        ({"x": {"aliases": {"big": "9b"}, "sizes": {"1b": {"bf16": "a/b"}}}}, "must name sizes"),
        ({"x": {"args": "--trust-remote-code", "sizes": {"1b": {"bf16": "a/b"}}}}, "list of"),
        ({"x": {"sizes": {"1b": {"bf16": "../../etc"}}}}, "not a repo id"),
        ({"x": {"sizes": {"1b": {"bf16": "a/b", "fp8": "just-a-name"}}}}, "not a repo id"),
    ],
)
def test_a_malformed_table_says_where(document: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        library.parse(document, "here.toml")
    assert str(caught.value).startswith("here.toml: [x]")


def test_the_models_folders_table_extends_and_overrides_the_builtin(tmp_path: Path) -> None:
    builtin = library.builtin()
    (tmp_path / "library.toml").write_text(
        '[mine]\nsizes."1b" = { bf16 = "me/mine-1b" }\n'
        '[qwen3]\ndefault = "8b"\nsizes."8b" = { bf16 = "me/my-qwen3" }\n'
    )
    loaded = library.load(tmp_path)
    assert set(loaded) == set(builtin) | {"mine"}
    assert library.lookup("mine", loaded) == library.Match(
        "mine:latest", "me/mine-1b", "1b", "bf16"
    )
    match = library.lookup("qwen3:8b", loaded)
    assert match is not None and match.repo == "me/my-qwen3"


def test_the_builtin_table_is_whole_and_documented() -> None:
    """Every name, size and repo of the shipped table is in docs/MODELS.md, and every repo the
    docs' library table names is in the shipped table."""
    table = library.builtin()
    docs = (Path(__file__).parents[2] / "docs" / "MODELS.md").read_text()
    section = docs[docs.index("## Ollama library names") :]
    repos = {
        repo for entry in table.values() for size in entry.sizes.values() for repo in size.values()
    }
    assert len(table) >= 30 and len(repos) >= 60
    for entry in table.values():
        for size in entry.sizes:
            assert f"{entry.name}:{size}" in section, f"{entry.name}:{size} is not documented"
    for repo in repos:
        assert f"`{repo}`" in section, f"{repo} is not documented"
    documented = {cell.strip("`") for cell in section.split("|") if cell.strip().count("/") == 1}
    assert {d for d in documented if d.startswith("`") is False and " " not in d} - repos == set()


def test_a_pull_target_from_a_name_or_a_repo_id() -> None:
    assert target_of("qwen3:8b", TABLE) == target_of("qwen3:8b", TABLE)
    assert target_of("qwen3:8b", TABLE).repo == "Qwen/Qwen3-8B"
    assert target_of("qwen3:8b", TABLE).name == "qwen3:8b"
    assert target_of("Qwen/Qwen3-8B", TABLE).name is None
    assert target_of("Qwen/Qwen3-8B:v2", TABLE).revision == "v2"
    assert target_of("Qwen/Qwen3-8B:latest", TABLE).revision == "main"
    # Ollama's way to name a Hugging Face repo: the bare repo is pulled.
    assert target_of("hf.co/Qwen/Qwen3-8B", TABLE) == target_of("Qwen/Qwen3-8B", TABLE)
    assert target_of("huggingface.co/Qwen/Qwen3-8B:v2", TABLE).revision == "v2"


@pytest.mark.parametrize(
    ("requested", "status", "message"),
    [
        ("llama9", 404, "not in vllama's library of Ollama names"),
        ("qwen3:8b-q5_K_M", 400, "the nearest is qwen3:8b-q4_K_M"),
        ("qwen3:9b", 400, "unknown tag"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", 400, "Q4_K_M names a GGUF file"),
        ("hf.co/someone/model:iq3_xxs", 400, "names a GGUF file"),
    ],
)
def test_a_pull_of_nothing_is_refused_before_anything_is_fetched(
    requested: str, status: int, message: str
) -> None:
    with pytest.raises(PullError, match=message) as caught:
        target_of(requested, TABLE)
    assert caught.value.status == status


def _files(*names: str) -> tuple[HubFile, ...]:
    return tuple(HubFile(name, 10, None, None) for name in names)


def test_a_pull_fetches_only_what_vllm_loads() -> None:
    files = _files(
        ".gitattributes", "README.md", "LICENSE", "config.json", "generation_config.json",
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "consolidated.safetensors", "params.json",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "original/consolidated.00.pth",
        "original/params.json", "onnx/model.onnx", "model.gguf", "figure.png",
        "1_Pooling/config.json", "modeling_custom.py",
    )  # fmt: skip
    assert [f.path for f in select_files(files)] == [
        "LICENSE", "config.json", "generation_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "params.json",
        "1_Pooling/config.json", "modeling_custom.py",
    ]  # fmt: skip


def test_bin_weights_are_fetched_where_there_are_no_safetensors() -> None:
    files = _files("config.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    assert [f.path for f in select_files(files)] == [f.path for f in files]


def test_the_weight_size_counts_the_files_a_pull_fetches() -> None:
    sizes = {"model-1.safetensors": 5, "consolidated.safetensors": 5, "original/x.pth": 9}
    assert loaded_weight_bytes(sizes) == 5
    assert loaded_weight_bytes({"config.json": 1}) is None


def test_pulled_names_survive_a_restart(tmp_path: Path) -> None:
    store = PulledNames(tmp_path / "pulled.json")
    store.put("qwen3", "Qwen/Qwen3-8B")
    store.put("qwen3:8b", "Qwen/Qwen3-8B")
    again = PulledNames(tmp_path / "pulled.json")
    assert again.get("qwen3:latest") == "Qwen/Qwen3-8B"
    assert again.names_of("Qwen/Qwen3-8B") == ["qwen3:8b", "qwen3:latest"]
    assert again.delete("qwen3") and not again.delete("qwen3")
    assert PulledNames(tmp_path / "pulled.json").all() == {"qwen3:8b": "Qwen/Qwen3-8B"}


def registry_with(tmp_path: Path, repos: list[str], pulled: dict[str, str]) -> Registry:
    """A registry over a models folder holding `repos` (config.json only), pulled as `pulled`
    (name -> repo); the Hugging Face cache is empty."""
    models = tmp_path / "models"
    for repo in repos:
        (models / repo).mkdir(parents=True)
        (models / repo / "config.json").write_text("{}")
    for name, repo in pulled.items():
        PulledNames(models / "pulled-names.json").put(name, repo)
    return Registry(load_config(file_data={"server": {"models_dir": str(models)}}))


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_a_repo_whose_entry_needs_arguments_gets_them_wherever_it_is_found(
    tmp_path: Path,
) -> None:
    nomic = "nomic-ai/nomic-embed-text-v1.5"
    registry = registry_with(tmp_path, [nomic, "Qwen/Qwen3-8B"], {"nomic-embed-text": nomic})
    for name in ("nomic-embed-text", "nomic-embed-text:v1.5", nomic):
        resolved = registry.resolve(name)
        assert resolved.served_name == nomic
        assert "--trust-remote-code" in resolved.spec.args
    # Found by its library name though never pulled by it; and no remote code for the others.
    assert registry.resolve("qwen3:8b").served_name == "Qwen/Qwen3-8B"
    assert "--trust-remote-code" not in registry.resolve("qwen3:8b").spec.args
    with pytest.raises(ModelNotFound):
        registry.resolve("qwen3:14b")  # in the library, not on disk


async def test_tags_list_a_pulled_folder_by_its_pulled_names_only(tmp_path: Path) -> None:
    pulled = {"qwen3": "Qwen/Qwen3-8B", "qwen3:8b": "Qwen/Qwen3-8B"}
    registry = registry_with(tmp_path, ["Qwen/Qwen3-8B", "me/other"], pulled)
    assert sorted(await registry.available()) == ["me/other:latest", "qwen3:8b", "qwen3:latest"]


def test_a_configured_model_named_by_an_ollama_name_is_served_from_its_folder_or_repo(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "pulled"
    models = {
        "pulled": {"model": "qwen3:8b"},
        "fetched": {"model": "qwen3:0.6b", "args": ["--enforce-eager"]},
        "repo": {"model": "Qwen/Qwen3-8B"},
        "local": {"model": str(tmp_path)},
        "remote-code": {"model": "nomic-embed-text"},
    }
    config = load_config(file_data={"models": models})
    on_disk = {"qwen3:8b": folder}  # by the pulled name; the others are not on disk
    served = with_library_models(config, library.builtin(), lambda n, r: on_disk.get(n))
    assert {name: spec.model for name, spec in served.models.items()} == {
        "pulled": str(folder),
        "fetched": "Qwen/Qwen3-0.6B",  # vLLM downloads it on the first start
        "repo": "Qwen/Qwen3-8B",
        "local": str(tmp_path),
        "remote-code": "nomic-ai/nomic-embed-text-v1.5",
    }
    assert served.models["fetched"].args == ("--enforce-eager",)
    assert served.models["remote-code"].args == ("--trust-remote-code",)
    assert served.server == config.server


def test_a_configured_ollama_name_whose_tag_no_repo_serves_is_a_config_error() -> None:
    config = load_config(file_data={"models": {"chat": {"model": "qwen3:8b-q6_K"}}})
    with pytest.raises(ConfigError, match=r"^models\.chat\.model: .*the nearest is qwen3:8b-"):
        with_library_models(config, library.builtin(), lambda n, r: None)
