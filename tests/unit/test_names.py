"""Model names as clients write them (vllama/catalog/names.py): what is stored or becomes a path."""

from __future__ import annotations

import pytest

from vllama.catalog.names import MAX_NAME, InvalidName, check_name, is_repo_id, strip_latest

PART = "a" * 80  # the longest part Ollama takes


@pytest.mark.parametrize(
    "name",
    [
        "tiny",
        "qwen3:8b",
        "org/name:q4_K_M",
        "registry.example:5000/ns/name:tag",
        "host:5000/name",  # a host may carry a port; only the first of three parts is a host
        "a",
        "m:_private",  # a tag may start with '_'
        f"{PART}/{PART}/{PART}:{PART}",
    ],
)
def test_valid_names_are_returned_as_written(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "a/../b",
        "a..b",  # no ".." anywhere, though each part would pass
        "../b",
        "/abs",
        "a/b/c/d",  # at most host/namespace/model
        "a/b:1/c",  # a port only on the host
        "-lead",
        ".hidden",
        "name:",
        "name:-tag",
        "a" * 81,
        f"m:{'t' * 81}",
        "sp ace",
        "nul\x00",
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_name(name)


def test_the_length_limit_is_350_characters() -> None:
    # No name this long can pass the part rules (parts are at most 80), but the answer must say
    # which rule it broke: the length only from 351 on.
    too_long = f"must be 1 to {MAX_NAME} characters"
    with pytest.raises(InvalidName) as at_limit:
        check_name("a" * 350)
    assert too_long not in str(at_limit.value)
    with pytest.raises(InvalidName, match=too_long):
        check_name("a" * 351)
    with pytest.raises(InvalidName, match=too_long):
        check_name("")


def test_a_refused_long_name_is_shown_cut_at_80_characters() -> None:
    with pytest.raises(InvalidName) as whole:
        check_name("-" + "b" * 79)  # 80 characters: shown whole
    assert f"'-{'b' * 79}'" in str(whole.value)
    with pytest.raises(InvalidName) as cut:
        check_name("-" + "b" * 80)  # 81: its first 80 and an ellipsis
    assert f"'-{'b' * 79}...'" in str(cut.value)


def test_repo_ids_are_org_slash_name_and_never_climb() -> None:
    assert is_repo_id("Qwen/Qwen3-0.6B") and is_repo_id("org/name.v2")
    for text in ("name", "a/b/c", "org/a..b", "org/../x", "/org/name", "org/", "org/.name"):
        assert not is_repo_id(text), text


def test_strip_latest_drops_only_the_default_tag() -> None:
    assert strip_latest("tiny:latest") == "tiny"
    assert strip_latest("tiny:v1") == "tiny:v1"
    assert strip_latest("latest") == "latest"
