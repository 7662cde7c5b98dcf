"""`[peers.<name>]` in the config, and which peer serves a name (local models always win)."""

from __future__ import annotations

import re
from typing import Any, cast

import aiohttp
import pytest

from vllama.config.settings import ConfigError, PeerSpec, load_config
from vllama.remote.peers import PeerDirectory


def config_with(peers: dict[str, Any], models: dict[str, Any] | None = None) -> Any:
    return load_config(file_data={"models": models or {}, "peers": peers})


def test_a_peer_table_is_validated() -> None:
    config = config_with(
        {"gpu2": {"url": "http://10.0.0.12:11434/", "api_key": "k" * 20, "models": ["qwen3:32b"]}}
    )
    peer = config.peers["gpu2"]
    assert (peer.url, peer.models) == ("http://10.0.0.12:11434", ("qwen3:32b",))
    assert "k" * 20 not in repr(peer)  # the key stays out of logs
    assert config_with({"plain": {"url": "https://vllm.example"}}).peers["plain"].models == ()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "ftp://x"}, "peers.p.url: Value error, must be an http:// or https:// URL"),
        ({"url": "http://x/?a=1"}, "must not have a query"),
        ({"url": "http://x", "modles": []}, "peers.p.modles: Extra inputs are not permitted"),
        ({"url": "http://x", "models": ["a", "a"]}, "lists a model twice"),
        ({}, "peers.p.url: Field required"),
    ],
)
def test_a_bad_peer_table_is_refused_with_its_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        config_with({"p": table})


def test_a_peer_model_with_a_local_name_is_refused() -> None:
    local = {"tiny": {"model": "org/tiny", "aliases": ["t"]}}
    for name in ("tiny", "tiny:latest", "t"):
        with pytest.raises(
            ConfigError, match=re.escape(f"peers.p.models: '{name}' is already used")
        ):
            config_with({"p": {"url": "http://x", "models": [name]}}, local)
    with pytest.raises(
        ConfigError, match=re.escape("peers.b.models: 'm:latest' is already used by peers.a.models")
    ):
        config_with(
            {
                "a": {"url": "http://a", "models": ["m"]},
                "b": {"url": "http://b", "models": ["m:latest"]},
            }
        )


def directory(local: set[str], **peers: tuple[str, ...]) -> PeerDirectory:
    specs = {name: PeerSpec(url=f"http://{name}", models=models) for name, models in peers.items()}
    session = cast(aiohttp.ClientSession, None)  # never used: nothing is checked here
    return PeerDirectory(specs, session, lambda name: name.removesuffix(":latest") in local, 5.0)


def test_a_name_goes_to_the_peer_that_lists_it_and_never_over_a_local_model() -> None:
    peers = directory({"tiny"}, a=("qwen3:32b", "tiny:latest"), b=("qwen3:32b", "llama3"))
    found = peers.find("qwen3:32b")
    assert found is not None and found.name == "a"  # the first peer listed wins
    found = peers.find("llama3:latest")
    assert found is not None and found.name == "b" and found.name_for("llama3:latest") == "llama3"
    assert peers.find("tiny") is None  # a local name stays local
    assert peers.find("nothing") is None
    assert [(model, peer.name) for model, peer in peers.served()] == [
        ("qwen3:32b", "a"),
        ("llama3", "b"),
    ]
