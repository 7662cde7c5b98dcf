"""Configured models named by an Ollama library name (`[models.chat] model = "qwen3:8b"`): given
to vLLM as what serves that name, its folder when it is on disk (pulled, or in the Hugging Face
cache), else its repo id (vLLM downloads it on the first start)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vllama.catalog import library
from vllama.config.settings import Config, ConfigError, ModelSpec


def with_library_models(
    config: Config, names: library.Library, on_disk: Callable[[str, str], Path | None]
) -> Config:
    """`config` with its library-named models' `model` replaced; `on_disk(name, repo)` is where
    a pulled name or a repo is on disk, if it is. A tag with no vLLM-ready repo is a
    `ConfigError` naming the model, as any other bad value is."""
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
