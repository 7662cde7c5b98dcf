"""Models found on disk rather than configured: the models folder and the Hugging Face cache."""

from __future__ import annotations

import os
from pathlib import Path


def hf_cache_dir() -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def scan_hf_cache(cache: Path) -> dict[str, Path]:
    """Repo id -> snapshot with a config.json: the one refs/main names, else the newest."""
    found: dict[str, Path] = {}
    try:
        repos = sorted(p for p in Path(cache).iterdir() if p.name.startswith("models--"))
    except OSError:
        return found
    for repo in repos:
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        snapshots = repo / "snapshots"
        try:
            main = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
        except OSError:
            main = ""
        if main and (snapshots / main / "config.json").is_file():
            found[repo_id] = snapshots / main
            continue
        try:
            candidates = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
        except OSError:
            continue
        if candidates:
            found[repo_id] = max(candidates, key=lambda s: (s.stat().st_mtime, s.name))
    return found


def scan_models_dir(models_dir: Path) -> dict[str, Path]:
    """Model folders one level down ("name") or two ("org/name"); hidden names are skipped."""
    found: dict[str, Path] = {}
    for child in _visible_dirs(Path(models_dir)):
        if (child / "config.json").is_file():
            found[child.name] = child
            continue
        for grandchild in _visible_dirs(child):
            if (grandchild / "config.json").is_file():
                found[f"{child.name}/{grandchild.name}"] = grandchild
    return found


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError:
        return []
