"""The Hugging Face Hub, as `/api/pull` uses it: a repo's file list, and one file's bytes.

Plain HTTP through aiohttp, so bytes are counted as they arrive and an interrupted file resumes
with a `Range` request from its partial copy. Files the Hub keeps in Xet storage go through
huggingface_hub's own download (`hf_xet`: parallel and deduplicated) where `hf_xet` is installed.
`HF_ENDPOINT` and `HF_TOKEN` are read on each pull, as huggingface_hub reads them.

Every failure is a `PullError` with the reason: a Hub that cannot be reached is a 503, one that
does not answer in time a 504, one that answers badly (an unexpected status, a body that is not
the file list, a file whose digest does not match) a 502; what the Hub says of the repo (missing,
gated) keeps its own status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

DEFAULT_ENDPOINT = "https://huggingface.co"
METADATA_TIMEOUT = 20.0  # seconds for the file list: offline fails fast, and that is the answer
METADATA_LIMIT = 64 * 1024 * 1024  # a file list larger than this is no Hub's answer
READ_TIMEOUT = 60.0  # seconds without a byte before a download counts as stalled
CHUNK = 1 << 20


class PullError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def unreachable(exc: BaseException, what: str) -> PullError:
    """A request to the Hub that failed, as a `PullError`: 504 for no answer in time, 503 for a
    Hub (or a proxy, or a CDN it sent us to) that cannot be reached, 502 for an answer that
    broke off or was not HTTP. `what` says whose request it was (`pull org/name: file`)."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts included
        return PullError(504, f"{what}: the Hugging Face Hub did not answer in time ({exc!r})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return PullError(503, f"{what}: cannot reach {endpoint()}: {exc}")
    return PullError(502, f"{what}: the Hugging Face Hub's answer broke off or was bad: {exc!r}")


@dataclass(frozen=True)
class HubFile:
    path: str  # relative to the repo root
    size: int
    sha256: str | None  # large (LFS) files
    blob_id: str | None  # git's blob sha1 (the others)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else ""


@dataclass(frozen=True)
class RepoInfo:
    repo: str
    commit: str
    gated: bool
    files: tuple[HubFile, ...]


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def session() -> aiohttp.ClientSession:
    # trust_env: production hosts reach the Hub through HTTPS_PROXY more often than not.
    timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=READ_TIMEOUT)
    return aiohttp.ClientSession(timeout=timeout, trust_env=True)


def _auth() -> dict[str, str]:
    secret = token()
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def gated_message(repo: str, with_token: bool) -> str:
    page = f"{endpoint()}/{repo}"
    if with_token:
        return (
            f"{repo} is gated and HF_TOKEN's account has no access to it: accept its license "
            f"at {page} with that account, then pull again"
        )
    return (
        f"{repo} is gated on Hugging Face: accept its license at {page}, create a read token, "
        "set HF_TOKEN in vllama's environment (for the service: `systemctl edit vllama`, "
        "Environment=HF_TOKEN=...) and pull again"
    )


async def repo_info(http: aiohttp.ClientSession, repo: str, revision: str) -> RepoInfo:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PullError(503, f"pull {repo}: HF_HUB_OFFLINE is set, so nothing can be pulled")
    url = f"{endpoint()}/api/models/{repo}/revision/{quote(revision, safe='')}"
    try:
        async with http.get(
            url,
            params={"blobs": "true"},
            headers=_auth(),
            timeout=aiohttp.ClientTimeout(total=METADATA_TIMEOUT),
        ) as response:
            if response.status != 200:
                raise _status_error(response, repo, revision)
            body = await response.content.read(METADATA_LIMIT + 1)
    except TimeoutError:
        raise PullError(
            504, f"pull {repo}: the Hugging Face Hub did not answer in {METADATA_TIMEOUT:g}s"
        ) from None
    except aiohttp.ClientError as exc:
        raise unreachable(exc, f"pull {repo}") from None
    if len(body) > METADATA_LIMIT:
        raise PullError(502, f"pull {repo}: the Hub's file list is over {METADATA_LIMIT} bytes")
    try:
        data: Any = json.loads(body)
        files = tuple(_file(sibling) for sibling in data["siblings"])
        return RepoInfo(repo, str(data.get("sha") or revision), bool(data.get("gated")), files)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise PullError(502, f"pull {repo}: the Hub's file list is malformed ({exc!r})") from None


def _file(sibling: dict[str, Any]) -> HubFile:
    lfs = sibling.get("lfs") or {}
    size = lfs.get("size", sibling.get("size"))
    return HubFile(
        path=str(sibling["rfilename"]),
        size=int(size or 0),
        sha256=str(lfs["sha256"]) if lfs.get("sha256") else None,
        blob_id=str(sibling["blobId"]) if sibling.get("blobId") else None,
    )


def _status_error(response: aiohttp.ClientResponse, repo: str, what: str) -> PullError:
    code = response.headers.get("X-Error-Code", "")
    if code == "GatedRepo":
        return PullError(401 if response.status == 401 else 403, gated_message(repo, bool(token())))
    if code == "RepoNotFound" or (response.status in (401, 404) and not code):
        hint = "" if token() else " (a private repo needs HF_TOKEN)"
        return PullError(404, f"pull {repo}: no such repo on {endpoint()}{hint}")
    if code in ("RevisionNotFound", "EntryNotFound"):
        return PullError(404, f"pull {repo}: {what} not found")
    return PullError(502, f"pull {repo}: {what}: the Hub answered HTTP {response.status}")


def xet_available() -> bool:
    return find_spec("hf_xet") is not None


class _Part:
    """A file's partial copy and the digest of its bytes so far (blocking methods: threads)."""

    def __init__(self, path: Path, file: HubFile) -> None:
        self.path, self.file = path, file
        self.hasher: Any = None
        self.size = 0

    def open(self) -> int:
        """Take up what an earlier pull left; the bytes already there."""
        self.size = self.path.stat().st_size if self.path.exists() else 0
        if self.size > self.file.size:  # not a partial copy of this file
            self.path.unlink()
            self.size = 0
        self.hasher = _new_hasher(self.file)
        if self.size:
            with self.path.open("rb") as handle:
                while block := handle.read(CHUNK):
                    self.hasher.update(block)
        return self.size

    def restart(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")
        self.hasher, self.size = _new_hasher(self.file), 0

    def append(self, chunk: bytes) -> None:
        with self.path.open("ab") as out:
            out.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def check(self) -> bool:
        """Whether the copy is whole; a wrong one is removed."""
        expected = self.file.sha256 or self.file.blob_id
        if expected is None or self.hasher.hexdigest() == expected:
            return True
        self.path.unlink(missing_ok=True)
        return False


async def download(
    http: aiohttp.ClientSession,
    info: RepoInfo,
    file: HubFile,
    part_path: Path,
    progress: Callable[[int], None],
) -> Path | None:
    """Fetch `file` into `part_path`, resuming from the bytes already there; `progress(n)` as
    bytes arrive (the first call counts those already there). The path of a file that
    huggingface_hub fetched instead (Xet storage), else None: `part_path` holds the file."""
    url = f"{endpoint()}/{info.repo}/resolve/{info.commit}/{quote(file.path)}"
    part = _Part(part_path, file)
    have = await asyncio.to_thread(part.open)
    progress(have)
    headers = {**_auth(), "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    what = f"pull {info.repo}: {file.path}"
    try:
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                if response.headers.get("X-Xet-Hash") and xet_available():
                    progress(-have)  # huggingface_hub starts the file over and counts from 0
                    return await _via_huggingface_hub(info, file, part_path, progress)
                if "Location" not in response.headers:
                    raise PullError(502, f"{what}: a redirect to nowhere")
                target = urljoin(url, response.headers["Location"])
                if urlsplit(target).netloc != urlsplit(url).netloc:  # a CDN: no token to it
                    headers.pop("Authorization", None)
                async with http.get(target, headers=headers) as redirected:
                    await _receive(redirected, info, part, progress)
            else:
                await _receive(response, info, part, progress)
    except (aiohttp.ClientError, TimeoutError) as exc:  # no answer (a cut body: `_receive`)
        raise unreachable(exc, what) from None
    if not await asyncio.to_thread(part.check):
        raise PullError(502, f"{what}: digest mismatch; pull again")
    return None


async def _receive(
    response: aiohttp.ClientResponse,
    info: RepoInfo,
    part: _Part,
    progress: Callable[[int], None],
) -> None:
    """Append the response's body to the partial copy."""
    file = part.file
    if response.status == 416 and part.size == file.size:
        return  # the partial copy is already whole
    if response.status not in (200, 206):
        raise _status_error(response, info.repo, file.path)
    if response.status == 200 or not part.size:  # no Range, or the server ignored it
        progress(-part.size)
        await asyncio.to_thread(part.restart)
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            await asyncio.to_thread(part.append, chunk)
            progress(len(chunk))
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = 504 if isinstance(exc, TimeoutError) else 502
        raise PullError(
            status, f"pull {info.repo}: {file.path}: interrupted ({exc!r}); pull again to resume"
        ) from None


def _new_hasher(file: HubFile) -> Any:
    if file.sha256:
        return hashlib.sha256()
    hasher = hashlib.sha1()  # git's blob id: sha1 of "blob <size>\0" + the bytes
    hasher.update(f"blob {file.size}\0".encode())
    return hasher


async def _via_huggingface_hub(
    info: RepoInfo, file: HubFile, part: Path, progress: Callable[[int], None]
) -> Path:
    """A Xet-stored file through huggingface_hub and hf_xet (fast; resumes only what hf_xet's
    own cache keeps), with its progress bar's updates passed on."""
    from huggingface_hub import hf_hub_download
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    loop = asyncio.get_running_loop()

    class Forward(tqdm):  # type: ignore[misc]  # tqdm ships no type hints
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # nothing drawn: the updates go to the client
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            loop.call_soon_threadsafe(progress, int(n or 0))
            return None

    folder = part.parent / ".xet"
    try:
        path = await asyncio.to_thread(
            hf_hub_download,
            info.repo,
            file.path,
            revision=info.commit,
            local_dir=str(folder),
            endpoint=endpoint(),
            token=token() or False,
            tqdm_class=Forward,
        )
    except OSError as exc:  # huggingface_hub's HTTP and connection errors are OSErrors
        raise PullError(502, f"pull {info.repo}: {file.path}: via huggingface_hub: {exc}") from None
    return Path(path)
