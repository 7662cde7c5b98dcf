"""Which model a client's `model` names, where its files are, and what it can do.

Resolution order: configured names and aliases, then derived models (`/api/create`, `/api/copy`),
then folders in the models folder, then repos in the Hugging Face cache. Ollama's `name:tag` form
works throughout (`tiny` = `tiny:latest`). A request's model name is only ever a key into these
tables: it never becomes a path itself.

Nothing here touches the disk on the event loop: folders are scanned in a thread (`Discovery`),
a name that is not found triggers at most one rescan per `RESCAN_INTERVAL`, and model files are
read in a thread and cached until their config.json changes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from vllama.catalog import library
from vllama.catalog.adapters import adapter_rank
from vllama.catalog.derived import DerivedModel, DerivedStore
from vllama.catalog.discover import hf_cache_dir, scan_hf_cache, scan_models_dir
from vllama.catalog.facts import ModelFacts, kv_bytes_per_token, profile_shapes
from vllama.catalog.families import UNKNOWN, Parsers, ThinkingSwitch, choose, detect
from vllama.catalog.files import ModelFiles, ModelFormatError, read_model
from vllama.catalog.names import normalize_name, strip_latest
from vllama.catalog.pull import remote_weight_bytes
from vllama.catalog.pulled import PulledNames
from vllama.config import vllm_args
from vllama.config.settings import Config, ConfigError, ModelSpec

log = structlog.get_logger("vllama.registry")

Source = Literal["config", "derived", "models_dir", "hf_cache"]
RESCAN_INTERVAL = 1.0  # seconds: unknown names cannot make vllama scan folders more often
FILES_FRESH = 2.0  # seconds a model's description is used before its config.json is checked again


class ModelNotFound(LookupError):
    """No configured, derived or on-disk model has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class Resolved:
    served_name: str  # the name the model's worker serves it under (the scheduler's key)
    spec: ModelSpec
    source: Source
    derived: DerivedModel | None = None
    adapter: str | None = None  # a LoRA adapter's name on that worker, for an adapter model

    @property
    def upstream_model(self) -> str:
        """The `model` a request to the worker names: the adapter, else the base model."""
        return self.adapter or self.served_name


@dataclass(frozen=True)
class ModelTraits:
    """What request translation needs to know about a model (from its files and its worker)."""

    served_name: str
    context_length: int | None = None
    capabilities: frozenset[str] = frozenset({"completion"})
    described: bool = True  # False for a model whose files are not on disk (nothing to check)
    # How a request turns thinking on and off: a chat_template_kwargs key, or the top-level
    # `reasoning_effort` (gpt-oss); `always_thinks` when it cannot be turned off.
    thinking_switch: ThinkingSwitch | None = "enable_thinking"
    always_thinks: bool = False
    system: str | None = None  # a derived model's default system prompt
    parameters: dict[str, Any] = field(default_factory=dict)  # a derived model's options
    # Output tokens for a request that sets no budget (`max_output_tokens`, model or server).
    max_output_tokens: int | None = None


class Discovery:
    """The models folder and the Hugging Face cache, as of the last scan (run in a thread)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.models_dir_entries: dict[str, Path] = {}
        self.hf_cache_entries: dict[str, Path] = {}
        self._scanned_at = -RESCAN_INTERVAL
        self._scan: asyncio.Task[None] | None = None

    def scan(self) -> None:
        """Blocking: call at start-up or from a thread."""
        # Resolved here (in the thread) so they compare with configured folders, which are.
        found = scan_models_dir(self.models_dir)
        self.models_dir_entries = {key: path.resolve() for key, path in found.items()}
        self.hf_cache_entries = scan_hf_cache(hf_cache_dir())
        self._scanned_at = time.monotonic()

    async def refresh(self, force: bool = False) -> None:
        """Rescan in a thread, unless one ran within RESCAN_INTERVAL; callers share one scan."""
        if self._scan is None:
            if not force and time.monotonic() - self._scanned_at < RESCAN_INTERVAL:
                return
            self._scan = asyncio.create_task(asyncio.to_thread(self.scan))
        scan = self._scan
        try:
            await asyncio.shield(scan)
        finally:
            if self._scan is scan and scan.done():
                self._scan = None


class Registry:
    def __init__(self, config: Config) -> None:
        self.models_dir = config.server.models_dir.expanduser()
        self.derived = DerivedStore(self.models_dir / "derived-models.json")
        self.pulled = PulledNames(self.models_dir / "pulled-names.json")
        self.discovery = Discovery(self.models_dir)
        self.discovery.scan()
        # path -> (when checked, config.json's mtime, what was read)
        self._files: dict[Path, tuple[float, float, ModelFiles]] = {}
        self.config = self.reconfigure(config)

    def reconfigure(self, config: Config) -> Config:
        """Blocking (the models folder's library.toml is read again). The config as served:
        models named by an Ollama library name (`model = "qwen3:8b"`) given as their folder or
        repo; `ConfigError` for one whose tag no repo serves."""
        names = _load_library(self.models_dir)
        config = with_library_models(config, names, self._on_disk)  # may refuse: nothing set yet
        self._set_library(names)
        self.config = self._config = config
        self._names = config.names()
        self._adapters = config.adapters()
        return config

    def _on_disk(self, name: str, repo: str) -> Path | None:
        for key in (self.pulled.get(name), repo):
            found = self._found(key) if key is not None else None
            if found is not None:
                return found[0]
        return None

    def _found(self, key: str) -> tuple[Path, Source] | None:
        """Where a folder key or repo id (`org/name`) is on disk: the models folder first."""
        folder = self.discovery.models_dir_entries.get(key)
        if folder is not None:
            return folder, "models_dir"
        snapshot = self.discovery.hf_cache_entries.get(key)
        if snapshot is not None:
            return snapshot, "hf_cache"
        return None

    def _set_library(self, names: library.Library) -> None:
        self.library = names
        self._library_args = library.args_by_repo(names)

    def is_configured(self, requested: str) -> bool:
        """Whether a configured model, alias or adapter has this name (a peer's may not)."""
        names = (requested, strip_latest(requested))
        return any(n in self._names or n in self._adapters for n in names)

    # -- resolution --------------------------------------------------------------------------

    def resolve(self, requested: str, _depth: int = 0) -> Resolved:
        """From what is known now (no disk access); `ModelNotFound` otherwise."""
        name = self._names.get(requested) or self._names.get(strip_latest(requested))
        if name is not None:
            return Resolved(name, self._config.models[name], "config")
        for adapter in (requested, strip_latest(requested)):
            if adapter in self._adapters:
                base_name = self._adapters[adapter][0]
                spec = self._config.models[base_name]
                return Resolved(base_name, spec, "config", adapter=adapter)
        derived = self.derived.get(requested)
        if derived is not None and _depth < 4:
            base = self.resolve(derived.base, _depth + 1)
            on = derived.lora_name if derived.adapter else base.adapter
            return Resolved(base.served_name, base.spec, base.source, derived, on)
        for key in self._disk_keys(requested):
            found = self._found(key)
            if found is not None:
                path, source = found
                return Resolved(key, self._discovered_spec(key, path), source)
        raise ModelNotFound(requested)

    def _disk_keys(self, requested: str) -> list[str]:
        """Where on disk `requested` may be: the folder it was pulled into, a folder or cached
        repo of that name, the repo its Ollama library name means (`qwen3:8b`)."""
        keys = [self.pulled.get(requested), strip_latest(requested)]
        try:
            match = library.lookup(requested, self.library)
        except library.LibraryError:  # a tag with no vLLM-ready repo: nothing on disk has it
            match = None
        keys.append(match.repo if match else None)
        return [key for key in keys if key]

    async def lookup(self, requested: str) -> Resolved:
        """`resolve`, looking on disk again (rate-limited) for a name not known yet."""
        try:
            return self.resolve(requested)
        except ModelNotFound:
            await self.discovery.refresh()
            return self.resolve(requested)

    def _discovered_spec(self, key: str, folder: Path) -> ModelSpec:
        """A found model's spec: the server's defaults, and what its library entry says the
        repo needs (`key` is its repo id, `org/name`)."""
        settings = self._config.server
        args = (*settings.default_args, *self._library_args.get(key, ()))
        return ModelSpec(model=str(folder), args=args, env=dict(settings.default_env))

    async def available(self) -> dict[str, Resolved]:
        """Every model a client can name, by Ollama-style name (for `/api/tags`)."""
        await self.discovery.refresh(force=True)
        # A folder or repo that a configured model serves is listed once, by the configured name.
        served = {spec.model for spec in self._config.models.values()}
        found: dict[str, Resolved] = {}
        for key, snapshot in self.discovery.hf_cache_entries.items():
            if key not in served and str(snapshot) not in served:
                spec = self._discovered_spec(key, snapshot)
                found[normalize_name(key)] = Resolved(key, spec, "hf_cache")
        for key, folder in self.discovery.models_dir_entries.items():
            if str(folder) not in served:
                spec = self._discovered_spec(key, folder)
                # A pulled folder is listed by the names it was pulled as.
                names = self.pulled.names_of(key) or [normalize_name(key)]
                found |= {name: Resolved(key, spec, "models_dir") for name in names}
        for name, spec in self._config.models.items():
            found[normalize_name(name)] = Resolved(name, spec, "config")
            for adapter in spec.adapters:
                found[normalize_name(adapter)] = Resolved(name, spec, "config", adapter=adapter)
        for derived in self.derived.all():
            try:
                found[derived.name] = self.resolve(derived.name)
            except ModelNotFound:
                continue  # its base is gone: not servable, so not listed
        return found

    def configured_users(self, folder: Path) -> list[str]:
        """Configured models whose model or adapter folder is `folder`."""
        path = str(folder)
        return sorted(
            name
            for name, spec in self._config.models.items()
            if spec.model == path or path in spec.adapters.values()
        )

    # -- what the model is -------------------------------------------------------------------

    async def files(self, resolved: Resolved) -> ModelFiles | None:
        """The model's files on disk (config.json etc.), or None for a repo not on disk yet.
        Recently checked descriptions come from memory: this is on every request's path."""
        model = resolved.spec.model
        # A folder's fresh description is used without a `stat` of the folder (`files_of` looks
        # again, folder and config.json, once FILES_FRESH has passed).
        path = Path(model) if os.path.isabs(model) else self.discovery.hf_cache_entries.get(model)
        cached = self._files.get(path) if path is not None else None
        if cached is not None and time.monotonic() - cached[0] < FILES_FRESH:
            return cached[2]
        if self._local_path(resolved.spec) is None:  # not on disk (yet): no trip to a thread
            return None
        return await asyncio.to_thread(self.files_of, resolved.spec)

    def files_of(self, spec: ModelSpec) -> ModelFiles | None:
        """Blocking: `read_model`, cached until the model's config.json changes."""
        path = self._local_path(spec)
        if path is None:
            return None
        try:
            mtime = (path / "config.json").stat().st_mtime
        except OSError:
            return None
        cached = self._files.get(path)
        if cached is not None and cached[1] == mtime:
            files = cached[2]
        else:
            try:
                files = read_model(path)
            except ModelFormatError:
                return None
        self._files[path] = (time.monotonic(), mtime, files)
        return files

    def _local_path(self, spec: ModelSpec) -> Path | None:
        if not os.path.isabs(spec.model):  # a string test, not a Path built per request
            return self.discovery.hf_cache_entries.get(spec.model)
        path = Path(spec.model)
        return path if path.is_dir() else None

    async def facts(self, spec: ModelSpec) -> ModelFacts:
        """What starting the model's worker needs from its files: their size, and the vLLM
        arguments for its parsers (read in a thread)."""
        files = await asyncio.to_thread(self.files_of, spec)
        lora = await asyncio.to_thread(self._lora_args, spec)
        args = (*parsers_for(spec, files).engine_args(), *lora)
        if files is None:  # not on disk yet: vLLM downloads it; the Hub says how big it is
            weights = await remote_weight_bytes(spec.model) if "/" in spec.model else None
            if not weights:
                log.warning("model size unknown; its share is a guess", model=spec.model)
            return ModelFacts(weights or 0, args)
        return ModelFacts(
            weight_bytes=files.weight_bytes,
            weight_files=tuple(str(file) for file in files.weight_files),
            engine_args=args,
            kv_bytes_per_token=kv_bytes_per_token(files.config),
            **profile_shapes(files.config),
            context_length=files.context_length,
            warm_up=_warm_up(files.capabilities),
        )

    def _lora_args(self, spec: ModelSpec) -> tuple[str, ...]:
        """Blocking: vLLM's LoRA arguments for the adapters this model serves, configured and
        derived (`/api/create` with `adapters`). An unreadable adapter is left out, loudly."""
        adapters = dict(spec.adapters)
        for derived in self.derived.all():
            if derived.adapter is None:
                continue
            try:
                base = self.resolve(derived.base)
            except ModelNotFound:
                continue
            if base.spec == spec:
                adapters[derived.lora_name] = derived.adapter
        ranks = {}
        for name, folder in adapters.items():
            try:
                ranks[name] = adapter_rank(Path(folder))
            except ModelFormatError as exc:
                log.warning("adapter left out", adapter=name, error=str(exc))
        served = {name: adapters[name] for name in ranks}
        return vllm_args.lora_args(served, max(ranks.values(), default=1))

    async def traits(self, resolved: Resolved, served_context: int | None) -> ModelTraits:
        """`served_context`: the length its worker served when it last ran, if it has run."""
        files = await self.files(resolved)
        context_length = _context_length(resolved, served_context, files)
        # Not on disk yet (vLLM downloads it): nothing to check against but the overrides.
        capabilities = set(files.capabilities) if files is not None else {"completion"}
        parsers = parsers_for(resolved.spec, files)
        if parsers.tool_parser:
            capabilities.add("tools")
        if parsers.reasoning_parser:
            capabilities.add("thinking")
        return ModelTraits(
            served_name=resolved.upstream_model,
            context_length=context_length,
            capabilities=frozenset(capabilities),
            described=files is not None,
            thinking_switch=parsers.thinking_switch,
            always_thinks=parsers.always_thinks,
            max_output_tokens=self.output_default(resolved),
            **self._derived(resolved),
        )

    async def context_length(self, resolved: Resolved, served_context: int | None) -> int | None:
        """The context its worker serves (`served_context`, when it has run), else the one it
        will: its `--max-model-len`, else its config.json's."""
        files = None if served_context else await self.files(resolved)
        return _context_length(resolved, served_context, files)

    def output_default(self, resolved: Resolved) -> int | None:
        """The output budget of a request that sets none: the model's, else the server's."""
        own = resolved.spec.max_output_tokens
        return own if own is not None else self._config.server.max_output_tokens

    @staticmethod
    def _derived(resolved: Resolved) -> dict[str, Any]:
        derived = resolved.derived
        return {
            "system": derived.system if derived else None,
            "parameters": dict(derived.parameters) if derived else {},
        }


def _load_library(models_dir: Path) -> library.Library:
    """Blocking: the library of Ollama names; a broken library.toml in the models folder is
    logged and left out, not fatal (the built-in table still serves)."""
    try:
        return library.load(models_dir)
    except (OSError, ValueError) as exc:
        log.error("library.toml left out", error=str(exc))
        return library.builtin()


def with_library_models(
    config: Config, names: library.Library, on_disk: Callable[[str, str], Path | None]
) -> Config:
    """`config` with its models named by an Ollama library name (`[models.chat] model =
    "qwen3:8b"`) given to vLLM as what serves that name: its folder when it is on disk (pulled,
    or in the Hugging Face cache), else its repo id (vLLM downloads it on the first start).
    `on_disk(name, repo)` is where a pulled name or a repo is on disk, if it is. A tag with no
    vLLM-ready repo is a `ConfigError` naming the model, as any other bad value is."""
    models: dict[str, ModelSpec] = {}
    for name, spec in config.models.items():
        try:
            match = (
                library.lookup(spec.model, names) if not Path(spec.model).is_absolute() else None
            )
        except library.LibraryError as exc:
            raise ConfigError(f"models.{name}.model: {exc}") from None
        if match is None:
            models[name] = spec
            continue
        where = on_disk(spec.model, match.repo)
        extra = tuple(a for a in match.args if a not in spec.args)
        models[name] = spec.model_copy(
            update={"model": str(where) if where else match.repo, "args": (*spec.args, *extra)}
        )
    return config.model_copy(update={"models": models})


def parsers_for(spec: ModelSpec, files: ModelFiles | None) -> Parsers:
    """The parsers a model gets: detected from its files, then the config's overrides, then
    its explicit args (docs/MODELS.md). Pure over what was read."""
    detected = UNKNOWN
    if files is not None:
        detected = detect(
            files.config,
            files.template,
            files.special_tokens,
            files.file_names,
            files.tokenizer_config,
        )
    return choose(detected, spec.tool_parser, spec.reasoning_parser, spec.args)


def _warm_up(capabilities: list[str]) -> tuple[str, tuple[tuple[str, object], ...]] | None:
    """One small request the model serves (after a wake from sleep mode): a 1-token completion,
    or an embedding; rerankers and classifiers need none."""
    if "completion" in capabilities:
        return "/v1/completions", (("prompt", "hi"), ("max_tokens", 1))
    if "embedding" in capabilities:
        return "/v1/embeddings", (("input", "hi"),)
    return None


def _context_length(
    resolved: Resolved, served_context: int | None, files: ModelFiles | None
) -> int | None:
    return (
        served_context
        or vllm_args.max_model_len(resolved.spec.args)
        or (files.context_length if files else None)
    )
