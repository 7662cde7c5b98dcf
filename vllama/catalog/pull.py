"""`/api/pull`: download a Hugging Face repo into the models folder, with Ollama-style progress.

Progress is per file (`total` is the file's size, `completed` jumps when the file is done), as
huggingface_hub reports no byte progress through its public API. With no network the first step
fails within seconds, and that failure is the answer: nothing hangs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vllama.catalog.names import check_name

# A Hugging Face repo id: `org/name`, optionally with `:revision` (Ollama's tag; `latest` = main).
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
METADATA_TIMEOUT = 20.0


class PullError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_repo(requested: str) -> tuple[str, str]:
    """`org/name[:tag]` -> (repo id, revision)."""
    check_name(requested)  # the revision, too, is checked like a tag
    repo, _, tag = requested.partition(":")
    if not _REPO.match(repo) or ".." in repo:
        raise PullError(
            400,
            f"cannot pull {requested!r}: vllama pulls Hugging Face repos, named org/name "
            "(e.g. Qwen/Qwen2.5-0.5B-Instruct)",
        )
    return repo, "main" if tag in ("", "latest") else tag


async def pull_progress(requested: str, models_dir: Path) -> AsyncIterator[dict[str, Any]]:
    repo, revision = parse_repo(requested)
    from huggingface_hub import HfApi, hf_hub_download  # heavy: only when pulling

    yield {"status": "pulling manifest"}
    api = HfApi()
    try:
        info = await asyncio.wait_for(
            asyncio.to_thread(
                api.model_info, repo, revision=revision, files_metadata=True, timeout=10
            ),
            METADATA_TIMEOUT,
        )
    except TimeoutError:
        raise PullError(
            500, f"pull {repo}: the Hugging Face Hub did not answer in {METADATA_TIMEOUT:g}s"
        ) from None
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "cannot pull"
        raise PullError(500, f"pull {repo}: {type(exc).__name__}: {exc}") from None
    target = models_dir / repo
    for sibling in info.siblings or []:
        size = sibling.size or 0
        digest = f"sha256:{sibling.lfs.sha256}" if sibling.lfs else ""
        status = f"pulling {sibling.rfilename}"
        yield {"status": status, "digest": digest, "total": size, "completed": 0}
        try:
            await asyncio.to_thread(
                hf_hub_download,
                repo,
                sibling.rfilename,
                revision=revision,
                local_dir=str(target),
            )
        except Exception as exc:
            raise PullError(500, f"pull {repo}: {sibling.rfilename}: {exc}") from None
        yield {"status": status, "digest": digest, "total": size, "completed": size}
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


async def remote_weight_bytes(repo_id: str, revision: str = "main") -> int | None:
    """The size of the weights vLLM would download for a Hub repo (top-level safetensors, else
    top-level .bin; never `original/` copies), from the Hub's metadata; None when the Hub does
    not answer (offline) or the repo has no weights."""
    try:
        repo, revision = parse_repo(repo_id)
    except PullError:
        return None
    from huggingface_hub import HfApi

    try:
        info = await asyncio.wait_for(
            asyncio.to_thread(
                HfApi().model_info, repo, revision=revision, files_metadata=True, timeout=10
            ),
            METADATA_TIMEOUT,
        )
    except Exception:  # offline, gated, missing: the start will say why
        return None
    return loaded_weight_bytes({s.rfilename: s.size or 0 for s in info.siblings or []})


def loaded_weight_bytes(sizes: dict[str, int]) -> int | None:
    """Of a repo's files (path -> bytes), the size of the weights vLLM loads: the top-level
    safetensors (`model*` ones when a consolidated copy sits beside them, as in Mistral's
    repos), else the top-level .bin files; never `original/` copies."""
    top = {name: size for name, size in sizes.items() if "/" not in name}
    safetensors = {n: s for n, s in top.items() if n.endswith(".safetensors")}
    if any(name.startswith("model") for name in safetensors):
        safetensors = {n: s for n, s in safetensors.items() if n.startswith("model")}
    shards = list(safetensors.values()) or [s for n, s in top.items() if n.endswith(".bin")]
    return sum(shards) if shards else None
