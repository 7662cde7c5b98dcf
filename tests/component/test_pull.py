"""`/api/pull` by Ollama name against a local fake of the Hugging Face Hub (`tests/fake_hf.py`)
serving a tiny model's real files, slowly enough to see byte progress."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from huggingface_hub import constants

from tests.component.fakes import WorkerView, engine_cmdline, eventually, fake_config
from tests.component.test_ollama_api import json_of, ndjson_lines, start
from tests.daemon import free_port
from tests.fake_hf import FakeHub, FakeRepo, point_hub_at
from vllama.catalog import hub as hub_module
from vllama.catalog import library, pull
from vllama.catalog.hub import HubFile, RepoInfo
from vllama.demo.build import build_chat_model

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]
ServerFactory = Callable[..., Awaitable[TestServer]]
TOKEN = "hf_test_token"
WEIGHTS = "model.safetensors"
# Bytes a second where a test cuts a download: slow enough that bytes land on disk before the cut
# (aiohttp drops what it buffered but was not read yet when the connection breaks).
SLOW = 400_000


def repo_of(name: str) -> str:
    match = library.lookup(name, library.builtin())
    assert match is not None, name
    return match.repo


QWEN = repo_of("qwen3:8b")
GATED = repo_of("llama3.2:1b")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The tiny demo chat model's files, and what a real repo has beside them that vLLM never
    reads (a pull must leave those out)."""
    folder = build_chat_model(tmp_path_factory.mktemp("tiny") / "chat")
    files = FakeRepo.from_folder(folder).files
    files = {path: data for path, data in files.items() if not path.startswith(".")}
    return files | {
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "README.md": b"# a model card\n",
        "original/consolidated.00.pth": b"\0" * 300_000,
        "original/params.json": b"{}",
    }


@pytest.fixture
async def hub(
    aiohttp_server: ServerFactory, tiny_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeHub]:
    gguf = {"README.md": b"# GGUF only", "model-Q4_K_M.gguf": b"GGUF" * 1000}
    fake = FakeHub(
        {
            QWEN: FakeRepo(dict(tiny_files)),
            GATED: FakeRepo(dict(tiny_files), gated=True),
            "someone/gguf": FakeRepo(gguf),
        },
        token=TOKEN,
        bytes_per_second=1_500_000,  # the 1.7 MB weights take about a second
    )
    server = await aiohttp_server(fake.app())
    point_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    yield fake


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    return await start(aiohttp_client, fake_config({}, models_dir=str(tmp_path / "models")))


def fetched(hub: FakeHub) -> list[str]:
    """The files the daemon downloaded (GETs of /resolve/), in order."""
    return [
        r.path.split("/resolve/", 1)[1].split("/", 1)[1]
        for r in hub.requests
        if r.method == "GET" and "/resolve/" in r.path
    ]


async def test_a_pull_by_ollama_name_shows_bytes_arriving_and_lists_it_by_that_name(
    client: Client, hub: FakeHub, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "qwen3:8b"}), 60)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    weights = [line for line in lines if line["status"] == f"pulling {WEIGHTS}"]
    size = len(tiny_files[WEIGHTS])
    assert {line["total"] for line in weights} == {size}
    assert weights[0]["digest"].startswith("sha256:") and len(weights[0]["digest"]) == 71
    completed = [line["completed"] for line in weights]
    assert completed == sorted(completed) and completed[-1] == size
    assert len([c for c in completed if 0 < c < size]) >= 2, completed  # bytes, not one jump

    folder = tmp_path / "models" / QWEN
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == sorted(
        path for path in tiny_files if not path.startswith((".", "original", "README"))
    )
    for path in ("config.json", WEIGHTS):
        assert (folder / path).read_bytes() == tiny_files[path]
    assert not (tmp_path / "models" / ".pulling" / QWEN).exists()
    assert not any(path.startswith(("original/", "README", ".git")) for path in fetched(hub))

    tags = (await json_of(await client.get("/api/tags")))["models"]
    assert [m["name"] for m in tags] == ["qwen3:8b"]
    shown = await json_of(await client.post("/api/show", json={"model": "qwen3:8b"}))
    assert shown["details"]["family"] == "llama"
    # Pulled again: nothing to fetch, and the same answer.
    before = len(fetched(hub))
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "qwen3:8b"}), 30)
    assert lines[-1] == {"status": "success"} and len(fetched(hub)) == before


async def test_a_pulled_name_serves_requests_creates_and_deletes(
    client: Client, hub: FakeHub, tmp_path: Path
) -> None:
    reply = await json_of(await client.post("/api/pull", json={"model": "qwen3", "stream": False}))
    assert reply == {"status": "success"}  # stream: false waits, and answers once
    generated = await json_of(
        await client.post("/api/generate", json={"model": "qwen3", "prompt": "hi", "stream": False})
    )
    assert generated["model"] == "qwen3" and generated["done"] is True
    await ndjson_lines(await client.post("/api/create", json={"model": "mine", "from": "qwen3"}))
    shown = await json_of(await client.post("/api/show", json={"model": "mine"}))
    assert shown["details"]["parent_model"] == "qwen3:latest"
    names = {m["name"] for m in (await json_of(await client.get("/api/tags")))["models"]}
    assert names == {"qwen3:latest", "mine:latest"}
    assert (await client.delete("/api/delete", json={"model": "mine"})).status == 200
    response = await client.delete("/api/delete", json={"model": "qwen3"})
    assert response.status == 200, await response.text()
    assert not (tmp_path / "models" / QWEN).exists()
    assert (await json_of(await client.get("/api/tags")))["models"] == []
    pulled = json.loads((tmp_path / "models" / "pulled-names.json").read_text())
    assert pulled["names"] == {}


async def test_an_interrupted_pull_resumes_where_it_stopped(
    client: Client, hub: FakeHub, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.bytes_per_second = SLOW
    hub.drop_after[WEIGHTS] = 600_000
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "qwen3:8b"}), 60)
    assert "interrupted" in lines[-1]["error"] and "pull again to resume" in lines[-1]["error"]
    assert not (tmp_path / "models" / QWEN / "config.json").exists()  # no half model listed
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "qwen3:8b"}), 60)
    assert lines[-1] == {"status": "success"}
    ranges = [r.range for r in hub.requests if r.method == "GET" and r.path.endswith(WEIGHTS)]
    assert ranges[0] is None and ranges[1] is not None, ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 600_000
    first = next(line for line in lines if line.get("status") == f"pulling {WEIGHTS}")
    assert first["completed"] == resumed_at  # the bar starts where the copy on disk ends
    assert (tmp_path / "models" / QWEN / WEIGHTS).read_bytes() == tiny_files[WEIGHTS]


async def test_a_client_that_goes_away_mid_pull_stops_it_and_the_next_pull_resumes(
    client: Client, hub: FakeHub, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.bytes_per_second = SLOW
    part = tmp_path / "models" / ".pulling" / QWEN / f"{WEIGHTS}.part"
    response = await client.post("/api/pull", json={"model": "qwen3:8b"})
    async for line in response.content:  # read until the weights are arriving, then leave
        update = json.loads(line)
        if update.get("status") == f"pulling {WEIGHTS}" and update["completed"] > 100_000:
            break
    response.close()
    size = await eventually(lambda: part.exists() and part.stat().st_size, what="a partial copy")
    # The download ends when the client does: the Hub sees its connection closed.
    await eventually(lambda: hub.sending == 0, what="the download stopped")
    stopped = part.stat().st_size
    assert stopped >= size
    assert not (tmp_path / "models" / QWEN / "config.json").exists()
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "qwen3:8b"}), 60)
    assert lines[-1] == {"status": "success"}
    ranges = [r.range for r in hub.requests if r.method == "GET" and r.path.endswith(WEIGHTS)]
    assert ranges == [None, f"bytes={stopped}-"]
    assert (tmp_path / "models" / QWEN / WEIGHTS).read_bytes() == tiny_files[WEIGHTS]


async def test_a_gated_repo_needs_a_token_and_says_how(
    client: Client, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = await json_of(await client.post("/api/pull", json={"model": "llama3.2:1b"}), 401)
    assert "HF_TOKEN" in error["error"] and f"/{GATED}" in error["error"]
    monkeypatch.setenv("HF_TOKEN", "not-the-token")
    error = await json_of(await client.post("/api/pull", json={"model": "llama3.2:1b"}), 403)
    assert "no access" in error["error"] and "accept its license" in error["error"]
    assert fetched(hub) == [] and not (tmp_path / "models" / GATED).exists()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "llama3.2:1b"}), 60)
    assert lines[-1] == {"status": "success"}
    assert all(r.authorized for r in hub.requests if r.method == "GET" and "/resolve/" in r.path)


async def test_a_pull_is_refused_before_any_download_when_it_cannot_succeed(
    client: Client, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = await json_of(await client.post("/api/pull", json={"model": "qwen3:8b-q5_K_M"}), 400)
    assert "GGUF" in error["error"] and "the nearest is qwen3:8b-" in error["error"]
    error = await json_of(await client.post("/api/pull", json={"model": "llama9"}), 404)
    assert "library" in error["error"] and "org/name" in error["error"]
    error = await json_of(await client.post("/api/pull", json={"model": "nobody/nothing"}), 404)
    assert "no such repo" in error["error"]
    error = await json_of(await client.post("/api/pull", json={"model": "someone/gguf"}), 400)
    assert "no weights vLLM loads" in error["error"]
    monkeypatch.setattr(pull, "free_bytes", lambda folder: pull.HEADROOM + 1000)
    error = await json_of(await client.post("/api/pull", json={"model": "qwen3:8b"}), 507)
    assert "not enough disk space" in error["error"]
    assert fetched(hub) == []


async def test_the_huggingface_hub_path_passes_its_progress_on(
    hub: FakeHub, tiny_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files in Xet storage go through huggingface_hub (hf_xet where installed); the fake has
    no Xet storage, so this drives the same call over plain HTTP: the file lands whole and its
    progress bar's updates reach the pull."""
    info = RepoInfo(QWEN, "main", False, ())
    file = HubFile(WEIGHTS, len(tiny_files[WEIGHTS]), None, None)
    seen: list[int] = []
    # It reads 10 MiB at a time; smaller reads show that each one's update is passed on.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    path = await hub_module._via_huggingface_hub(info, file, tmp_path / "x.part", seen.append)
    assert path.read_bytes() == tiny_files[WEIGHTS]
    assert sum(seen) == file.size and len(seen) > 1


async def test_two_pulls_of_one_model_at_once_fetch_it_once(
    client: Client, hub: FakeHub, tiny_files: dict[str, bytes], tmp_path: Path
) -> None:
    first, second = await asyncio.gather(
        client.post("/api/pull", json={"model": "qwen3:8b"}),
        client.post("/api/pull", json={"model": "qwen3"}),
    )
    one, other = await ndjson_lines(first, 60), await ndjson_lines(second, 60)
    assert one[-1] == other[-1] == {"status": "success"}
    waited = [lines for lines in (one, other) if lines[0]["status"].startswith("waiting")]
    assert len(waited) == 1  # the other waited for the first, then found every file there
    assert fetched(hub).count(WEIGHTS) == 1
    assert (tmp_path / "models" / QWEN / WEIGHTS).read_bytes() == tiny_files[WEIGHTS]
    names = {m["name"] for m in (await json_of(await client.get("/api/tags")))["models"]}
    assert names == {"qwen3:8b", "qwen3:latest"}


async def test_through_the_hubs_cdn_redirect_no_token_leaves_the_hub_and_a_cut_resumes(
    aiohttp_server: ServerFactory,
    client: Client,
    tiny_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on huggingface.co: a large file's /resolve/ is a 302 to a CDN on another host (here
    `localhost` for a client that came to 127.0.0.1), which takes signed URLs, not the token."""
    cdn = FakeHub(
        {GATED: FakeRepo(dict(tiny_files), gated=True)},
        token=TOKEN,
        bytes_per_second=SLOW,
        cdn_host="localhost",
    )
    server = await aiohttp_server(cdn.app())
    point_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cdn.drop_after[WEIGHTS] = 500_000
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "llama3.2:1b"}), 60)
    assert "pull again to resume" in lines[-1]["error"]
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "llama3.2:1b"}), 60)
    assert lines[-1] == {"status": "success"}
    assert (tmp_path / "models" / GATED / WEIGHTS).read_bytes() == tiny_files[WEIGHTS]
    from_cdn = [r for r in cdn.requests if r.path.startswith("/cdn/")]
    assert [r.path.rsplit("/", 1)[-1] for r in from_cdn] == [WEIGHTS, WEIGHTS]
    assert from_cdn[1].range is not None and from_cdn[1].range.startswith("bytes=")
    assert not any(r.authorized for r in from_cdn)  # the token stayed with the Hub
    assert all(r.authorized for r in cdn.requests if "/resolve/" in r.path)


async def test_a_configured_model_named_qwen3_8b_starts_from_its_pulled_folder(
    aiohttp_client: ClientFactory, tmp_path: Path, tiny_files: dict[str, bytes]
) -> None:
    folder = tmp_path / "models" / QWEN
    for path, data in tiny_files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    config = fake_config({"chat": {"model": "qwen3:8b"}}, models_dir=str(tmp_path / "models"))
    client = await start(aiohttp_client, config)
    body = {"model": "chat", "prompt": "hi", "stream": False}
    assert (await json_of(await client.post("/api/generate", json=body)))["done"] is True
    argv = engine_cmdline(WorkerView(client.app, "chat").pid)
    assert argv[argv.index("--model") + 1] == str(folder)


# -- a Hub that cannot be reached or answers badly (issue 25) ---------------------------------


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unreachable_hub_is_a_503_with_the_reason(
    client: Client, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    point_hub_at(monkeypatch, closed_port_url())
    reply = await client.post("/api/pull", json={"model": "qwen3:8b", "stream": stream})
    error = await json_of(reply, 503)
    assert set(error) == {"error"} and "cannot reach http://127.0.0.1:" in error["error"]


def bad_hub(listing: web.StreamResponse | None, resolve_to: str = "") -> web.Application:
    """A Hub that answers the file list with `listing` (else a good list of two files) and
    sends every file to `resolve_to`."""
    files = [
        {"rfilename": "config.json", "size": 2, "blobId": "0" * 40},
        {"rfilename": WEIGHTS, "size": 10, "lfs": {"sha256": "0" * 64, "size": 10}},
    ]

    async def model_info(request: web.Request) -> web.StreamResponse:
        return listing or web.json_response({"sha": "1" * 40, "siblings": files})

    async def resolve(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(resolve_to + "/" + request.match_info["path"])

    app = web.Application()
    app.router.add_get("/api/models/{repo:.+}/revision/{revision}", model_info)
    app.router.add_route("*", "/{org}/{name}/resolve/{commit}/{path:.+}", resolve)
    return app


@pytest.mark.parametrize(
    ("listing", "reason"),
    [
        (web.Response(status=500, text="boom"), "the Hub answered HTTP 500"),
        (web.Response(text="<html>a captive portal</html>"), "file list is malformed"),
        (web.json_response({"siblings": 5}), "file list is malformed"),
    ],
)
async def test_a_hub_that_answers_badly_is_a_502_with_the_reason(
    aiohttp_server: ServerFactory,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    listing: web.StreamResponse,
    reason: str,
) -> None:
    server = await aiohttp_server(bad_hub(listing))
    point_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    error = await json_of(await client.post("/api/pull", json={"model": "org/model"}), 502)
    assert reason in error["error"], error


async def test_a_hub_that_does_not_answer_in_time_is_a_504(
    aiohttp_server: ServerFactory, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    app = web.Application()
    app.router.add_get("/{tail:.*}", silent)
    server = await aiohttp_server(app)
    point_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    monkeypatch.setattr(hub_module, "METADATA_TIMEOUT", 0.3)
    error = await json_of(await client.post("/api/pull", json={"model": "org/model"}), 504)
    assert "did not answer" in error["error"]


async def test_a_file_host_that_cannot_be_reached_is_a_503(
    aiohttp_server: ServerFactory, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await aiohttp_server(bad_hub(None, resolve_to=closed_port_url()))
    point_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    request = {"model": "org/model", "stream": False}
    error = await json_of(await client.post("/api/pull", json=request), 503)
    assert "config.json" in error["error"] and "cannot reach" in error["error"], error
    lines = await ndjson_lines(await client.post("/api/pull", json={"model": "org/model"}), 30)
    assert "cannot reach" in lines[-1]["error"]
