"""tests/fake_hf.py held to the real `huggingface_hub` client: what the client makes of the
fake's answers is what it makes of the Hub's, so tests built on the fake test something real.

The client is synchronous: it runs in a thread while the fake serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.fake_hf import FakeHub, FakeRepo, git_blob_sha1

ServerFactory = Callable[..., Awaitable[TestServer]]

REPO = "fake-org/tiny"
GATED = "fake-org/gated"
TOKEN = "hf_test_token"
CONFIG = b'{"architectures": ["FakeForCausalLM"], "hidden_size": 8}\n'
# ~300 KB, not one repeated byte: a body put together from the wrong offsets would not match.
WEIGHTS = hashlib.sha256(b"fake weights").digest() * (300 * 1024 // 32)


def repos() -> dict[str, FakeRepo]:
    return {
        REPO: FakeRepo({"config.json": CONFIG, "model.safetensors": WEIGHTS}),
        GATED: FakeRepo({"config.json": CONFIG}, gated=True),
    }


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the client off the user's Hugging Face setup: no token of theirs is sent, nothing
    is read from or written to ~/.cache/huggingface, and an offline setting does not apply."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads its settings once, when imported: these are what it consults.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Requests to the fake on 127.0.0.1 must not go through a proxy a developer has set.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


async def serve(aiohttp_server: ServerFactory, hub: FakeHub) -> str:
    server = await aiohttp_server(hub.app())
    return str(server.make_url("")).rstrip("/")


def download(
    endpoint: str,
    tmp_path: Path,
    repo: str,
    filename: str,
    token: str | bool | None = False,
    revision: str | None = None,
    into_cache: bool = False,
) -> tuple[Path, bytes]:
    """`hf_hub_download` into tmp_path/model (or, `into_cache`, the cache's own layout under
    tmp_path/cache), and what it wrote there. Blocking: for `asyncio.to_thread`."""
    path = hf_hub_download(
        repo,
        filename,
        revision=revision,
        local_dir=None if into_cache else tmp_path / "model",
        cache_dir=tmp_path / "cache",
        endpoint=endpoint,
        token=token,
    )
    return Path(path), Path(path).read_bytes()


async def test_model_info_lists_files_with_sizes_and_lfs_hashes(
    aiohttp_server: ServerFactory,
) -> None:
    hub = FakeHub(repos())
    endpoint = await serve(aiohttp_server, hub)
    api = HfApi(endpoint=endpoint, token=False)

    info = await asyncio.to_thread(api.model_info, REPO, files_metadata=True)

    assert (info.id, info.sha) == (REPO, hub.repos[REPO].sha)
    assert (info.private, info.gated, info.disabled) == (False, False, False)
    assert info.last_modified is not None
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert siblings.keys() == {"config.json", "model.safetensors"}
    config, weights = siblings["config.json"], siblings["model.safetensors"]
    assert (config.size, config.blob_id, config.lfs) == (len(CONFIG), git_blob_sha1(CONFIG), None)
    assert weights.size == len(WEIGHTS)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights.lfs.size == len(WEIGHTS)
    # Without `files_metadata` the Hub lists names only.
    plain = await asyncio.to_thread(api.model_info, REPO)
    assert [(s.rfilename, s.size, s.lfs) for s in plain.siblings or []] == [
        ("config.json", None, None),
        ("model.safetensors", None, None),
    ]
    # A gated repo's metadata is public; it says it is gated.
    gated = await asyncio.to_thread(api.model_info, GATED)
    assert gated.gated == "manual"


async def test_file_metadata_is_what_the_client_caches_by(aiohttp_server: ServerFactory) -> None:
    hub = FakeHub(repos())
    endpoint = await serve(aiohttp_server, hub)
    repo = hub.repos[REPO]

    def metadata(filename: str) -> tuple[str | None, str | None, int | None]:
        url = hf_hub_url(REPO, filename, endpoint=endpoint)
        found = get_hf_file_metadata(url, token=False, endpoint=endpoint)
        assert found.xet_file_data is None  # so the client takes the plain HTTP path
        return found.commit_hash, found.etag, found.size

    lfs = await asyncio.to_thread(metadata, "model.safetensors")
    assert lfs == (repo.sha, hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS))
    regular = await asyncio.to_thread(metadata, "config.json")
    assert regular == (repo.sha, git_blob_sha1(CONFIG), len(CONFIG))


@pytest.mark.parametrize(
    ("filename", "content"), [("config.json", CONFIG), ("model.safetensors", WEIGHTS)]
)
async def test_download_writes_the_same_bytes(
    aiohttp_server: ServerFactory, tmp_path: Path, filename: str, content: bytes
) -> None:
    hub = FakeHub(repos())
    endpoint = await serve(aiohttp_server, hub)

    path, written = await asyncio.to_thread(download, endpoint, tmp_path, REPO, filename)

    assert path == tmp_path / "model" / filename
    assert written == content
    # The client asks for the file's metadata first, then for its body, both by name.
    url = f"/{REPO}/resolve/main/{filename}"
    assert [(r.method, r.path) for r in hub.requests] == [("HEAD", url), ("GET", url)]


async def test_download_follows_the_cdn_redirect_of_a_large_file(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    hub = FakeHub(repos(), cdn_host="localhost")
    endpoint = await serve(aiohttp_server, hub)

    _, written = await asyncio.to_thread(download, endpoint, tmp_path, REPO, "model.safetensors")

    assert written == WEIGHTS
    # The metadata comes from the Hub's redirect itself; the client then fetches the bytes
    # straight from where it points (the CDN), as it does on huggingface.co.
    assert [(r.method, r.path.split("/")[1]) for r in hub.requests] == [
        ("HEAD", REPO.split("/")[0]),
        ("GET", "cdn"),
    ]


async def test_download_at_the_commit_the_hub_named(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    hub = FakeHub(repos())
    endpoint = await serve(aiohttp_server, hub)
    sha = hub.repos[REPO].sha

    path, written = await asyncio.to_thread(
        download, endpoint, tmp_path, REPO, "config.json", revision=sha, into_cache=True
    )

    # In the cache layout, the file sits under the commit the fake answered with.
    assert path.parent.name == sha
    assert written == CONFIG


async def test_gated_repo_takes_the_token(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    hub = FakeHub(repos(), token=TOKEN)
    endpoint = await serve(aiohttp_server, hub)

    # No token passed, and (isolated_hf) none stored: the client sends none.
    with pytest.raises(GatedRepoError) as anonymous:
        await asyncio.to_thread(download, endpoint, tmp_path, GATED, "config.json", token=None)
    assert anonymous.value.response.status_code == 401
    assert hub.requests[-1].authorized is False
    with pytest.raises(GatedRepoError) as refused:
        await asyncio.to_thread(download, endpoint, tmp_path, GATED, "config.json", "hf_other")
    assert refused.value.response.status_code == 403

    _, written = await asyncio.to_thread(download, endpoint, tmp_path, GATED, "config.json", TOKEN)

    assert written == CONFIG
    assert hub.requests[-1].authorized is True


async def test_unknown_repo_revision_and_file(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    hub = FakeHub(repos(), token=TOKEN)
    endpoint = await serve(aiohttp_server, hub)
    api = HfApi(endpoint=endpoint, token=False)

    with pytest.raises(RepositoryNotFoundError) as repo_info:
        await asyncio.to_thread(api.model_info, "fake-org/missing")
    assert not isinstance(repo_info.value, GatedRepoError)
    assert repo_info.value.response.status_code == 401  # anonymous: "missing" and "private" alike
    signed_in = HfApi(endpoint=endpoint, token=TOKEN)
    with pytest.raises(RepositoryNotFoundError) as missing:
        await asyncio.to_thread(signed_in.model_info, "fake-org/missing")
    assert missing.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        await asyncio.to_thread(download, endpoint, tmp_path, "fake-org/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        await asyncio.to_thread(api.model_info, REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError) as entry:
        await asyncio.to_thread(download, endpoint, tmp_path, REPO, "missing.json", into_cache=True)
    assert isinstance(entry.value, RemoteEntryNotFoundError)
    # The client records that the file is absent at that commit, from the fake's X-Repo-Commit.
    no_exist = tmp_path / "cache" / "models--fake-org--tiny" / ".no_exist"
    assert (no_exist / hub.repos[REPO].sha / "missing.json").exists()


async def test_range_request_gets_the_tail(aiohttp_server: ServerFactory) -> None:
    hub = FakeHub(repos())
    endpoint = await serve(aiohttp_server, hub)
    url = f"{endpoint}/{REPO}/resolve/main/model.safetensors"

    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Range": "bytes=100-"}) as reply:
            assert reply.status == 206
            assert reply.headers["Content-Range"] == f"bytes 100-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
            assert await reply.read() == WEIGHTS[100:]
        async with session.get(url, headers={"Range": "bytes=10-19"}) as reply:
            assert reply.status == 206
            assert await reply.read() == WEIGHTS[10:20]
        async with session.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}) as reply:
            assert reply.status == 416
            assert reply.headers["Content-Range"] == f"bytes */{len(WEIGHTS)}"
    assert [r.range for r in hub.requests] == [
        "bytes=100-",
        "bytes=10-19",
        f"bytes={len(WEIGHTS)}-",
    ]


async def test_throttled_download_takes_its_time(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    hub = FakeHub(repos(), bytes_per_second=200_000)
    endpoint = await serve(aiohttp_server, hub)

    began = time.monotonic()
    _, written = await asyncio.to_thread(download, endpoint, tmp_path, REPO, "model.safetensors")
    elapsed = time.monotonic() - began

    # 300 KB at 200 KB/s is 1.5 s; the bound is loose, only "slowed down" matters.
    assert elapsed >= 1.0
    assert written == WEIGHTS


async def test_dropped_connection_truncates_the_body_once(aiohttp_server: ServerFactory) -> None:
    hub = FakeHub(repos())
    hub.drop_after["model.safetensors"] = 50_000
    endpoint = await serve(aiohttp_server, hub)
    url = f"{endpoint}/{REPO}/resolve/main/model.safetensors"

    async with aiohttp.ClientSession() as session:
        async with session.get(url) as reply:
            assert reply.status == 200
            assert reply.content_length == len(WEIGHTS)
            received = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in reply.content.iter_any():
                    received += chunk
        assert bytes(received) == WEIGHTS[:50_000]
        async with session.get(url) as reply:
            assert await reply.read() == WEIGHTS
    assert hub.drop_after == {}


@pytest.mark.parametrize(
    ("client_chunk", "resumed_from"),
    [
        # The client's default: it writes the body out in 10 MiB pieces, and what it holds of
        # an unfinished piece is lost with the connection. 40 KB in, that is everything: it
        # starts over, without a Range.
        (None, None),
        # With smaller pieces it resumes from the last whole one: 2 x 16 KiB of the 40 KB.
        (16 * 1024, "bytes=32768-"),
    ],
)
async def test_client_retries_a_dropped_download(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client_chunk: int | None,
    resumed_from: str | None,
) -> None:
    if client_chunk is not None:
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", client_chunk)
    hub = FakeHub(repos())
    hub.drop_after["model.safetensors"] = 40_000
    endpoint = await serve(aiohttp_server, hub)

    _, written = await asyncio.to_thread(download, endpoint, tmp_path, REPO, "model.safetensors")

    assert written == WEIGHTS
    # huggingface_hub's own retry, after a 1 s pause, on the same URL.
    gets = [r.range for r in hub.requests if r.method == "GET"]
    assert gets == [None, resumed_from]


def test_repo_from_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_bytes(CONFIG)
    (tmp_path / "sub" / "tokenizer.json").write_bytes(b"{}")

    repo = FakeRepo.from_folder(tmp_path, gated=True)

    assert repo.files == {"config.json": CONFIG, "sub/tokenizer.json": b"{}"}
    assert repo.gated
    # The commit id follows the content: the same files give the same one, other files another.
    assert repo.sha == FakeRepo(dict(repo.files)).sha
    assert repo.sha != FakeRepo({"config.json": CONFIG}).sha
    assert len(repo.sha) == 40 and int(repo.sha, 16) >= 0
