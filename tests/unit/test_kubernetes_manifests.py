"""deploy/kubernetes: each manifest against Kubernetes' own schemas (kubernetes-validate bundles
them, so this runs offline), the ServiceMonitor against its CRD's schema, and the files against
each other and the image: what one names, another must provide."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from vllama.config.settings import load_config

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"
SERVICEMONITOR_SCHEMA = Path(__file__).parent / "schemas" / "servicemonitor-v1.json"
# The oldest Kubernetes the manifests are meant for (every field they use exists there).
KUBERNETES_VERSION = "1.29"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def _validate(doc: dict[str, Any]) -> None:
    """Raises when `doc` is not a valid object of its kind (unknown fields included)."""
    if doc.get("apiVersion") == "monitoring.coreos.com/v1":
        jsonschema.validate(doc, json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _image_env() -> dict[str, str]:
    """The Containerfile's ENV (one `ENV a=b \\` block)."""
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_the_manifests_are_the_expected_kinds() -> None:
    kinds = sorted(d["kind"] for d in _documents())
    assert kinds == ["ConfigMap", "Secret", "Service", "Service", "ServiceMonitor", "StatefulSet"]


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_validates(doc: dict[str, Any]) -> None:
    _validate(doc)


def _broken(kind: str, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_one(kind, "vllama"))
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


_CONTAINER = ("spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    "doc",
    [
        _broken("StatefulSet", (*_CONTAINER, "ports", 0, "containerPort"), "11434"),
        _broken("StatefulSet", (*_CONTAINER, "livenesProbe"), {"httpGet": {"port": "http"}}),
        _broken("StatefulSet", (*_CONTAINER[:-1], 0), {"image": "vllama:gpu"}),  # no name
        _broken("StatefulSet", ("spec", "replicas"), "two"),
        _broken("Service", ("spec", "ports"), "11434"),
        _broken("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds"),
        _broken("ServiceMonitor", ("spec", "endpoint"), []),
    ],
    ids=[
        "port-as-string",
        "misspelt-field",
        "container-without-name",
        "replicas-not-a-number",
        "ports-not-a-list",
        "bad-duration",
        "servicemonitor-typo",
    ],
)
def test_a_broken_manifest_fails_validation(doc: dict[str, Any]) -> None:
    # The check above is only worth something if it refuses what Kubernetes would refuse.
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc)


def test_services_and_monitor_select_the_pods_and_their_port() -> None:
    pod_labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _container()["ports"]}
    for service in (d for d in _documents() if d["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert _one("StatefulSet")["spec"]["serviceName"] == "vllama-peers"
    assert _one("Service", "vllama-peers")["spec"]["clusterIP"] == "None"
    monitor = _one("ServiceMonitor")
    selected = [
        d
        for d in _documents()
        if d["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["vllama"]  # each pod scraped once
    service_ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


def test_secret_references_name_keys_the_secret_has() -> None:
    secret = _one("Secret")
    keys = set(secret["stringData"])
    refs = [
        env["valueFrom"]["secretKeyRef"]
        for env in _container()["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    refs += [e["authorization"]["credentials"] for e in _one("ServiceMonitor")["spec"]["endpoints"]]
    assert refs
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in keys


def test_the_config_map_is_a_valid_vllama_config_with_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _container()
    env = {e["name"]: e for e in container["env"]}
    # Kubernetes expands $(PROMETHEUS_KEY) from the variable defined before it.
    prometheus_key = "k" * 24
    keys_json = env["VLLAMA_API_KEYS"]["value"].replace("$(PROMETHEUS_KEY)", prometheus_key)
    monkeypatch.setenv("VLLAMA_API_KEYS", keys_json)
    monkeypatch.setenv("VLLAMA_API_KEY", "a" * 24)
    toml_text = _one("ConfigMap")["data"]["vllama.toml"]
    config = load_config(file_data=tomllib.loads(toml_text))
    assert [k.scope for k in config.server.api_keys] == ["inference"]
    assert config.server.api_key == "a" * 24
    assert config.models  # the example model
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"] == ["serve", "--config", f"{mount['mountPath']}/vllama.toml"]
    # The pod is killed only after the daemon's longest orderly stop.
    grace = _one("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.server.drain_timeout + config.server.stop_timeout


def test_probes_use_the_open_root_and_liveness_outlasts_readiness() -> None:
    container = _container()
    probes = {k: container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    for probe in probes.values():
        assert probe["httpGet"] == {"path": "/", "port": "http"}
    live, ready = probes["livenessProbe"], probes["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert live["periodSeconds"] * live["failureThreshold"] > (
        ready["periodSeconds"] * ready["failureThreshold"]
    )


def test_the_pod_mounts_volumes_where_the_image_keeps_its_state() -> None:
    image_env = _image_env()
    spec = _one("StatefulSet")["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    assert mounts["models"] == image_env["VLLAMA_MODELS_DIR"]
    assert mounts["huggingface"] == image_env["HF_HOME"]
    assert mounts["home"] == image_env["HOME"]
    assert mounts["run"] == image_env["VLLAMA_RUNTIME_DIR"]
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    assert claims == {"models", "huggingface"}
    user = re.search(r"^USER (\d+):(\d+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert user is not None
    security = spec["template"]["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(user[1]), int(user[2]))
    assert _container()["resources"]["limits"]["nvidia.com/gpu"] >= 1
