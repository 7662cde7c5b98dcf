"""The store of derived models that Ollama's /api/create and /api/copy produce."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vllama.catalog.files import ModelFormatError
from vllama.catalog.names import normalize_name
from vllama.catalog.store import DocumentFile, StoreError, StoreRefused, encode

# Bounds on the store (docs/API.md): how many derived models, and how large the one file that
# holds them may grow (it is rewritten whole on every change, so its size is every change's
# cost). 8 MiB takes the most models with ordinary system prompts (~1 KiB each: ~1 MB), or ~30
# with the largest system prompt /api/create takes (256 KiB); copies count as creates do.
MAX_DERIVED = 1000
MAX_STORE_BYTES = 8 * 2**20


@dataclass(frozen=True)
class DerivedModel:
    name: str
    base: str
    system: str | None = None
    template: str | None = None
    parameters: dict[str, object] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    adapter: str | None = None  # a local PEFT folder: a LoRA on its base model's worker

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))

    def to_json(self) -> dict[str, Any]:
        # Field by field: `asdict` deep-copies `parameters` recursively (and can overflow).
        return {
            "name": self.name,
            "base": self.base,
            "system": self.system,
            "template": self.template,
            "parameters": self.parameters,
            "created_at": self.created_at.isoformat(),
            "adapter": self.adapter,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DerivedModel:
        created = datetime.fromisoformat(data["created_at"])
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        name, base, parameters = data["name"], data["base"], data.get("parameters", {})
        system, template = data.get("system"), data.get("template")
        adapter = data.get("adapter")
        if not (isinstance(name, str) and isinstance(base, str) and isinstance(parameters, dict)):
            raise TypeError("name and base must be strings, parameters an object")
        if not all(v is None or isinstance(v, str) for v in (system, template, adapter)):
            raise TypeError("system, template and adapter must be strings or null")
        return cls(name, base, system, template, parameters, created, adapter)

    @property
    def lora_name(self) -> str:
        """The name its base model's worker serves the adapter under."""
        return self.name.removesuffix(":latest")


class DerivedStore:
    """Derived models in one JSON file (see `catalog.store` for how a change is made). Memory
    changes only once the file holds the change; a change the store refuses (`StoreRefused`:
    more than `MAX_DERIVED` models, a file over `MAX_STORE_BYTES`, a model that cannot be
    encoded) or cannot save (`StoreError`, `StoreFull`) changes nothing."""

    _VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = DocumentFile(self.path)
        self._models = self._parse(self._file.load())
        self._changing = asyncio.Lock()  # one change in a thread at a time (see `put`)

    def _parse(self, data: dict[str, Any] | None) -> dict[str, DerivedModel]:
        if data is None:
            return {}
        try:
            models = [DerivedModel.from_json(item) for item in data["models"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{self.path}: not a derived-model store ({exc!r})") from exc
        return {model.name: model for model in models}

    def get(self, name: str) -> DerivedModel | None:
        return self._models.get(normalize_name(name))

    def all(self) -> list[DerivedModel]:
        return [self._models[name] for name in sorted(self._models)]

    async def put(self, model: DerivedModel) -> None:
        """Add or replace `model`, in a thread; changes wait their turn here rather than in
        the threads (a thread waiting on a lock is one the event loop's pool cannot use)."""
        async with self._changing:
            await asyncio.to_thread(self.put_blocking, model)

    async def delete(self, name: str) -> bool:
        """Remove the model (False when there is none by that name), in a thread."""
        async with self._changing:
            return await asyncio.to_thread(self.delete_blocking, name)

    def put_blocking(self, model: DerivedModel) -> None:
        with self._file.writing() as (changed, document):
            models = self._fresh(changed, document)
            if model.name not in models and len(models) >= MAX_DERIVED:
                raise StoreRefused(
                    f"there are {MAX_DERIVED} derived models already; delete some first"
                )
            self._save({**models, model.name: model})

    def delete_blocking(self, name: str) -> bool:
        with self._file.writing() as (changed, document):
            models = self._fresh(changed, document)
            name = normalize_name(name)
            if name not in models:
                return False
            self._save({key: value for key, value in models.items() if key != name})
            return True

    def _fresh(self, changed: bool, document: dict[str, Any] | None) -> dict[str, DerivedModel]:
        """The models as the file holds them now: another process sharing the models folder
        may have changed it since this one last read or wrote it."""
        if changed:
            try:
                self._models = self._parse(document)
            except ModelFormatError as exc:
                raise StoreError(str(exc)) from None
        return self._models

    def _save(self, models: dict[str, DerivedModel]) -> None:
        """Write `models`, then hold them; refused (nothing written) when they cannot be
        encoded, or the file would pass `MAX_STORE_BYTES` (a change that does not grow it is
        always taken)."""
        document = {
            "version": self._VERSION,
            "models": [models[n].to_json() for n in sorted(models)],
        }
        data = encode(document)
        if len(data) > MAX_STORE_BYTES and len(data) > self._file.size:
            raise StoreRefused(
                f"the derived-model store would pass {MAX_STORE_BYTES // 2**20} MiB; "
                "delete some derived models first"
            )
        self._file.write(data)
        self._models = models
