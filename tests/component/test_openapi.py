"""vllama's OpenAPI document: written out in docs/, true to the routes the app serves, and the
daemon fuzzed against it with schemathesis (fake engine): no 5xx, only documented statuses,
content types and error envelopes, and bodies that break the schema refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.component.fakes import fake_config, worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import Daemon, free_port, write_config
from vllama.api import openapi
from vllama.api.app import build_app

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    )
)


def test_docs_hold_the_served_document() -> None:
    written = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    assert written == json.loads(json.dumps(openapi.document())), (
        "regenerate: python -m vllama.api.openapi > docs/openapi.yaml"
    )


def test_every_route_is_documented_and_every_documented_route_served() -> None:
    app = build_app(fake_config({"a": {}}))
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        served.add((route.method.lower(), path.replace("{model:.+}", "{model}")))
    documented = {
        (method, path)
        for path, operations in openapi.document()["paths"].items()
        for method in operations
        if method in ("get", "post", "delete")
    }
    assert served == documented


async def test_every_model_field_the_daemon_refuses_empty_says_so(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each documented body field that names a model: `""` is refused (400), and the schema
    says `minLength: 1` (schemathesis' negative checks then send it and expect the refusal)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    client = await aiohttp_client(build_app(fake_config({"near": {}})))
    fields = []
    document: Any = json.loads(json.dumps(openapi.document()))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            properties = content.get("application/json", {}).get("schema", {}).get("properties")
            for field, schema in (properties or {}).items():
                if "a model name" not in schema.get("description", ""):
                    continue
                fields.append((method, path, field))
                good = {"model": "near", "from": "near", "source": "near", "destination": "x"}
                reply = await client.request(method, path, json={**good, field: ""})
                assert reply.status == 400, (method, path, field, await reply.text())
                assert schema.get("minLength") == 1, (method, path, field)
    assert len(fields) == 27  # 26 operations; /api/create names two models


def test_the_daemon_keeps_to_its_document_under_fuzzing(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "runtime_dir": str(tmp_path / "run"),
            "models_dir": str(tmp_path / "models"),
            **worker_ports(),
        },
        {"m": {"model": "fake/m"}},
    )
    port = free_port()
    with Daemon(config, port, tmp_path / "vllama.log") as daemon:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "SCHEMATHESIS_HOOKS": "tests.component.fuzz_hooks",
        }
        result = subprocess.run(
            [
                *(sys.executable, "-m", "schemathesis.cli", "run"),
                f"{daemon.url}/openapi.json",
                *("--checks", CHECKS),
                # 501 is push's honest answer (vllama does not push), not a server fault.
                *("--exclude-path", "/api/push"),
                # The status page's stream never ends on its own: nothing for a fuzzer to read.
                *("--exclude-path", "/api/vllama/events"),
                *("--max-examples", "25", "--seed", "7", "--workers", "1"),
                *("--request-timeout", "60", "--generation-database", "none", "--no-color"),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "passed" in result.stdout
        assert '"status": 200' in daemon.log(), "the fuzz never reached the served model"
