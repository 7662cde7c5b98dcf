"""Building a model folder once, atomically: assembled in a temporary sibling folder and renamed
into place, builders of one folder serialised with a lock file, a complete build recognised by a
marker written last. Two processes racing or a crash mid-build never leave a half model where
vLLM would load it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

_MARKER = ".vllama-demo-complete"


def _is_complete(folder: Path, fmt: str) -> bool:
    try:
        return (folder / _MARKER).read_text(encoding="utf-8").strip() == fmt
    except OSError:
        return False


def build_once(dest: Path, fmt: str, write: Callable[[Path], None]) -> Path:
    dest = dest.absolute()
    if _is_complete(dest, fmt):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.parent / f".{dest.name}.lock"):
        # Another process may have finished the build while we waited for the lock.
        if _is_complete(dest, fmt):
            return dest
        # Holding the lock means no one else is building: leftovers are from crashed builds.
        for stale in [
            *dest.parent.glob(f".{dest.name}.tmp-*"),
            *dest.parent.glob(f".{dest.name}.old-*"),
        ]:
            shutil.rmtree(stale, ignore_errors=True)
        # Not mkdtemp: its folders are private (0700), and a plain mkdir honours the umask, so a
        # vLLM worker running as another user can read the model like any other file.
        tmp = _sibling(dest, "tmp")
        tmp.mkdir()
        try:
            write(tmp)
            marker = tmp / _MARKER
            marker.write_text(fmt + "\n", encoding="utf-8")
            # safetensors writes its files 0600; give every file the mode the umask gives a new one.
            mode = marker.stat().st_mode & 0o777
            for file in tmp.rglob("*"):
                if file.is_file():
                    file.chmod(mode)
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _sibling(dest: Path, kind: str) -> Path:
    """A fresh hidden name beside `dest`: same file system, so renames between them are atomic."""
    return dest.parent / f".{dest.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move `src` to `dest`; an outdated or partial `dest` is swapped out, never merged into."""
    # rename(2) replaces only a missing or empty directory: move anything else aside first, so a
    # reader sees either the old folder or the new one, never a mixture.
    if dest.exists() or dest.is_symlink():
        trash = _sibling(dest, "old")
        os.replace(dest, trash)
        os.replace(src, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dest)
