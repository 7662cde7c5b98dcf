"""The names models were pulled by (`qwen3:8b` -> the folder `Qwen/Qwen3-8B` in the models folder),
so `/api/tags` lists a pulled model as it was pulled and requests find it by that name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vllama.catalog.files import ModelFormatError
from vllama.catalog.names import normalize_name
from vllama.catalog.store import DocumentFile, StoreError, encode


class PulledNames:
    """Pulled name (`name:tag`) -> folder key (`org/name`, relative to the models folder)."""

    _VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = DocumentFile(self.path)
        self._names = self._parse(self._file.load())

    def _parse(self, data: dict[str, Any] | None) -> dict[str, str]:
        names = (data or {"names": {}}).get("names")
        if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items()
        ):
            raise ModelFormatError(f"{self.path}: not a pulled-names store")
        return names

    def get(self, name: str) -> str | None:
        return self._names.get(normalize_name(name))

    def all(self) -> dict[str, str]:
        return dict(sorted(self._names.items()))

    def names_of(self, key: str) -> list[str]:
        return sorted(name for name, folder in self._names.items() if folder == key)

    def put(self, name: str, key: str) -> None:
        """Blocking; memory changes once the file holds the change (`catalog.store`)."""
        with self._file.writing() as (changed, document):
            self._save({**self._fresh(changed, document), normalize_name(name): key})

    def delete(self, name: str) -> bool:
        """Blocking, as `put`."""
        with self._file.writing() as (changed, document):
            names = self._fresh(changed, document)
            name = normalize_name(name)
            if name not in names:
                return False
            self._save({key: value for key, value in names.items() if key != name})
            return True

    def _fresh(self, changed: bool, document: dict[str, Any] | None) -> dict[str, str]:
        if changed:  # another process sharing the models folder changed it
            try:
                self._names = self._parse(document)
            except ModelFormatError as exc:
                raise StoreError(str(exc)) from None
        return self._names

    def _save(self, names: dict[str, str]) -> None:
        self._file.write(encode({"version": self._VERSION, "names": dict(sorted(names.items()))}))
        self._names = names
