"""A local stand-in for the Hugging Face Hub's download API, for tests that must not go online.

It answers what `huggingface_hub` asks when it looks a model up and fetches its files over plain
HTTP (`HfApi.model_info`, `hf_hub_download`: a HEAD on `/resolve`, then a GET, resumed with a
`Range` request after a dropped connection), with the real Hub's status codes, headers and JSON
field names, so the client's own error mapping (`hf_raise_for_status`), its caching by ETag and
commit, and its size check run unchanged. tests/component/test_fake_hf.py holds it to the real
client.

Deliberately left out: redirects to a CDN and Xet storage (no `X-Xet-*` headers, so the client
takes its plain HTTP path), private repos, datasets and spaces, uploads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from tests.daemon import free_port

OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def point_hub_at(patch: pytest.MonkeyPatch, url: str) -> None:
    """Let this test (and the daemons it starts) reach a Hub at `url`, its fake or a closed
    loopback port: the run is offline otherwise (tests/conftest.py). huggingface_hub read its
    settings when imported, so they are set there too."""
    from huggingface_hub import constants

    patch.setenv("HF_ENDPOINT", url)  # vllama reads it per pull, and passes it on as `endpoint`
    for name in OFFLINE_SWITCHES:
        patch.delenv(name, raising=False)
    patch.setattr(constants, "HF_HUB_OFFLINE", False)


# What the Hub keeps in Git LFS: weights by their suffix, and anything too big for plain git
# (the Hub refuses regular files over 10 MiB).
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf")
LFS_THRESHOLD = 10 * 1024 * 1024

# Fixed dates: the fake's answers then depend on the repo's content only, never on the clock.
_LAST_MODIFIED = "2024-05-01T12:00:00.000Z"
_CREATED_AT = "2024-04-01T12:00:00.000Z"

# `X-Error-Message`s as the Hub words them: the client tells errors apart by `X-Error-Code`,
# and shows the message to the user.
_UNAUTHENTICATED = "Invalid username or password."
_REPO_NOT_FOUND = "Repository not found"
_ENTRY_NOT_FOUND = "Entry not found"

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def git_blob_sha1(content: bytes) -> str:
    """The object id git gives a file's content, which the Hub uses as a regular file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD


@dataclass(frozen=True)
class FakeBlob:
    """One file of a repo with the ids the Hub reports for it."""

    content: bytes
    lfs: bool
    sha256: str  # the LFS object id, and an LFS file's ETag
    blob_id: str  # git's id of what git stores: the file itself, or its LFS pointer

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    @classmethod
    def of(cls, path: str, content: bytes) -> FakeBlob:
        sha256 = hashlib.sha256(content).hexdigest()
        lfs = is_lfs(path, len(content))
        # For an LFS file git holds only a pointer to it, and `blobId` is that pointer's id.
        stored = lfs_pointer(sha256, len(content)) if lfs else content
        return cls(content=content, lfs=lfs, sha256=sha256, blob_id=git_blob_sha1(stored))


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The text git-lfs commits in place of a file (its length is the Hub's `pointerSize`)."""
    spec = "https://git-lfs.github.com/spec/v1"
    return f"version {spec}\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class FakeRepo:
    """A model repo at a single commit: `files` maps a path in the repo to its content."""

    files: dict[str, bytes]
    gated: bool = False  # downloading its files takes `Authorization: Bearer <the hub's token>`
    # The commit id; left empty, it is derived from the content (as git's is), so the same files
    # always give the same commit and changed files a new one.
    sha: str = ""

    def __post_init__(self) -> None:
        if not self.sha:
            tree = hashlib.sha1()
            for path in sorted(self.files):
                tree.update(f"{path}\0{FakeBlob.of(path, self.files[path]).blob_id}\n".encode())
            self.sha = tree.hexdigest()

    @classmethod
    def from_folder(cls, folder: Path, *, gated: bool = False, sha: str = "") -> FakeRepo:
        """A repo of every file under `folder`, named by its path relative to it."""
        files = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        return cls(files=files, gated=gated, sha=sha)

    def blob(self, path: str) -> FakeBlob | None:
        content = self.files.get(path)
        return None if content is None else FakeBlob.of(path, content)


@dataclass(frozen=True)
class FakeRequest:
    """A request as the fake saw it, for tests to check what the client asked for."""

    method: str
    path: str
    range: str | None  # the `Range` header, verbatim
    authorized: bool  # it carried the hub's token


@dataclass(frozen=True)
class _Range:
    start: int
    end: int  # inclusive, as in `Content-Range`


class FakeHub:
    """The Hub's model API and file downloads for `repos` (repo id "org/name" -> repo)."""

    def __init__(
        self,
        repos: dict[str, FakeRepo],
        token: str = "hf_test_token",
        bytes_per_second: float | None = None,
        chunk_size: int = 16 * 1024,
        cdn_host: str | None = None,
    ) -> None:
        """`cdn_host`: large (LFS) files are a 302 to `/cdn/` on this host name (same port), as
        the Hub sends them to its CDN: "localhost" makes it another host to a client that
        came to 127.0.0.1, which must then send no token along."""
        self.cdn_host = cdn_host
        self.repos = repos
        self.token = token
        self.bytes_per_second = bytes_per_second
        self.chunk_size = chunk_size
        # File path in a repo -> how many bytes of its body to send before cutting the
        # connection; one cut each, so a client that resumes then gets the rest.
        self.drop_after: dict[str, int] = {}
        self.requests: list[FakeRequest] = []
        self.sending = 0  # file bodies being sent now (a client that left ends its own)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        # `add_get` also answers HEAD on the same handler, as the Hub does for `/resolve`.
        app.router.add_get("/api/models/{org}/{name}", self._model_info)
        app.router.add_get("/api/models/{org}/{name}/revision/{revision}", self._model_info)
        app.router.add_get("/{org}/{name}/resolve/{revision}/{path:.+}", self._resolve)
        app.router.add_get("/cdn/{org}/{name}/{path:.+}", self._cdn)
        return app

    def _authorized(self, request: web.BaseRequest) -> bool:
        return request.headers.get(hdrs.AUTHORIZATION) == f"Bearer {self.token}"

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(
            FakeRequest(
                method=request.method,
                path=request.path,
                range=request.headers.get(hdrs.RANGE),
                authorized=self._authorized(request),
            )
        )
        return await handler(request)

    def _repo(self, request: web.Request) -> tuple[str, FakeRepo]:
        """The repo a request names at the revision it names, or the Hub's error for it."""
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            # The Hub does not tell an anonymous caller whether a repo exists: a private repo
            # and a missing one both answer 401. Only a signed-in caller learns it is missing.
            if self._authorized(request):
                raise _error(web.HTTPNotFound, "RepoNotFound", _REPO_NOT_FOUND)
            raise _error(web.HTTPUnauthorized, "RepoNotFound", _UNAUTHENTICATED)
        revision = request.match_info.get("revision", "main")
        if revision not in ("main", repo.sha):
            raise _error(web.HTTPNotFound, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo_id, repo

    async def _model_info(self, request: web.Request) -> web.Response:
        # A gated repo's card and file list are public on the Hub: only its files take a token.
        repo_id, repo = self._repo(request)
        with_blobs = request.query.get("blobs", "").lower() in ("true", "1")
        siblings: list[dict[str, object]] = []
        for path in sorted(repo.files):
            sibling: dict[str, object] = {"rfilename": path}
            if with_blobs:
                blob = FakeBlob.of(path, repo.files[path])
                sibling.update(size=blob.size, blobId=blob.blob_id)
                if blob.lfs:
                    pointer = lfs_pointer(blob.sha256, blob.size)
                    # Named `sha256` here (the tree API calls the same value `oid`).
                    sibling["lfs"] = {
                        "sha256": blob.sha256,
                        "size": blob.size,
                        "pointerSize": len(pointer),
                    }
            siblings.append(sibling)
        org = request.match_info["org"]
        body = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],  # a Mongo ObjectId's shape
            "id": repo_id,
            "modelId": repo_id,
            "author": org,
            "sha": repo.sha,
            "lastModified": _LAST_MODIFIED,
            "createdAt": _CREATED_AT,
            "private": False,
            "disabled": False,
            "gated": "manual" if repo.gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        return web.json_response(body)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id, repo = self._repo(request)
        if repo.gated and not self._authorized(request):
            if hdrs.AUTHORIZATION not in request.headers:
                raise _error(
                    web.HTTPUnauthorized,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be"
                    " authenticated to access it. Please log in.",
                )
            # Another token: a signed-in user who was not granted access.
            raise _error(
                web.HTTPForbidden,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized"
                f" list. Visit https://huggingface.co/{repo_id} to ask for access.",
            )
        path = request.match_info["path"]
        blob = repo.blob(path)
        if blob is None:
            # The commit comes with it: the client caches that the file is absent at that commit.
            raise _error(
                web.HTTPNotFound, "EntryNotFound", _ENTRY_NOT_FOUND, {"X-Repo-Commit": repo.sha}
            )

        headers = {
            "X-Repo-Commit": repo.sha,
            hdrs.ETAG: f'"{blob.etag}"',
            hdrs.ACCEPT_RANGES: "bytes",
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: (
                f"inline; filename*=UTF-8''{quote(Path(path).name)};"
                f' filename="{Path(path).name}";'
            ),
        }
        if blob.lfs:
            # The client prefers these to ETag/Content-Length: they describe the file itself
            # even where the response is a redirect to where its bytes are.
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
            if self.cdn_host is not None:
                where = f"/cdn/{repo_id}/{quote(path)}?signature=fake"
                headers[hdrs.LOCATION] = f"http://{self.cdn_host}:{request.url.port}{where}"
                return web.Response(status=302, headers=headers)
        return await self._serve(request, repo, path, blob, headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        """Where a redirect sends an LFS file's bytes: signed URLs, so no token is needed."""
        _, repo = self._repo(request)
        path = request.match_info["path"]
        blob = repo.blob(path)
        if blob is None:
            raise web.HTTPNotFound()
        headers: dict[str, str] = {hdrs.ETAG: f'"{blob.sha256}"', hdrs.ACCEPT_RANGES: "bytes"}
        return await self._serve(request, repo, path, blob, headers)

    async def _serve(
        self,
        request: web.Request,
        repo: FakeRepo,
        path: str,
        blob: FakeBlob,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A file's bytes (or the range asked for), paced and cut as the knobs say."""
        wanted = _parse_range(request.headers.get(hdrs.RANGE), blob.size)
        if wanted is None:
            status, start, end = 200, 0, blob.size - 1
        elif wanted.start >= blob.size:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers={"X-Repo-Commit": repo.sha, hdrs.CONTENT_RANGE: f"bytes */{blob.size}"}
            )
        else:
            status, start, end = 206, wanted.start, min(wanted.end, blob.size - 1)
            headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end}/{blob.size}"

        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end + 1 - start
        await response.prepare(request)
        if request.method == hdrs.METH_GET:
            if not await self._send(request, response, path, blob.content[start : end + 1]):
                # Cut: aiohttp's own end of the response then finds the connection gone and
                # lets it be, where an exception raised here would be logged as a server error.
                return response
        await response.write_eof()
        return response

    async def _send(
        self, request: web.Request, response: web.StreamResponse, path: str, body: bytes
    ) -> bool:
        """Stream `body` in chunks, at `bytes_per_second`, cut short once if `drop_after` says;
        False if it was cut."""
        limit = self.drop_after.pop(path, None)
        if limit is not None and limit >= len(body):
            self.drop_after[path] = limit  # this response is too short to be cut: keep the cut
            limit = None
        self.sending += 1
        try:
            return await self._paced(request, response, body, limit)
        finally:
            self.sending -= 1

    async def _paced(
        self, request: web.Request, response: web.StreamResponse, body: bytes, limit: int | None
    ) -> bool:
        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = 0
        while sent < len(body):
            size = self.chunk_size if limit is None else min(self.chunk_size, limit - sent)
            chunk = body[sent : sent + size]
            await response.write(chunk)
            sent += len(chunk)
            if limit is not None and sent >= limit:
                await self._cut(request)
                return False
            if self.bytes_per_second:
                # Pace by the total so far, so small sleeps' overshoots do not add up.
                delay = began + sent / self.bytes_per_second - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        return True

    @staticmethod
    async def _cut(request: web.Request) -> None:
        """Drop the connection the way a network failure does: no end to the body, so the
        client gets fewer bytes than the Content-Length it was promised."""
        transport = request.transport
        assert transport is not None
        # `abort` throws away what the transport has not sent yet: wait for it to go out
        # first, so the client gets exactly the bytes `drop_after` names.
        while transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.001)
        transport.abort()


def _parse_range(header: str | None, size: int) -> _Range | None:
    """The single byte range a `Range` header asks for; None to send the whole file (no header,
    or one this fake does not take, which HTTP lets a server ignore)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        if last and int(last) < start:
            return None  # not a valid range at all, so ignored rather than unsatisfiable
        return _Range(start, int(last) if last else size - 1)
    if last:  # `bytes=-N`: the last N bytes
        return _Range(max(size - int(last), 0), size - 1)
    return None


def _error(
    kind: type[web.HTTPError],
    code: str,
    message: str,
    extra: dict[str, str] | None = None,
) -> web.HTTPError:
    """An error the Hub's way: the client tells errors apart by `X-Error-Code`."""
    headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
    return kind(
        headers=headers, text=json.dumps({"error": message}), content_type="application/json"
    )


@contextmanager
def serve_in_thread(hub: FakeHub) -> Iterator[str]:
    """The fake on a free local port, served from a thread (for tests that are not async: a
    daemon subprocess pulls from it); yields its URL, for HF_ENDPOINT."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(hub.app())
    loop.run_until_complete(runner.setup())
    port = free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
