from __future__ import annotations

import math
from pathlib import Path

import pytest

from vllama.config.settings import ConfigError, load_config, read_toml


def test_defaults_bind_loopback_on_ollamas_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLAMA_HOST", raising=False)
    monkeypatch.delenv("VLLAMA_PORT", raising=False)
    config = load_config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 11434)
    assert config.server.keep_alive == 300.0
    assert config.models == {}


def test_flags_win_over_env_which_wins_over_file(monkeypatch: pytest.MonkeyPatch) -> None:
    file_data = {"server": {"port": 1111, "host": "0.0.0.0", "keep_alive": "1m"}}
    monkeypatch.setenv("VLLAMA_PORT", "2222")
    monkeypatch.setenv("VLLAMA_KEEP_ALIVE", "90")
    config = load_config({"port": 3333}, file_data)
    assert config.server.port == 3333  # flag
    assert config.server.keep_alive == 90.0  # env over file
    assert config.server.host == "0.0.0.0"  # file over default
    config = load_config({}, file_data)
    assert config.server.port == 2222


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:11500", "127.0.0.1", 11500),
        ("http://0.0.0.0:8080/", "0.0.0.0", 8080),
        ("https://example.org", "example.org", 11434),
        ("[::1]:9000", "::1", 9000),
        ("::", "::", 11434),
        ("0.0.0.0", "0.0.0.0", 11434),
    ],
)
def test_vllama_host_may_name_the_port_as_the_cli_reads_it(
    monkeypatch: pytest.MonkeyPatch, value: str, host: str, port: int
) -> None:
    # Issue 20: one VLLAMA_HOST=host:port for the daemon and the CLI, as OLLAMA_HOST is for
    # `ollama serve` and `ollama`: the daemon took the whole text for a host name.
    monkeypatch.setenv("VLLAMA_HOST", value)
    config = load_config({}, {})
    assert (config.server.host, config.server.port) == (host, port)
    assert load_config({"port": 3333}, {}).server.port == 3333  # a port set wins
    monkeypatch.setenv("VLLAMA_PORT", "2222")
    assert load_config({}, {}).server.port == 2222


def test_a_hosts_port_that_is_not_a_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLAMA_HOST", "127.0.0.1:99999")
    with pytest.raises(ConfigError, match=r"server\.port: Input should be less than or equal"):
        load_config({}, {})


def test_model_table_is_validated() -> None:
    config = load_config(
        file_data={
            "models": {
                "tiny": {
                    "model": "org/tiny",
                    "args": ["--enforce-eager"],
                    "env": {"A": "1"},
                    "aliases": ["t", "tiny-chat:v1"],
                    "keep_alive": "-1",
                    "max_parallel": 4,
                }
            }
        }
    )
    spec = config.models["tiny"]
    assert spec.args == ("--enforce-eager",)
    assert math.isinf(spec.keep_alive or 0)
    assert config.names() == {"tiny": "tiny", "t": "tiny", "tiny-chat:v1": "tiny"}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"args": ["--x"]}, "models.m.model"),
        ({"model": "a/b", "args": "--enforce-eager"}, "models.m.args"),
        ({"model": "a/b", "args": ["--port", "1"]}, "models.m.args"),
        ({"model": "a/b", "args": ["--served-model-name=x"]}, "models.m.args"),
        ({"model": "a/b", "max_parallel": 0}, "models.m.max_parallel"),
        ({"model": "a/b", "keep_alive": "soon"}, "models.m.keep_alive"),
        ({"model": "a/b", "env": {"A": 1}}, "models.m.env.A"),
        ({"model": "a/b", "typo": 1}, "models.m.typo"),
        ({"model": "./nowhere"}, "models.m.model"),
    ],
)
def test_bad_model_tables_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file_data={"models": {"m": table}}, base_dir=Path("/nonexistent"))
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"portt": 1}}, "server.portt"),
        ({"server": {"worker_port_min": 5000, "worker_port_max": 4000}}, "worker_port_min"),
        ({"serverr": {}}, "serverr"),
        ({"models": {"bad name!": {"model": "a/b"}}}, "models.bad name!"),
        (
            {"models": {"a": {"model": "x/a"}, "b": {"model": "x/b", "aliases": ["a"]}}},
            "models.b.aliases",
        ),
    ],
)
def test_bad_files_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file_data=data)
    assert key in str(info.value)


def test_local_model_folders_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    config = load_config(file_data={"models": {"m": {"model": "./weights"}}}, base_dir=tmp_path)
    assert config.models["m"].model == str(tmp_path / "weights")


def test_read_toml_reports_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[models.a\nmodel = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")


def test_the_example_config_is_valid_and_documents_every_setting() -> None:
    from vllama.config.settings import ServerSettings

    example = Path(__file__).resolve().parents[2] / "configs" / "vllama.example.toml"
    config = load_config(file_data=read_toml(example), base_dir=example.parent)
    assert set(config.models) == {"llama", "qwen", "embed"}
    text = example.read_text()
    undocumented = [name for name in ServerSettings.model_fields if f"{name} =" not in text]
    assert undocumented in ([], ["config"]), undocumented
    from vllama.config.settings import ModelSpec

    assert [name for name in ModelSpec.model_fields if f"{name} =" not in text] == []


def test_the_same_file_read_twice_gives_equal_settings() -> None:
    # A SIGHUP compares them to warn about server settings that need a restart.
    table = {"server": {"port": 1234, "keep_alive": "1m"}}
    first, second = load_config(file_data=table), load_config(file_data=table)
    assert first.server == second.server
    assert load_config(file_data={"server": {"port": 1235}}).server != first.server


def test_a_configured_model_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_config(file_data={"models": {"tiny\n": {"model": "org/tiny"}}})


def test_a_config_path_that_is_a_directory_or_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        read_toml(tmp_path)
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[server]\nhost = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_toml(latin)


@pytest.mark.parametrize("where", ["api_key", "api_keys"])
def test_an_api_key_has_at_least_16_characters(where: str) -> None:
    # A short key is guessable; the digest form is 64 hex digits whatever the key was.
    def server(key: str) -> dict[str, object]:
        if where == "api_key":
            return {"server": {"api_key": key}}
        return {"server": {"api_keys": [{"key": key, "scope": "admin"}]}}

    with pytest.raises(ConfigError, match="16"):
        load_config(file_data=server("k" * 15))
    assert load_config(file_data=server("k" * 16)).server is not None
    with pytest.raises(ConfigError, match="64 hexadecimal"):
        load_config(file_data={"server": {"api_keys": [{"key_sha256": "ab" * 31}]}})
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(file_data={"server": {"api_keys": [{"scope": "admin"}]}})
