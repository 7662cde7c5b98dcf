"""vllama's small JSON stores in the models folder (derived models, pulled names): read whole,
rewritten atomically on every change."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vllama.catalog.files import ModelFormatError, json_object


def load_document(path: Path) -> dict[str, Any] | None:
    """Blocking: the store's JSON object; None when there is no store yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelFormatError(f"{path}: unreadable ({exc})") from exc
    return json_object(raw, path)


def save_document(path: Path, document: dict[str, Any]) -> None:
    """Blocking: replace the store with `document`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A crash mid-write leaves the old file whole: the new one appears only by rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
