"""Which model a client's `model` names, and where its files are.

Resolution order: configured names and aliases, then derived models (`/api/create`, `/api/copy`),
then folders in the models folder, then repos in the Hugging Face cache. Ollama's `name:tag` form
works throughout (`tiny` = `tiny:latest`). A request's model name is only ever a key into these
tables: it never becomes a path itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vllama.api.ollama.translate import ModelTraits
from vllama.catalog.files import (
    DerivedModel,
    DerivedStore,
    ModelFiles,
    ModelFormatError,
    hf_cache_dir,
    normalize_name,
    read_model,
    scan_hf_cache,
    scan_models_dir,
)
from vllama.config import vllm_args
from vllama.config.settings import Config, ModelSpec

Source = Literal["config", "derived", "models_dir", "hf_cache"]


@dataclass(frozen=True)
class Resolved:
    slot: str  # the scheduler's and the worker's name for the model that runs
    spec: ModelSpec
    source: Source
    derived: DerivedModel | None = None


def strip_latest(name: str) -> str:
    return name.removesuffix(":latest")


class Registry:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._names = config.names()
        self.models_dir = config.server.models_dir.expanduser()
        self.derived = DerivedStore(self.models_dir / "derived-models.json")
        self._files: dict[Path, tuple[float, ModelFiles]] = {}

    def reconfigure(self, config: Config) -> None:
        self._config = config
        self._names = config.names()

    # -- resolution --------------------------------------------------------------------------

    def resolve(self, requested: str, _depth: int = 0) -> Resolved | None:
        name = self._names.get(requested) or self._names.get(strip_latest(requested))
        if name is not None:
            return Resolved(name, self._config.models[name], "config")
        derived = self.derived.get(requested)
        if derived is not None and _depth < 4:
            base = self.resolve(derived.base, _depth + 1)
            if base is None:
                return None
            return Resolved(base.slot, base.spec, base.source, derived)
        key = strip_latest(requested)
        folder = scan_models_dir(self.models_dir).get(key)
        if folder is not None:
            return Resolved(key, self._discovered_spec(folder), "models_dir")
        snapshot = scan_hf_cache(hf_cache_dir()).get(key)
        if snapshot is not None:
            return Resolved(key, self._discovered_spec(snapshot), "hf_cache")
        return None

    def _discovered_spec(self, folder: Path) -> ModelSpec:
        settings = self._config.server
        return ModelSpec(
            model=str(folder), args=tuple(settings.default_args), env=dict(settings.default_env)
        )

    def available(self) -> dict[str, Resolved]:
        """Every model a client can name, by Ollama-style name (for `/api/tags`)."""
        found: dict[str, Resolved] = {}
        for key, snapshot in scan_hf_cache(hf_cache_dir()).items():
            found[normalize_name(key)] = Resolved(key, self._discovered_spec(snapshot), "hf_cache")
        for key, folder in scan_models_dir(self.models_dir).items():
            found[normalize_name(key)] = Resolved(key, self._discovered_spec(folder), "models_dir")
        for name, spec in self._config.models.items():
            found[normalize_name(name)] = Resolved(name, spec, "config")
        for derived in self.derived.all():
            resolved = self.resolve(derived.name)
            if resolved is not None:
                found[derived.name] = resolved
        return found

    # -- what the model is -------------------------------------------------------------------

    def files(self, resolved: Resolved) -> ModelFiles | None:
        """The model's files on disk (config.json etc.), or None for a repo not on disk yet."""
        return self._files_of(resolved.spec)

    def _files_of(self, spec: ModelSpec) -> ModelFiles | None:
        """`read_model`, cached until the model's config.json changes."""
        path = self._local_path(spec)
        if path is None:
            return None
        try:
            mtime = (path / "config.json").stat().st_mtime
        except OSError:
            return None
        cached = self._files.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            files = read_model(path)
        except ModelFormatError:
            return None
        self._files[path] = (mtime, files)
        return files

    def _local_path(self, spec: ModelSpec) -> Path | None:
        path = Path(spec.model)
        if path.is_absolute():
            return path if path.is_dir() else None
        with contextlib.suppress(OSError):
            return scan_hf_cache(hf_cache_dir()).get(spec.model)
        return None

    def weight_bytes(self, spec: ModelSpec) -> int:
        """Bytes of the model's files on disk (0 when not downloaded yet), for load estimates."""
        files = self._files_of(spec)
        return files.size if files is not None else 0

    def traits(self, resolved: Resolved, context_length: int | None) -> ModelTraits:
        files = self.files(resolved)
        capabilities = set(files.capabilities) if files is not None else {"completion"}
        if vllm_args.enables_tools(resolved.spec.args):  # the operator turned vLLM's tool parser on
            capabilities.add("tools")
        derived = resolved.derived
        return ModelTraits(
            served_name=resolved.slot,
            context_length=context_length or (files.context_length if files else None),
            capabilities=frozenset(capabilities),
            system=derived.system if derived else None,
            template=derived.template if derived else None,
            parameters=dict(derived.parameters) if derived else {},
        )
