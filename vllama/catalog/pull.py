"""`/api/pull`: a Hugging Face repo, named as Ollama's library names it (`qwen3:8b`) or by its id
(`org/name[:revision]`), into the models folder, with Ollama's progress updates.

Everything that can refuse a pull (an unknown name or tag, the Hub's answer, a gated repo, too
little disk) is checked before the first update, so it is a plain HTTP error. Files go to
`.pulling/<org>/<name>/` first and move into the model's folder at the end, `config.json` last:
a scan never sees half a model, and an interrupted pull resumes from what is there. Only the
files vLLM loads are fetched (`select_files`).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from vllama.catalog import hub, library
from vllama.catalog.hub import HubFile, PullError, RepoInfo
from vllama.catalog.names import check_name, is_repo_id
from vllama.catalog.pulled import PulledNames

if TYPE_CHECKING:
    from aiohttp import ClientSession

PROGRESS_EVERY = 0.25  # seconds between a file's byte updates (a terminal redraws each)
HEADROOM = 1 << 30  # bytes a pull leaves free on the models folder's disk
STAGING = ".pulling"
LOCK_POLL = 0.5  # seconds between looks at a lock another pull holds
# Formats and copies vLLM never reads (another framework's weights, GGUF, `original/` twins).
_SKIP_DIRS = ("original/", "onnx/", "openvino/", "coreml/", "gguf/", "flax_model/", "tf_model/")
_SKIP_SUFFIXES = (
    ".pth", ".pt", ".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".ot", ".tflite",
    ".mlmodel", ".md", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf",
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    repo: str
    revision: str
    name: str | None  # the library name it is pulled as (`qwen3:8b`); None for a repo id


def target_of(requested: str, names: library.Library) -> Target:
    """What a pull of `requested` fetches; `PullError` (400/404) for a name that names nothing."""
    check_name(requested)  # the revision, too, is checked like a tag
    try:
        match = library.lookup(requested, names)
    except library.LibraryError as exc:
        raise PullError(400, f"cannot pull {requested!r}: {exc}") from None
    if match is not None:
        return Target(match.repo, "main", match.name)
    # Ollama's way to name a Hugging Face repo (`hf.co/org/name[:quantization]`), where the tag
    # picks a GGUF file; vLLM serves the repo's safetensors, so only the bare repo is pulled.
    name = requested.removeprefix("hf.co/").removeprefix("huggingface.co/")
    repo, _, tag = name.partition(":")
    if name != requested and tag and library.quantization(tag):
        raise PullError(
            400,
            f"cannot pull {requested!r}: {tag} names a GGUF file, which vLLM does not serve; pull "
            f"a repo with safetensors weights (org/name), or an Ollama name such as "
            "qwen3:8b-q4_K_M (docs/MODELS.md)",
        )
    if "/" not in repo:
        raise PullError(
            404,
            f"cannot pull {requested!r}: not in vllama's library of Ollama names "
            "(docs/MODELS.md) and not a Hugging Face repo id (org/name, e.g. Qwen/Qwen3-8B)",
        )
    if not is_repo_id(repo):
        raise PullError(400, f"cannot pull {requested!r}: a Hugging Face repo id is org/name")
    return Target(repo, "main" if tag in ("", "latest") else tag, None)


def select_files(files: tuple[HubFile, ...]) -> list[HubFile]:
    """The files of a repo that vLLM loads: configs, tokenizer, code and one copy of the weights
    (top-level safetensors, `model*` ones over a consolidated twin; .bin only without them)."""
    keep = [
        f
        for f in files
        if not any(part.startswith(".") for part in f.path.split("/"))
        and not f.path.startswith(_SKIP_DIRS)
        and not f.path.lower().endswith(_SKIP_SUFFIXES)
    ]
    weights = _weight_files({f.path: f.size for f in keep})
    top = {f.path for f in keep if "/" not in f.path}
    has_safetensors = any(p.endswith(".safetensors") for p in top)

    def wanted(file: HubFile) -> bool:
        if "/" in file.path or file.path in weights:
            return True
        if file.path.endswith((".safetensors", ".bin")):  # a twin of the weights vLLM loads
            return False
        # The index of weights not fetched would send vLLM looking for them.
        return not (has_safetensors and file.path.endswith(".bin.index.json"))

    return [f for f in keep if wanted(f)]


def _weight_files(sizes: dict[str, int]) -> set[str]:
    """Of a repo's files (path -> bytes), the weights vLLM loads: the top-level safetensors
    (`model*` ones when a consolidated copy sits beside them, as in Mistral's repos), else the
    top-level .bin files; never `original/` copies."""
    top = [name for name in sizes if "/" not in name]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    if any(name.startswith("model") for name in safetensors):
        safetensors = [n for n in safetensors if n.startswith("model")]
    return set(safetensors or [n for n in top if n.endswith(".bin")])


def loaded_weight_bytes(sizes: dict[str, int]) -> int | None:
    """The size of the weights vLLM loads of a repo's files (path -> bytes); None for none."""
    weights = _weight_files(sizes)
    return sum(sizes[name] for name in weights) if weights else None


async def remote_weight_bytes(repo_id: str, revision: str = "main") -> int | None:
    """The size of the weights vLLM would download for a Hub repo, from the Hub's metadata;
    None when the Hub does not answer (offline) or the repo has no weights."""
    repo, _, tag = repo_id.partition(":")
    if not is_repo_id(repo):
        return None
    try:
        async with hub.session() as http:
            info = await hub.repo_info(http, repo, tag or revision)
    except PullError:  # offline, gated, missing: the start will say why
        return None
    return loaded_weight_bytes({f.path: f.size for f in info.files})


async def pull_progress(
    requested: str, models_dir: Path, names: library.Library, pulled: PulledNames
) -> AsyncIterator[dict[str, Any]]:
    target = target_of(requested, names)
    folder, staging = models_dir / target.repo, models_dir / STAGING / target.repo
    lock = _Lock(models_dir / STAGING / f"{target.repo}.lock")
    try:
        async with hub.session() as http:
            info = await hub.repo_info(http, target.repo, target.revision)
            if info.gated:
                await _check_access(http, info)
            files = select_files(info.files)
            if not _weight_files({f.path: f.size for f in files}):
                raise PullError(
                    400,
                    f"cannot pull {target.repo}: it has no weights vLLM loads (safetensors or "
                    ".bin at its top level; a GGUF-only repo has none)",
                )
            if not await asyncio.to_thread(lock.take):
                # Another client (or vllama sharing this folder) pulls it now: wait, then
                # fetch only what it has not.
                yield {"status": f"waiting for another pull of {target.repo}"}
                # Polled, not awaited as an event: the holder may be another process, and a
                # thread blocked in flock could not be cancelled when this client goes away.
                while not await asyncio.to_thread(lock.take):  # noqa: ASYNC110
                    await asyncio.sleep(LOCK_POLL)
            todo, needed = await asyncio.to_thread(_plan, files, folder, staging)
            await asyncio.to_thread(_check_space, models_dir, needed)
            yield {"status": "pulling manifest"}
            for file in files:
                if file in todo:
                    async for update in _fetch(http, info, file, staging):
                        yield update
                else:  # already here: Ollama's clients still draw it, whole
                    yield _update(file, file.size)
        yield {"status": "verifying sha256 digest"}  # each file's digest was checked as it landed
        await asyncio.to_thread(_install, files, staging, folder)
        yield {"status": "writing manifest"}
        if target.name is not None:
            await asyncio.to_thread(pulled.put, target.name, target.repo)
        yield {"status": "success"}
    finally:
        lock.release()


class _Lock:
    """One pull of a repo at a time, across clients and processes (an advisory file lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def take(self) -> bool:
        """Blocking: whether the lock is now ours (never waits for it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        """Quick (closing the file drops the lock), so safe where nothing may be awaited."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _check_access(http: ClientSession, info: RepoInfo) -> None:
    """A gated repo: refused now, as an HTTP error, rather than at its first file."""
    if not hub.token():
        raise PullError(401, hub.gated_message(info.repo, with_token=False))
    url = f"{hub.endpoint()}/{info.repo}/resolve/{info.commit}/config.json"
    headers = {"Authorization": f"Bearer {hub.token()}"}
    try:
        async with http.head(url, headers=headers, allow_redirects=False) as response:
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise hub.unreachable(exc, f"pull {info.repo}") from None
    if status in (401, 403):
        raise PullError(403, hub.gated_message(info.repo, with_token=True))


def _plan(files: list[HubFile], folder: Path, staging: Path) -> tuple[list[HubFile], int]:
    """Blocking: the files still to fetch, and the bytes they still need."""
    todo, needed = [], 0
    for file in files:
        if _size(folder / file.path) == file.size or _size(staging / file.path) == file.size:
            continue
        todo.append(file)
        needed += file.size - (_size(_part(staging, file)) or 0)
    return todo, needed


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _part(staging: Path, file: HubFile) -> Path:
    return staging / f"{file.path}.part"


def free_bytes(folder: Path) -> int:
    """Blocking: free bytes on the disk `folder` is (or will be) on."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _check_space(models_dir: Path, needed: int) -> None:
    free = free_bytes(models_dir)
    if needed + HEADROOM > free:
        raise PullError(
            507,
            f"not enough disk space: the pull needs {_gb(needed)} more and {_gb(free)} is free "
            f"in {models_dir} (vllama leaves {_gb(HEADROOM)} free)",
        )


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _update(file: HubFile, completed: int) -> dict[str, Any]:
    status = f"pulling {file.path}"
    return {"status": status, "digest": file.digest, "total": file.size, "completed": completed}


async def _fetch(
    http: ClientSession, info: RepoInfo, file: HubFile, staging: Path
) -> AsyncIterator[dict[str, Any]]:
    """One file's download, as updates: bytes so far, at most every PROGRESS_EVERY seconds."""
    received = [0]
    started = asyncio.Event()  # the first call says how much an earlier pull left

    def progress(count: int) -> None:
        received[0] += count
        started.set()

    part = _part(staging, file)
    task = asyncio.create_task(hub.download(http, info, file, part, progress))
    waiter = asyncio.create_task(started.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        shown, last = received[0], time.monotonic()
        yield _update(file, min(shown, file.size))
        while not task.done():
            await asyncio.wait({task}, timeout=PROGRESS_EVERY)
            now = time.monotonic()
            if received[0] != shown and (now - last >= PROGRESS_EVERY or task.done()):
                shown, last = received[0], now
                yield _update(file, min(shown, file.size))
        fetched = task.result()
    finally:
        waiter.cancel()
        task.cancel()  # the client went away: the partial copy stays for the next pull
    await asyncio.to_thread(_move, fetched or part, staging / file.path)
    if received[0] != shown:
        yield _update(file, file.size)


def _install(files: list[HubFile], staging: Path, folder: Path) -> None:
    """Blocking: move the fetched files into the model's folder, `config.json` last (a folder
    is a model once it has one), then drop the staging folder."""
    for file in sorted(files, key=lambda f: f.path == "config.json"):
        if (staging / file.path).exists():
            _move(staging / file.path, folder / file.path)
    shutil.rmtree(staging, ignore_errors=True)


def _move(source: Path, destination: Path) -> None:
    """Blocking: `source` to `destination` by rename (one disk), its folder made first."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)
