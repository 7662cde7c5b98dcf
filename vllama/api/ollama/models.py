"""Ollama's model-management API: version, tags, show, ps, pull, create, copy, delete, push."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from vllama import __version__
from vllama.api.common import read_json_object, requested_model
from vllama.api.errors import ApiError
from vllama.api.keys import REGISTRY, SCHEDULER
from vllama.api.ollama.inference import NDJSON, ndjson, stream_flag
from vllama.api.ollama.translate import BadRequest, map_options
from vllama.catalog.files import DerivedModel, ModelDetails, ModelFiles, normalize_name
from vllama.catalog.pull import PullError, pull_progress
from vllama.catalog.registry import Registry, Resolved

# The Ollama API level vllama matches (clients gate features on it); see docs/API.md.
OLLAMA_API_VERSION = "0.12.0"
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)  # how Ollama shows "never expires" (~292 years on)
_NO_DETAILS = ModelDetails(
    format="", family="", families=[], parameter_size="", quantization_level=""
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_API_VERSION, "vllama_version": __version__})


def _details(files: ModelFiles | None, derived_from: str = "") -> dict[str, Any]:
    details = (files.details if files is not None else _NO_DETAILS).to_json()
    details["parent_model"] = derived_from
    return details


def _entry(name: str, resolved: Resolved, files: ModelFiles | None) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _iso(files.modified_at if files else datetime.now(UTC)),
        "size": files.size if files else 0,
        "digest": files.digest if files else "",
        "details": _details(files, normalize_name(resolved.slot) if resolved.derived else ""),
    }


async def tags(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    available = await asyncio.to_thread(registry.available)
    models = []
    for name, resolved in sorted(available.items()):
        files = await asyncio.to_thread(registry.files, resolved)
        models.append(_entry(name, resolved, files))
    return web.json_response({"models": models})


def _resolve(registry: Registry, requested: str) -> Resolved:
    resolved = registry.resolve(requested)
    if resolved is None:
        raise ApiError(404, f"model '{requested}' not found")
    return resolved


def _parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


async def show(request: web.Request) -> web.Response:
    _, payload = await read_json_object(request)
    requested = requested_model(payload, "model", "name")
    registry = request.app[REGISTRY]
    resolved = _resolve(registry, requested)
    files = await asyncio.to_thread(registry.files, resolved)
    slot = request.app[SCHEDULER].slot(resolved.slot)
    served_len = slot.worker.max_model_len if slot is not None else None
    traits = registry.traits(resolved, served_len)
    derived = resolved.derived
    template = (derived.template if derived else None) or (files.template if files else "")
    parameters = dict(derived.parameters) if derived else {}
    system = traits.system or ""
    modelfile = [f"FROM {resolved.spec.model}"]
    if template:
        modelfile.append(f'TEMPLATE """{template}"""')
    if system:
        modelfile.append(f'SYSTEM """{system}"""')
    modelfile += [f"PARAMETER {line}" for line in _parameters_text(parameters).splitlines()]
    model_info = dict(files.model_info()) if files else {}
    if traits.context_length is not None:
        family = files.details.family if files else "general"
        model_info[f"{family}.context_length"] = traits.context_length
    body: dict[str, Any] = {
        "license": "",
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": _parameters_text(parameters),
        "template": template,
        "details": _details(files, normalize_name(resolved.slot) if derived else ""),
        "model_info": model_info,
        "capabilities": sorted(traits.capabilities),
        "modified_at": _iso(files.modified_at if files else datetime.now(UTC)),
    }
    if system:
        body["system"] = system
    return web.json_response(body)


async def ps(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    scheduler = request.app[SCHEDULER]
    models = []
    now = datetime.now(UTC)
    for slot in scheduler.slots():
        if not slot.worker.is_ready:
            continue
        resolved = registry.resolve(slot.name)
        files = await asyncio.to_thread(registry.files, resolved) if resolved else None
        if slot.expires_at is not None:
            expires = datetime.fromtimestamp(slot.expires_at, UTC)
        elif math.isinf(slot.keep_alive):
            expires = _FOREVER
        else:  # in use: it expires keep_alive after the last request ends
            expires = now + timedelta(seconds=slot.keep_alive)
        name = normalize_name(slot.name)
        entry: dict[str, Any] = (
            _entry(name, resolved, files) if resolved else {"name": name, "model": name}
        )
        entry.pop("modified_at", None)
        usage = await scheduler.devices.usage_by_pids_async(slot.worker.pids())
        vram = sum(used for device, used in usage.items() if device != "cpu")
        entry |= {
            # Ollama's size is the model's whole footprint and size_vram the part on GPUs;
            # here both are measured: the worker tree's host RSS plus its GPU memory (NVML).
            "size": usage.get("cpu", 0) + vram,
            "size_vram": vram,
            "expires_at": _iso(expires),
            "context_length": slot.worker.max_model_len,
        }
        models.append(entry)
    models.sort(key=lambda m: str(m["expires_at"]), reverse=True)
    return web.json_response({"models": models})


# -- changes ----------------------------------------------------------------------------------


async def _respond_progress(
    request: web.Request, streaming: bool, updates: AsyncIterator[dict[str, Any]]
) -> web.StreamResponse:
    """Ollama's progress protocol: NDJSON updates, or just the last one with `stream: false`."""
    if not streaming:
        last: dict[str, Any] = {}
        try:
            async for update in updates:
                last = update
        except PullError as exc:
            raise ApiError(exc.status, str(exc)) from None
        return web.json_response(last)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    first = True
    try:
        async for update in updates:
            if first:
                await response.prepare(request)
                first = False
            await response.write(ndjson(update))
    except PullError as exc:
        if first:  # nothing sent yet: a proper HTTP error
            raise ApiError(exc.status, str(exc)) from None
        await response.write(ndjson({"error": str(exc)}))
    await response.write_eof()
    return response


async def pull(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    requested = requested_model(payload, "model", "name")
    registry = request.app[REGISTRY]
    return await _respond_progress(
        request, stream_flag(payload), pull_progress(requested, registry.models_dir)
    )


async def create(request: web.Request) -> web.StreamResponse:
    _, payload = await read_json_object(request)
    name = requested_model(payload)
    base = payload.get("from")
    if not isinstance(base, str) or not base:
        raise ApiError(400, "from is required: vllama creates models from an existing model")
    for unsupported in ("files", "adapters", "quantize"):
        if payload.get(unsupported):
            raise ApiError(400, f"{unsupported} is not supported: vLLM loads Hugging Face folders")
    registry = request.app[REGISTRY]
    if registry.resolve(base) is None:
        raise ApiError(404, f"model '{base}' not found")
    system, template = payload.get("system"), payload.get("template")
    if not (system is None or isinstance(system, str)):
        raise ApiError(400, "system must be a string")
    if not (template is None or isinstance(template, str)):
        raise ApiError(400, "template must be a string")
    parameters = payload.get("parameters") or {}
    try:
        map_options(parameters, None)  # the same validation a request's options get
    except BadRequest as exc:
        raise ApiError(400, f"parameters: {exc}") from None
    model = DerivedModel(
        name=name, base=base, system=system, template=template, parameters=parameters
    )

    async def updates() -> AsyncIterator[dict[str, Any]]:
        yield {"status": f"using existing model {normalize_name(base)}"}
        await asyncio.to_thread(registry.derived.put, model)
        yield {"status": "writing manifest"}
        yield {"status": "success"}

    return await _respond_progress(request, stream_flag(payload), updates())


async def copy(request: web.Request) -> web.Response:
    _, payload = await read_json_object(request)
    source, destination = payload.get("source"), payload.get("destination")
    if not isinstance(source, str) or not source:
        raise ApiError(400, "source is required")
    if not isinstance(destination, str) or not destination:
        raise ApiError(400, "destination is required")
    registry = request.app[REGISTRY]
    resolved = registry.resolve(source)
    if resolved is None:
        raise ApiError(404, f'model "{source}" not found')
    derived = resolved.derived
    model = DerivedModel(
        name=destination,
        base=derived.base if derived else source,
        system=derived.system if derived else None,
        template=derived.template if derived else None,
        parameters=dict(derived.parameters) if derived else {},
    )
    await asyncio.to_thread(registry.derived.put, model)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    _, payload = await read_json_object(request)
    requested = requested_model(payload, "model", "name")
    registry = request.app[REGISTRY]
    resolved = registry.resolve(requested)
    if resolved is None:
        raise ApiError(404, f"model '{requested}' not found")
    if resolved.derived is not None:
        await asyncio.to_thread(registry.derived.delete, requested)
        return web.Response(status=200)
    if resolved.source == "config":
        raise ApiError(
            400, f"model '{requested}' is configured in the config file; remove it there"
        )
    if resolved.source == "hf_cache":
        raise ApiError(
            400,
            f"model '{requested}' is in the Hugging Face cache, shared with other tools; "
            "remove it with `hf cache delete`",
        )
    scheduler = request.app[SCHEDULER]
    stopping = (
        scheduler.unload(resolved.slot, "model deleted", "deleted")
        if scheduler.slot(resolved.slot)
        else None
    )
    if stopping is not None:
        await stopping
    await asyncio.to_thread(shutil.rmtree, resolved.spec.model)
    return web.Response(status=200)


async def logs(request: web.Request) -> web.Response:
    """vllama's own: the last output lines of a model's worker (for `vllama logs MODEL`)."""
    requested = request.query.get("model", "")
    if not requested:
        raise ApiError(400, "model is required")
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise ApiError(400, "lines must be an integer") from None
    resolved = _resolve(request.app[REGISTRY], requested)
    slot = request.app[SCHEDULER].slot(resolved.slot)
    tail = slot.worker.tail(max(lines, 0)) if slot is not None else []
    return web.json_response({"model": resolved.slot, "lines": tail})


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
