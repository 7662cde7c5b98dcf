"""vllama's small JSON stores in the models folder (derived models, pulled names): read whole,
rewritten whole on every change, one writer at a time.

A change is made in this order, so that memory never holds what the disk does not: take the
writers' lock (a thread lock for this process, an advisory `flock` on a hidden lock file beside
the store for other processes sharing the models folder), read the file again if another
process changed it since this one last did, build the new document, encode it (a document that
cannot be encoded, or is over the store's bound, is refused here: nothing was written), write it
to a temporary file, fsync, `os.replace` it over the store and fsync the folder; only then does
the caller change its memory. A failed write leaves the old file whole and no temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vllama.catalog.files import ModelFormatError, json_object

# A write that fails for want of room: the disk (or the user's quota) is full.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


class StoreError(Exception):
    """A store could not be saved; nothing changed, on disk or in memory."""


class StoreFull(StoreError):
    """A store could not be saved because its disk (or quota) is full."""


class StoreRefused(Exception):
    """A change a store will not take (it cannot be encoded, or is over a bound); nothing
    changed. The client's to fix: a 400."""


def load_document(path: Path) -> dict[str, Any] | None:
    """Blocking: the store's JSON object; None when there is no store yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelFormatError(f"{path}: unreadable ({exc})") from exc
    return json_object(raw, path)


def encode(document: dict[str, Any]) -> bytes:
    """`document` as the store's bytes (`StoreRefused` when it cannot be encoded): one JSON
    object, each item of a top-level list on its own line (readable, and encoded by the C
    encoder: no recursion in Python)."""
    try:
        parts = []
        for key, value in sorted(document.items()):
            if isinstance(value, list):
                items = ",\n  ".join(json.dumps(item, sort_keys=True) for item in value)
                text = f"[\n  {items}\n]" if value else "[]"
            else:
                text = json.dumps(value, sort_keys=True)
            parts.append(f"{json.dumps(key)}: {text}")
        return ("{\n" + ",\n".join(parts) + "\n}\n").encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreRefused(f"cannot be stored as JSON ({type(exc).__name__})") from None


class DocumentFile:
    """One store's file: read, and replaced atomically by one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = 0  # bytes of the file as this process last read or wrote it
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) then

    def load(self) -> dict[str, Any] | None:
        """Blocking: the document on disk (None when there is none yet)."""
        seen = self._signature()
        document = load_document(self.path)
        self._seen, self.size = seen, seen[2] if seen else 0
        return document

    @contextlib.contextmanager
    def writing(self) -> Iterator[tuple[bool, dict[str, Any] | None]]:
        """Blocking: hold the writers' lock for one change. Yields (changed, document):
        whether another process changed the file since this one last read or wrote it, and
        then the document it holds now (re-read under the lock)."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(f".{self.path.name}.lock")
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise _write_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self._signature() != self._seen:
                    yield True, self.load()
                else:
                    yield False, None
            finally:
                os.close(fd)  # releases the flock

    def write(self, data: bytes) -> None:
        """Blocking, inside `writing`: replace the file with `data`, atomically. `StoreFull`
        or `StoreError` (with the reason) when it fails; the old file is then left whole."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise _write_error(self.path, exc) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # the rename itself, made durable
            folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        self._seen, self.size = self._signature(), len(data)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _write_error(path: Path, exc: OSError) -> StoreError:
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_ROOM:
        return StoreFull(f"cannot save {path.name}: {reason} (free some space in {path.parent})")
    return StoreError(f"cannot save {path.name}: {reason}")
