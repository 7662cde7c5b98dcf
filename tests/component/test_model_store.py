"""The model store under attack (issue 25): derived models that are never lost nor half-saved,
bounded for copies as for creates, a full disk that is a 507 and changes nothing; a delete that
never follows a symlink to its target; an unload for a model whose folder has gone."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.component.fakes import WorkerView, eventually, fake_config
from vllama.api.app import build_app
from vllama.catalog import derived
from vllama.catalog.derived import DerivedStore
from vllama.engine.states import WorkerState

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hf").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


async def start(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    config = fake_config({"a": {}}, models_dir=str(tmp_path / "models"))
    return await aiohttp_client(build_app(config), server_kwargs={"handler_cancellation": True})


def store_path(tmp_path: Path) -> Path:
    return tmp_path / "models" / "derived-models.json"


def on_disk(tmp_path: Path) -> list[str]:
    """The derived models the store file holds, read afresh (as a restart would)."""
    return [model.name for model in DerivedStore(store_path(tmp_path)).all()]


async def create(client: Client, name: str, **fields: Any) -> tuple[int, Any]:
    body = {"model": name, "from": "a", "stream": False, **fields}
    response = await client.post("/api/create", json=body)
    return response.status, await response.json()


async def copy(client: Client, source: str, destination: str) -> tuple[int, str]:
    body = {"source": source, "destination": destination}
    response = await client.post("/api/copy", json=body)
    return response.status, await response.text()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


# -- derived models ---------------------------------------------------------------------------


async def test_deeply_nested_parameters_are_400_and_break_nothing(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, tmp_path)
    assert (await create(client, "before"))[0] == 200
    status, body = await create(client, "deep", parameters=nested(500))
    assert status == 400 and "parameters" in body["error"], body
    # Nothing half-done: the next create, copy and delete work, and memory matches the disk.
    assert (await create(client, "after"))[0] == 200
    assert (await copy(client, "after", "again"))[0] == 200
    assert (await client.delete("/api/delete", json={"model": "before"})).status == 200
    assert on_disk(tmp_path) == ["after:latest", "again:latest"]
    assert (await client.post("/api/show", json={"model": "deep"})).status == 404


async def test_concurrent_creates_are_all_saved(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a disk under load: writes overlap if nothing orders them
        time.sleep(random.uniform(0, 0.03))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    client = await start(aiohttp_client, tmp_path)
    answers = await asyncio.gather(*(create(client, f"m{i}") for i in range(64)))
    assert [status for status, _ in answers] == [200] * 64
    expected = sorted(f"m{i}:latest" for i in range(64))
    assert on_disk(tmp_path) == expected  # every one, as a restart reads them
    tags = (await (await client.get("/api/tags")).json())["models"]
    assert sorted(m["name"] for m in tags if m["name"].startswith("m")) == expected


async def test_copies_are_bounded_as_creates_are(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(derived, "MAX_DERIVED", 5)
    client = await start(aiohttp_client, tmp_path)
    assert (await create(client, "m0"))[0] == 200
    for index in range(1, 5):
        assert (await copy(client, "m0", f"m{index}"))[0] == 200
    status, text = await copy(client, "m0", "m5")
    assert status == 400 and "5 derived models already" in json.loads(text)["error"]
    assert (await copy(client, "a", "m6"))[0] == 400  # of a configured model too
    assert (await create(client, "m7"))[0] == 400
    assert (await copy(client, "m0", "m1"))[0] == 200  # replacing one is not one more
    assert len(on_disk(tmp_path)) == 5


async def test_the_store_is_bounded_in_size(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(derived, "MAX_STORE_BYTES", 2**20)
    client = await start(aiohttp_client, tmp_path)
    assert (await create(client, "big", system="s" * 256 * 1024))[0] == 200
    copies = 0
    while (await copy(client, "big", f"big{copies}"))[0] == 200:
        copies += 1
        assert copies < 10
    status, text = await copy(client, "big", "one-more")
    assert status == 400 and "MiB" in json.loads(text)["error"], text
    assert copies == 2  # three of 256 KiB fit in 1 MiB, a fourth does not
    assert store_path(tmp_path).stat().st_size <= 2**20
    assert len(on_disk(tmp_path)) == 3
    assert (await client.delete("/api/delete", json={"model": "big0"})).status == 200
    assert (await copy(client, "big", "one-more"))[0] == 200  # room again


async def test_a_full_disk_is_507_and_changes_nothing(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start(aiohttp_client, tmp_path)
    assert (await create(client, "kept"))[0] == 200
    before = store_path(tmp_path).read_bytes()
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    calls = [
        ("POST", "/api/create", {"model": "new", "from": "a"}),
        ("POST", "/api/create", {"model": "new2", "from": "a", "stream": False}),
        ("POST", "/api/copy", {"source": "kept", "destination": "copied"}),
        ("DELETE", "/api/delete", {"model": "kept"}),
    ]
    for method, path, body in calls:
        response = await client.request(method, path, json=body)
        text = await response.text()
        assert response.status == 507, (path, text)
        error = json.loads(text)["error"]  # Ollama's envelope, the reason, no traceback
        assert isinstance(error, str) and "No space left on device" in error, error
        assert "Traceback" not in text
    # Nothing changed, in memory or on disk, and no temporary file was left.
    for name in ("new", "new2", "copied"):
        assert (await client.post("/api/show", json={"model": name})).status == 404
    assert (await client.post("/api/show", json={"model": "kept"})).status == 200
    assert store_path(tmp_path).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_file()) == [
        ".derived-models.json.lock",
        "derived-models.json",
    ]
    # Room again: the same changes go through.
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (await create(client, "new"))[0] == 200
    assert (await copy(client, "kept", "copied"))[0] == 200
    assert (await client.delete("/api/delete", json={"model": "kept"})).status == 200
    assert on_disk(tmp_path) == ["copied:latest", "new:latest"]


# -- the models folder ------------------------------------------------------------------------


def model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


async def delete(client: Client, name: str) -> tuple[int, str]:
    response = await client.delete("/api/delete", json={"model": name})
    return response.status, await response.text()


@pytest.mark.parametrize("where", ["outside", "inside"])
async def test_deleting_a_symlink_removes_the_link_never_its_target(
    aiohttp_client: ClientFactory, tmp_path: Path, where: str
) -> None:
    models = tmp_path / "models"
    outside = model_folder(tmp_path / "outside" / "weights")
    inside = model_folder(models / "real")
    target = outside if where == "outside" else inside
    models.joinpath("linked").symlink_to(target, target_is_directory=True)
    client = await start(aiohttp_client, tmp_path)

    assert (await delete(client, "linked"))[0] == 200
    assert not models.joinpath("linked").is_symlink()  # the link is gone
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert (await client.post("/api/show", json={"model": "linked"})).status == 404
    assert (await client.post("/api/show", json={"model": "real"})).status == 200
    # The real folder itself is vllama's to delete.
    assert (await delete(client, "real"))[0] == 200
    assert not inside.exists()
    assert outside.joinpath("config.json").is_file()


async def test_a_model_reached_through_a_linked_folder_is_not_deleted(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    org = tmp_path / "outside" / "org"
    target = model_folder(org / "name")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "org").symlink_to(org, target_is_directory=True)
    client = await start(aiohttp_client, tmp_path)
    status, text = await delete(client, "org/name")
    assert status == 400 and "symlink" in json.loads(text)["error"], text
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "models" / "org").is_symlink()


@pytest.mark.parametrize("unload_as", ["tiny", "tiny:latest", "pirate"])
async def test_a_model_whose_folder_vanished_still_unloads(
    aiohttp_client: ClientFactory, tmp_path: Path, unload_as: str
) -> None:
    folder = model_folder(tmp_path / "models" / "tiny")
    client = await start(aiohttp_client, tmp_path)
    assert (await create(client, "pirate", **{"from": "tiny"}))[0] == 200  # derived from it
    loaded = await client.post("/api/generate", json={"model": "tiny"})
    assert loaded.status == 200, await loaded.text()
    worker = WorkerView(client.app, "tiny")
    assert worker.state is WorkerState.READY
    pid = worker.pid
    ps = (await (await client.get("/api/ps")).json())["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"]

    shutil.rmtree(folder)
    await client.get("/api/tags")  # the models folder is scanned again: "tiny" is gone
    assert (await client.post("/api/show", json={"model": "tiny"})).status == 404
    unload = await client.post("/api/generate", json={"model": unload_as, "keep_alive": 0})
    assert unload.status == 200, await unload.text()
    assert (await unload.json())["done_reason"] == "unload"

    async def ps_empty() -> bool:
        models: list[object] = (await (await client.get("/api/ps")).json())["models"]
        return models == []

    await eventually(ps_empty, what="/api/ps empty")
    await eventually(lambda: WorkerView(client.app, "tiny").state.name == "STOPPED")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Only an unload: a request to it, or an unload of a name nothing runs, is still a 404.
    for body in ({"model": "tiny"}, {"model": "nothing", "keep_alive": 0}):
        assert (await client.post("/api/generate", json=body)).status == 404
