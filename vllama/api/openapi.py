"""The OpenAPI document of vllama's own API, served at `/openapi.json`.

Bodies that vLLM answers (the OpenAI, Anthropic and vLLM routes vllama relays) are described as
objects whose details are vLLM's; what vllama itself answers (Ollama's API, model listings,
errors) is described field by field. `docs/openapi.yaml` is this document, written out by
`python -m vllama.api.openapi > docs/openapi.yaml` (a test keeps the two the same).
"""

from __future__ import annotations

import sys
from typing import TypedDict

from aiohttp import web

from vllama import __version__
from vllama.api.openai import ROUTES
from vllama.api.protocol import Json, JsonObject

# A JSON Schema, or any other part of the document: a JSON object.
Schema = JsonObject
# The operations on each path, by path.
Paths = dict[str, JsonObject]


class Document(TypedDict):
    openapi: str
    info: JsonObject
    components: JsonObject
    security: list[Json]
    paths: Paths


OBJECT: Schema = {"type": "object"}
OLLAMA_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
OPENAI_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
ANTHROPIC_ERROR: Schema = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
# Every field that names a model refuses "" (400, "model is required"), as the schema says.
MODEL: Schema = {
    "type": "string",
    "minLength": 1,
    "description": "a model name (`name`, `name:tag`, `org/name`)",
}
DURATION: Schema = {
    "type": ["string", "number"],
    "description": 'seconds, or "5m"; negative: forever',
}
OLLAMA_MODEL_ENTRY: Schema = {
    "type": "object",
    "required": ["name", "model"],
    "properties": {
        "name": {"type": "string"},
        "model": {"type": "string"},
        "modified_at": {"type": "string"},
        "size": {"type": "integer"},
        "digest": {"type": "string"},
        "details": OBJECT,
        "expires_at": {"type": "string"},
        "size_vram": {"type": "integer"},
        "context_length": {"type": ["integer", "null"]},
    },
}
NDJSON_OR_JSON: JsonObject = {
    "application/json": {"schema": OBJECT},
    "application/x-ndjson": {"schema": {"type": "string"}},
}


def _json(schema: Schema) -> JsonObject:
    return {"application/json": {"schema": schema}}


ERRORS: dict[str, Schema] = {
    "Ollama": OLLAMA_ERROR,
    "OpenAI": OPENAI_ERROR,
    "Anthropic": ANTHROPIC_ERROR,
}
STATUS_TEXT = {
    400: "bad input, or a model that cannot do this (nothing is loaded)",
    401: "an API key is required, or it is wrong",
    403: "an origin, host or key scope that may not do this",
    404: "unknown model or route",
    413: "body over max_request_bytes",
    500: "vLLM's own internal error, relayed as it answered",
    501: "not supported by vllama",
    502: "the model's worker or peer failed, its answer was over max_answer_bytes, or the "
    "Hugging Face Hub answered a pull badly",
    503: "the model could not load, the queue is full, its peer is down, the Hub cannot be "
    "reached, or vllama is stopping",
    504: "the model's worker sent nothing for stream_idle_timeout (streamed answers), or the "
    "Hub did not answer in time",
}


def _error_responses() -> JsonObject:
    """One shared response per API's error envelope and status, referred to by operations."""
    return {
        f"{api}{status}": {
            "description": text,
            "content": _json({"$ref": f"#/components/schemas/{api}Error"}),
        }
        for api in ERRORS
        for status, text in STATUS_TEXT.items()
    }


def _errors(api: str, *statuses: int) -> JsonObject:
    return {str(s): {"$ref": f"#/components/responses/{api}{s}"} for s in statuses}


def _operation(
    summary: str,
    api: str,
    ok: JsonObject,
    body: Schema | None = None,
    statuses: tuple[int, ...] = (400, 401, 403, 404, 413, 502, 503, 504),
) -> JsonObject:
    operation: JsonObject = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": ok}, **_errors(api, *statuses)},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def _nullable(schema: Schema) -> Schema:
    kinds = schema.get("type")
    if kinds is None:
        return schema
    listed = kinds if isinstance(kinds, list) else [kinds]
    return {**schema, "type": [*listed, "null"]}


def _ollama(
    summary: str, properties: dict[str, Schema], required: list[Json], ok: JsonObject | None = None
) -> JsonObject:
    # Ollama's Go decoder takes null for any field as its zero value; so does vllama.
    nullable: Schema = {name: _nullable(schema) for name, schema in properties.items()}
    body: Schema = {"type": "object", "required": required, "properties": nullable}
    return {"post": _operation(summary, "Ollama", ok or _json(OBJECT), body)}


def _relayed(summary: str, api: str) -> JsonObject:
    body: Schema = {"type": "object", "required": ["model"], "properties": {"model": MODEL}}
    ok: JsonObject = {"application/json": {"schema": OBJECT}, "text/event-stream": {"schema": {}}}
    # vLLM's own errors (a 500 from a broken engine included) are relayed with their status.
    statuses = (400, 401, 403, 404, 413, 500, 502, 503, 504)
    return {"post": _operation(summary + " (relayed to vLLM by `model`)", api, ok, body, statuses)}


def _ollama_paths() -> Paths:
    generate: dict[str, Schema] = {
        "model": MODEL,
        "prompt": {"type": "string"},
        "system": {"type": "string"},
        "raw": {"type": "boolean"},
        "format": {"type": ["string", "object"]},
        "options": OBJECT,
        "stream": {"type": "boolean"},
        "keep_alive": DURATION,
        "images": {"type": "array", "items": {"type": "string"}},
        "think": {"type": ["boolean", "string"]},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    }
    chat: dict[str, Schema] = {
        **generate,
        "messages": {"type": "array", "items": OBJECT},
        "tools": {"type": "array"},
    }
    for key in ("prompt", "system", "raw", "images"):
        chat.pop(key)
    models: Schema = {"type": "array", "items": OLLAMA_MODEL_ENTRY}
    tags = _json({"type": "object", "properties": {"models": models}})
    create: dict[str, Schema] = {
        "model": MODEL,
        "from": MODEL,
        "system": {"type": "string"},
        "parameters": OBJECT,
        "adapters": OBJECT,
    }
    named: Schema = {"type": "object", "required": ["model"], "properties": {"model": MODEL}}
    listing = (401, 403)
    return {
        "/api/version": {
            "get": _operation("Ollama API level", "Ollama", _json(OBJECT), None, listing)
        },
        "/api/tags": {"get": _operation("every servable model", "Ollama", tags, None, listing)},
        "/api/ps": {"get": _operation("loaded models", "Ollama", tags, None, listing)},
        "/api/show": _ollama("a model's details", {"model": MODEL}, ["model"]),
        "/api/generate": _ollama("generate", generate, ["model"], NDJSON_OR_JSON),
        "/api/chat": _ollama("chat", chat, ["model"], NDJSON_OR_JSON),
        "/api/embed": _ollama(
            "embeddings", {"model": MODEL, "input": {"type": ["string", "array"]}}, ["model"]
        ),
        "/api/embeddings": _ollama(
            "embeddings (older)", {"model": MODEL, "prompt": {"type": "string"}}, ["model"]
        ),
        "/api/pull": _ollama(
            "download a Hugging Face repo",
            {"model": MODEL, "stream": {"type": "boolean"}},
            ["model"],
            NDJSON_OR_JSON,
        ),
        "/api/create": _ollama("a derived model", create, ["model", "from"], NDJSON_OR_JSON),
        "/api/copy": _ollama(
            "a new name", {"source": MODEL, "destination": MODEL}, ["source", "destination"], {}
        ),
        "/api/delete": {"delete": _operation("delete a model", "Ollama", {}, named)},
        "/api/push": {"post": _operation("not supported", "Ollama", {}, None, (401, 403, 501))},
        **_status_page_paths(),
        "/api/vllama/logs": {
            "get": {
                **_operation(
                    "a worker's last output lines",
                    "Ollama",
                    _json(OBJECT),
                    None,
                    (400, 401, 403, 404),
                ),
                "parameters": [_query("model", True), _query("lines", False)],
            }
        },
    }


def _query(name: str, required: bool) -> JsonObject:
    return {"name": name, "in": "query", "required": required, "schema": {"type": "string"}}


def _path(name: str) -> JsonObject:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _relayed_paths() -> Paths:
    paths: Paths = {}
    for route in ROUTES:
        anthropic = route.path.startswith("/v1/messages")
        paths[route.path] = _relayed(route.action, "Anthropic" if anthropic else "OpenAI")
    by_id = _operation(
        "a stored response (relayed to the worker that made it)",
        "OpenAI",
        _json(OBJECT),
        None,
        (401, 403, 404),
    )
    paths["/v1/responses/{response_id}"] = {"get": {**by_id, "parameters": [_path("response_id")]}}
    paths["/v1/responses/{response_id}/cancel"] = {
        "post": {**by_id, "parameters": [_path("response_id")]}
    }
    return paths


def _static(summary: str, media: str) -> JsonObject:
    """One of the status page's files: open (they hold no data), 403 only for a foreign Origin."""
    ok: JsonObject = {"description": summary, "content": {media: {"schema": {"type": "string"}}}}
    return {"get": {"summary": summary, "responses": {"200": ok, **_errors("Ollama", 403)}}}


def _status_page_paths() -> Paths:
    events: JsonObject = {
        "description": "Server-Sent Events: `status` (the whole snapshot) at connect, on every "
        "scheduler event and every 2 s; `request` per finished request (docs/API.md)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    return {
        "/ui": _static("the status page", "text/html"),
        "/ui/app.js": _static("the status page's script", "text/javascript"),
        "/ui/style.css": _static("the status page's style sheet", "text/css"),
        "/api/vllama/events": {
            "get": {
                "summary": "live status: the status page's stream",
                "responses": {"200": events, **_errors("Ollama", 401, 403)},
            }
        },
    }


def document() -> Document:
    """vllama's API as OpenAPI 3.1."""
    paths: Paths = {
        "/": {"get": {"summary": "liveness", "responses": {"200": {"description": "running"}}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors("Ollama", 401, 403),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": _json(OBJECT)}},
            }
        },
        "/v1/models": {
            "get": _operation("every servable model", "OpenAI", _json(OBJECT), None, (401, 403))
        },
        "/v1/models/{model}": {
            "get": {
                **_operation("one model", "OpenAI", _json(OBJECT), None, (401, 403, 404)),
                "parameters": [_path("model")],
            }
        },
        **_ollama_paths(),
        **_relayed_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vllama",
            "version": __version__,
            "description": "Ollama's API, the OpenAI API, Anthropic's Messages API and vLLM's "
            "own APIs on one port, in front of one vLLM server per model. Field by field: "
            "docs/API.md.",
        },
        "components": {
            "schemas": {f"{api}Error": schema for api, schema in ERRORS.items()},
            "responses": _error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "paths": paths,
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


if __name__ == "__main__":
    import yaml  # PyYAML comes with vLLM; the daemon itself serves JSON

    yaml.safe_dump(document(), sys.stdout, sort_keys=False, width=100, allow_unicode=True)
