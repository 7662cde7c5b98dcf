"""The store of derived models that Ollama's /api/create and /api/copy produce."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vllama.catalog.files import ModelFormatError
from vllama.catalog.names import normalize_name
from vllama.catalog.store import load_document, save_document


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
        return {**asdict(self), "created_at": self.created_at.isoformat()}

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
    """Derived models in one JSON file, rewritten atomically on every change."""

    _VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._models: dict[str, DerivedModel] = {}
        data = load_document(self.path)
        if data is None:
            return
        try:
            models = [DerivedModel.from_json(item) for item in data["models"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{self.path}: not a derived-model store ({exc!r})") from exc
        self._models = {model.name: model for model in models}

    def get(self, name: str) -> DerivedModel | None:
        return self._models.get(normalize_name(name))

    def all(self) -> list[DerivedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def put(self, model: DerivedModel) -> None:
        self._models[model.name] = model
        self._save()

    def delete(self, name: str) -> bool:
        if self._models.pop(normalize_name(name), None) is None:
            return False
        self._save()
        return True

    def _save(self) -> None:
        document = {"version": self._VERSION, "models": [m.to_json() for m in self.all()]}
        save_document(self.path, document)
