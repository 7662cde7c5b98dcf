"""The names models were pulled by (`qwen3:8b` -> the folder `Qwen/Qwen3-8B` in the models folder),
so `/api/tags` lists a pulled model as it was pulled and requests find it by that name."""

from __future__ import annotations

from pathlib import Path

from vllama.catalog.files import ModelFormatError
from vllama.catalog.names import normalize_name
from vllama.catalog.store import load_document, save_document


class PulledNames:
    """Pulled name (`name:tag`) -> folder key (`org/name`, relative to the models folder)."""

    _VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        data = load_document(self.path) or {"names": {}}
        names = data.get("names")
        if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items()
        ):
            raise ModelFormatError(f"{self.path}: not a pulled-names store")
        self._names: dict[str, str] = names

    def get(self, name: str) -> str | None:
        return self._names.get(normalize_name(name))

    def all(self) -> dict[str, str]:
        return dict(sorted(self._names.items()))

    def names_of(self, key: str) -> list[str]:
        return sorted(name for name, folder in self._names.items() if folder == key)

    def put(self, name: str, key: str) -> None:
        """Blocking."""
        self._names[normalize_name(name)] = key
        self._save()

    def delete(self, name: str) -> bool:
        """Blocking."""
        if self._names.pop(normalize_name(name), None) is None:
            return False
        self._save()
        return True

    def _save(self) -> None:
        save_document(self.path, {"version": self._VERSION, "names": self._names})
