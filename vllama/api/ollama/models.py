"""Ollama's model-management API: version, tags, show, ps, pull, create, copy, delete, push."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from vllama import __version__
from vllama.api import remote
from vllama.api.common import in_listing_order, read_json_object, requested_model, served_traits
from vllama.api.errors import ApiError, BadRequest
from vllama.api.keys import services
from vllama.api.ollama.options import map_options
from vllama.api.ollama.protocol import MAX_PARAMETERS, CopyRequest, CreateRequest, Streamed
from vllama.api.ollama.response import Details, ModelEntry, Progress, ShowAnswer
from vllama.api.ollama.stream import respond_progress
from vllama.catalog.adapters import adapter_rank
from vllama.catalog.derived import DerivedModel
from vllama.catalog.files import ModelDetails, ModelFiles, ModelFormatError
from vllama.catalog.names import check_name, normalize_name
from vllama.catalog.pull import pull_progress
from vllama.catalog.registry import ModelNotFound, Registry, Resolved
from vllama.config import replicas
from vllama.engine.states import WorkerState
from vllama.scheduling.status import ModelStatus

# The Ollama API level vllama matches (clients gate features on it); see docs/API.md.
OLLAMA_API_VERSION = "0.12.0"
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)
_NO_DETAILS = ModelDetails(
    format="", family="", families=[], parameter_size="", quantization_level=""
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_API_VERSION, "vllama_version": __version__})


def _details(files: ModelFiles | None, derived_from: str = "") -> Details:
    details = files.details if files is not None else _NO_DETAILS
    return {
        "parent_model": derived_from,
        "format": details.format,
        "family": details.family,
        "families": details.families,
        "parameter_size": details.parameter_size,
        "quantization_level": details.quantization_level,
    }


def _entry(name: str, resolved: Resolved, files: ModelFiles | None) -> ModelEntry:
    return {
        "name": name,
        "model": name,
        "modified_at": _iso(files.modified_at if files else datetime.now(UTC)),
        "size": files.size if files else 0,
        "digest": files.digest if files else "",
        "details": _details(files, _parent(resolved)),
    }


def _parent(resolved: Resolved) -> str:
    # The model it was created from, as the client named it (Ollama's parent_model).
    return normalize_name(resolved.derived.base) if resolved.derived else ""


async def tags(request: web.Request) -> web.Response:
    registry = services(request).registry
    models = []
    for name, resolved, files in await in_listing_order(
        request, (await registry.available()).items()
    ):
        models.append(_entry(name, resolved, files))
    models += remote.tag_entries(request, _details(None), _iso(datetime.now(UTC)))
    return web.json_response({"models": models})


def _parameters_text(parameters: Mapping[str, object]) -> str:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


async def show(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = check_name(requested_model(payload, "model", "name"))
    registry = services(request).registry
    try:
        resolved = await registry.lookup(requested)
    except ModelNotFound:
        peer = services(request).peers.find(requested)
        if peer is None:
            raise
        return await remote.show(request, peer, requested, _details(None))
    files = await registry.files(resolved)
    traits = await served_traits(request, resolved)
    derived = resolved.derived
    template = (derived.template if derived else None) or (files.template if files else "")
    # The parameters the model sets (a derived model's, as Ollama shows a Modelfile's); its
    # context is in model_info's context_length.
    parameters = dict(derived.parameters) if derived else {}
    system = traits.system or ""
    modelfile = [f"FROM {resolved.spec.model}"]
    adapter = derived.adapter if derived else resolved.spec.adapters.get(resolved.adapter or "")
    if adapter:
        modelfile.append(f"ADAPTER {adapter}")
    if template:
        modelfile.append(f'TEMPLATE """{template}"""')
    if system:
        modelfile.append(f'SYSTEM """{system}"""')
    modelfile += [f"PARAMETER {line}" for line in _parameters_text(parameters).splitlines()]
    model_info = dict(files.model_info()) if files else {}
    if traits.context_length is not None:
        family = files.details.family if files else "general"
        model_info[f"{family}.context_length"] = traits.context_length
    body: ShowAnswer = {
        "license": "",
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": _parameters_text(parameters),
        "template": template,
        "details": _details(files, _parent(resolved)),
        "model_info": model_info,
        "capabilities": sorted(traits.capabilities),
        "modified_at": _iso(files.modified_at if files else datetime.now(UTC)),
    }
    if system:
        body["system"] = system
    return web.json_response(body)


def _expires(model: ModelStatus, now: datetime) -> datetime:
    """When an idle model unloads; one in use, keep_alive after its last request ends. Ollama
    shows "never" as a date ~292 years on, and so does any keep_alive past it."""
    if model.expires_at is not None:
        seconds = model.expires_at - now.timestamp()
    else:
        seconds = model.keep_alive
    if math.isinf(seconds) or seconds >= (_FOREVER - now).total_seconds():
        return _FOREVER
    return now + timedelta(seconds=seconds)


async def ps(request: web.Request) -> web.Response:
    registry = services(request).registry
    devices = services(request).devices
    models = []
    now = datetime.now(UTC)
    ready = [m for m in services(request).scheduler.status().models if m.state is WorkerState.READY]
    copies = Counter(replicas.model_of(m.name) for m in ready)
    for model in ready:
        served = replicas.model_of(model.name)  # a replica (`name#2`) is listed as its model
        # A pulled model is shown by the name it was pulled as (`qwen3:8b`), as in /api/tags.
        name = next(iter(registry.pulled.names_of(served)), normalize_name(served))
        try:
            resolved = registry.resolve(served)
        except ModelNotFound:  # served from a folder that has gone since
            entry: ModelEntry = {"name": name, "model": name}
        else:
            entry = _entry(name, resolved, await registry.files(resolved))
        entry.pop("modified_at", None)
        # Measured per device; a GPU where NVML sees none of its pids (a container) counts what
        # the load took, as the metrics and the status page count it.
        usage = await devices.worker_usage(model.pid, model.devices, model.footprint)
        vram = sum(used for device, used in usage.items() if device != "cpu")
        # Ollama's size is the model's whole footprint and size_vram the part on GPUs; here
        # both are measured: the worker tree's host RSS plus its GPU memory (NVML).
        entry["size"] = usage.get("cpu", 0) + vram
        entry["size_vram"] = vram
        entry["expires_at"] = _iso(_expires(model, now))
        entry["context_length"] = model.context_length
        if copies[served] > 1:  # one entry per running replica, told apart by this
            entry["replica"] = replicas.index_of(model.name)
        if model.ray_nodes:  # a multi-node model: where Ray runs it (its size is this host's)
            entry["ray_nodes"] = list(model.ray_nodes)
        models.append(entry)
    models += remote.ps_entries(request, _iso(_FOREVER))
    models.sort(key=lambda m: m.get("expires_at", ""), reverse=True)
    return web.json_response({"models": models})


# -- changes ----------------------------------------------------------------------------------


async def pull(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload, "model", "name")
    registry = services(request).registry
    return await respond_progress(
        request,
        Streamed.parse(payload).streaming,
        _then_rescan(
            registry,
            pull_progress(requested, registry.models_dir, registry.library, registry.pulled),
        ),
    )


async def _then_rescan(
    registry: Registry, updates: AsyncIterator[Mapping[str, object]]
) -> AsyncIterator[Mapping[str, object]]:
    """A pull's updates; the models folder is rescanned before the last, so the new model
    resolves by name as soon as the client sees `success`."""
    async for update in updates:
        if update.get("status") == "success":
            await registry.discovery.refresh(force=True)
        yield update


async def create(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    name = check_name(requested_model(payload))
    parsed = CreateRequest.parse(payload)
    base, system = parsed.base, parsed.system
    check_name(base)
    registry = services(request).registry
    resolved = await registry.lookup(base)
    adapter = await _adapter_folder(parsed.adapters)
    parameters = parsed.parameters or {}
    if len(json.dumps(parameters)) > MAX_PARAMETERS:
        raise BadRequest(f"parameters must be an object of at most {MAX_PARAMETERS} bytes")
    try:
        map_options(parameters)  # the same validation a request's options get
    except BadRequest as exc:
        raise BadRequest(f"parameters: {exc.message}") from None
    model = DerivedModel(
        name=name, base=base, system=system, parameters=parameters, adapter=adapter
    )
    # Saved before the first update, so that a refusal or a full disk is a plain HTTP error.
    await registry.derived.put(model)

    async def updates() -> AsyncIterator[Progress]:
        yield {"status": f"using existing model {normalize_name(base)}"}
        if adapter is not None:
            # The base model's worker serves its adapters from its start: a running one
            # restarts with the new adapter once its requests are done.
            services(request).scheduler.expire(resolved.served_name)
            yield {"status": "using adapter"}
        yield {"status": "writing manifest"}
        yield {"status": "success"}

    return await respond_progress(request, parsed.streaming, updates())


async def _adapter_folder(adapters: Mapping[str, object] | None) -> str | None:
    """`adapters`, as vllama takes it: one entry (`CreateRequest`) whose value is a local PEFT
    LoRA folder (Ollama's blob digests have no vLLM counterpart)."""
    if adapters is None:
        return None
    (folder,) = adapters.values()
    if not isinstance(folder, str) or not Path(folder).is_absolute():
        raise BadRequest("adapters: the value must be an absolute path to a PEFT LoRA folder")
    try:
        await asyncio.to_thread(adapter_rank, Path(folder))
    except ModelFormatError as exc:
        raise BadRequest(f"adapters: {exc}") from None
    return folder


async def copy(request: web.Request) -> web.Response:
    _, payload = await read_json_object(request)
    parsed = CopyRequest.parse(payload)
    source, destination = parsed.source, parsed.destination
    check_name(source)
    check_name(destination)
    registry = services(request).registry
    resolved = await registry.lookup(source)
    derived = resolved.derived
    model = DerivedModel(
        name=destination,
        base=derived.base if derived else source,
        system=derived.system if derived else None,
        template=derived.template if derived else None,
        parameters=dict(derived.parameters) if derived else {},
        adapter=derived.adapter if derived else None,
    )
    await registry.derived.put(model)  # bounded as a create is (`catalog.derived`)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    _, payload = await read_json_object(request)
    requested = check_name(requested_model(payload, "model", "name"))
    registry = services(request).registry
    resolved = await registry.lookup(requested)
    if resolved.derived is not None:
        await registry.derived.delete(requested)
        return web.Response(status=200)
    if resolved.source == "config":
        raise BadRequest(f"model '{requested}' is configured in the config file; remove it there")
    if resolved.source == "hf_cache":
        raise BadRequest(
            f"model '{requested}' is in the Hugging Face cache, shared with other tools; "
            "remove it with `hf cache delete`"
        )
    entry = await asyncio.to_thread(_entry_to_remove, registry.models_dir, resolved, requested)
    folder = Path(resolved.spec.model)
    users = [] if entry.is_symlink() else registry.configured_users(folder)
    if users:
        raise BadRequest(
            f"model '{requested}' is the folder of configured model(s) {', '.join(users)}; "
            "remove them from the config file first"
        )
    pulled_as = registry.pulled.names_of(resolved.served_name)
    if normalize_name(requested) in pulled_as and len(pulled_as) > 1:
        # Pulled under other names too (`qwen3` and `qwen3:8b`): only this name goes.
        await asyncio.to_thread(registry.pulled.delete, requested)
        return web.Response(status=200)
    stopping = services(request).scheduler.unload(resolved.served_name, "model deleted", "deleted")
    if stopping is not None:
        await stopping
    await asyncio.to_thread(_remove_entry, entry)
    for name in pulled_as:
        await asyncio.to_thread(registry.pulled.delete, name)
    await registry.discovery.refresh(force=True)
    return web.Response(status=200)


def _entry_to_remove(root: Path, resolved: Resolved, requested: str) -> Path:
    """Blocking: what deleting a models-folder model removes: its entry in the folder (`name`
    or `org/name`, links not followed). A symlink there is the model's entry: the link goes,
    never its target (docs/API.md). A model reached through a linked folder (`org` -> a
    folder elsewhere) is refused: the link is shared with the other models under it, and what
    it points at is not vllama's."""
    base = root.resolve()
    entry = base / resolved.served_name
    for parent in reversed(entry.relative_to(base).parents[:-1]):  # `org`, for `org/name`
        if (base / parent).is_symlink():
            raise BadRequest(
                f"model '{requested}' is reached through the symlink {base / parent}; "
                "not deleting it (remove the link yourself)"
            )
    if entry.is_symlink():
        return entry
    try:
        inside = entry.resolve(strict=True).is_relative_to(base) and entry != base
    except OSError:
        inside = False
    if not inside or not entry.is_dir():
        raise BadRequest(f"model '{requested}' is not a folder in the models folder")
    return entry


def _remove_entry(entry: Path) -> None:
    """Blocking: a symlink is unlinked; a folder is removed with what it holds (`rmtree`
    unlinks the links in it, never follows them, and refuses a folder that became a link)."""
    if entry.is_symlink():
        entry.unlink()
    else:
        shutil.rmtree(entry)


async def logs(request: web.Request) -> web.Response:
    """vllama's own: the last output lines of a model's worker (for `vllama logs MODEL`)."""
    requested = request.query.get("model", "")
    if not requested:
        raise BadRequest("model is required")
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise BadRequest("lines must be an integer") from None
    resolved = await services(request).registry.lookup(requested)
    tail = services(request).scheduler.log_tail(resolved.served_name, max(lines, 0))
    return web.json_response({"model": resolved.served_name, "lines": tail})


async def push(request: web.Request) -> web.Response:
    raise ApiError(
        501,
        "push is not supported: vllama serves Hugging Face models; publish with `hf upload`",
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/create", create)
    app.router.add_post("/api/copy", copy)
    app.router.add_delete("/api/delete", delete)
    app.router.add_post("/api/push", push)
    app.router.add_get("/api/vllama/logs", logs)
