"""The container image (deploy/container) with podman: it builds; a container serves the demo
through its published port to the official ollama and openai clients; a stop (SIGTERM to its
PID 1, as `podman stop` sends) drains an answer in flight and leaves no process; a container
started again on the same volumes serves the same models. Skipped, saying why, where podman is
not installed; `make test-image` runs it (its own CI step: a cold build takes many minutes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.component.fakes import eventually_blocking
from tests.conftest import SESSION_MARK, worker_like_processes
from tests.daemon import free_port
from vllama import __version__
from vllama.demo.build import CHAT_MODEL_DIRNAME

PODMAN = shutil.which("podman")
REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "container" / "build"
TAG = "localhost/vllama:cpu"  # what `make image` builds on a host without a GPU
BUILT_CHAT_MODEL = f"/var/lib/vllama/models/{CHAT_MODEL_DIRNAME}/config.json"
DRAIN_TIMEOUT = 60.0  # seconds; the daemon's stop_timeout per worker stays at its 20 s default
STOP_TIMEOUT = 20.0
ANSWER_SECONDS = 15.0  # how long the answer streamed across the stop lasts, < DRAIN_TIMEOUT
CACHE_VOLUME = "/var/lib/vllama/huggingface"  # the image's Hugging Face cache, a volume

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(
        PODMAN is None,
        reason="podman is not installed (.ci/run installs it best effort: apt-get install podman "
        "buildah mmdebstrap)",
    ),
    pytest.mark.timeout(3600),
]


def podman(*args: str, timeout: float = 300, check: bool = True) -> str:
    assert PODMAN is not None
    done = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built as `make image` builds it (quick when its layers are cached)."""
    done = subprocess.run([str(BUILD), "cpu", TAG], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"the image did not build:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return TAG


@pytest.fixture
def volumes() -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    names = {
        "/var/lib/vllama/models": f"vllama-test-models-{suffix}",
        CACHE_VOLUME: f"vllama-test-hf-{suffix}",
    }
    for name in names.values():
        podman("volume", "create", name)
    yield names
    for name in names.values():
        podman("volume", "rm", "--force", name, check=False)


class Container:
    """`podman run` of the image on a free loopback port, the given volumes mounted."""

    def __init__(self, image: str, volumes: dict[str, str]) -> None:
        self.name = f"vllama-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mounts = [arg for path, name in volumes.items() for arg in ("--volume", f"{name}:{path}")]
        env = {
            # Its processes carry this session's mark, so the leak check sees them (rootful
            # podman's containers are processes of this machine).
            "TEST_VLLAMA_SESSION": SESSION_MARK,
            "VLLAMA_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
            "VLLAMA_WARM_SPARES": "0",  # two cores shared: no engine started ahead of need
            "HF_HUB_OFFLINE": "1",  # the demo's models are built locally
        }
        podman(
            "run", "--detach", "--name", self.name,
            "--publish", f"127.0.0.1:{self.port}:11434", "--shm-size", "1g",
            *mounts,
            *(arg for key, value in env.items() for arg in ("--env", f"{key}={value}")),
            image,
        )  # fmt: skip
        deadline = time.monotonic() + 180  # the first start builds the demo models
        while not self._answers():
            if self.state()["Status"] != "running" or time.monotonic() > deadline:
                raise AssertionError(f"the container did not start serving:\n{self.logs()[-6000:]}")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(
            podman("inspect", "--format", "{{json .State}}", self.name)
        )
        return state

    def logs(self) -> str:
        """What the container wrote, both streams (the daemon logs to stderr)."""
        assert PODMAN is not None
        done = subprocess.run(
            [PODMAN, "logs", self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout

    def events(self) -> list[dict[str, Any]]:
        """The daemon's log records (JSON lines: its stderr is not a terminal)."""
        events = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):  # a line of the engine's, not a record
                record = json.loads(line)
                if isinstance(record, dict) and "event" in record:
                    events.append(record)
        return events

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def test_the_image_runs_as_a_user_on_ollamas_port_with_a_health_check(image: str) -> None:
    (inspected,) = json.loads(podman("image", "inspect", image))
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert "11434/tcp" in config["ExposedPorts"]
    assert set(config["Volumes"]) == {"/var/lib/vllama/models", "/var/lib/vllama/huggingface"}
    assert inspected["Healthcheck"]["Test"][0] == "CMD"  # podman keeps it beside Config
    assert config["Entrypoint"][0] == "/usr/bin/tini"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"
    assert podman("run", "--rm", image, "version").split() == ["vllama", __version__]


# Timing is read from inside the container, on its own loopback: on this VM, a stream through
# podman's published port stalled for up to 3.2 s at a time (seen with urllib, httpx and the
# openai client alike; inside the container the same stream never paused 15 ms), so what arrives
# there when says nothing about the daemon.
_RATE = """
import json, time, urllib.request
body = {"model": "tiny", "prompt": "Count.", "max_tokens": 200, "ignore_eos": True}
request = urllib.request.Request(
    "http://127.0.0.1:11434/v1/completions", json.dumps(body).encode(),
    {"Content-Type": "application/json"},
)
started = time.monotonic()
urllib.request.urlopen(request, timeout=300).read()
print(200 / (time.monotonic() - started))
"""


# A streamed completion of argv[1] tokens, from inside the container: it writes "streaming" to a
# file on the cache volume once its first chunk is in, then how many tokens the answer's usage
# counts and its finish_reason.
_STREAM = f"""
import json, sys, urllib.request
body = {{"model": "tiny", "prompt": "Count.", "max_tokens": int(sys.argv[1]), "stream": True,
        "ignore_eos": True, "stream_options": {{"include_usage": True}}}}
request = urllib.request.Request(
    "http://127.0.0.1:11434/v1/completions", json.dumps(body).encode(),
    {{"Content-Type": "application/json"}},
)
chunks, finish, tokens = 0, None, None
with open("{CACHE_VOLUME}/drain-test", "w") as report:
    for line in urllib.request.urlopen(request, timeout=300):
        if not line.startswith(b"data: {{"):
            continue
        chunk = json.loads(line[6:])
        chunks += 1
        if chunks == 1:
            report.write("streaming\\n")
            report.flush()
        for choice in chunk["choices"]:
            finish = choice["finish_reason"] or finish
        tokens = (chunk.get("usage") or {{}}).get("completion_tokens", tokens)
    report.write(f"{{tokens}} {{finish}}\\n")
"""


def _on_host(volume: str) -> Path:
    """Where a volume's files are on this machine (podman here runs as root: its own storage)."""
    return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).strip())


def _tokens_for(container: Container, seconds: float) -> int:
    """How many tokens the demo writes in about `seconds` (at least 2,000), timed on the faster
    of two non-streamed answers (the first answer of its kind can be seconds slower)."""
    rate = max(float(container.exec("python3", "-c", _RATE)) for _ in range(2))
    return max(2_000, min(int(rate * seconds), 30_000))


def _openai(container: Container) -> openai.OpenAI:
    return openai.OpenAI(base_url=container.url + "/v1", api_key="unused", max_retries=0)


def test_a_container_serves_drains_and_starts_again_on_its_volumes(
    image: str, volumes: dict[str, str], containers: list[Container]
) -> None:
    first = Container(image, volumes)
    containers.append(first)
    client = ollama.Client(host=first.url, timeout=600)

    # The first request loads the model (a minute or more here); meanwhile `/` still answers
    # at once, which is what lets a liveness probe on `/` spare a loading model.
    loading = threading.Thread(
        target=lambda: client.generate(model="tiny", prompt="hi", options={"num_predict": 4})
    )
    loading.start()
    probes = []
    while loading.is_alive():
        started = time.monotonic()
        assert httpx.get(first.url + "/", timeout=5).status_code == 200
        probes.append(time.monotonic() - started)
        time.sleep(1)
    loading.join()
    assert len(probes) > 5 and max(probes) < 2, probes

    reply = client.chat(
        model="tiny", messages=[{"role": "user", "content": "Hello!"}], options={"num_predict": 8}
    )
    assert reply.message.content
    completion = _openai(first).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8
    )
    assert completion.choices[0].message.content
    podman("healthcheck", "run", first.name)  # exit status 0: healthy
    client.copy("tiny", "mine")  # a derived model: kept in the models volume
    built = first.exec("stat", "--format", "%Y", BUILT_CHAT_MODEL)

    # Stop while an answer streams: it finishes (drained), the container exits 0 in time. The
    # answer is sized to take about ANSWER_SECONDS here and read by a client inside the
    # container that writes what it got to a file on a volume (see _RATE for why not through
    # the published port); the stop goes out once its first chunk has come, and the daemon's own
    # count of answers in flight when the signal came is the proof that it drained one.
    # No podman command may run while the stream does: with a `podman exec` session running,
    # `podman stop` and even `podman inspect` waited until it ended (seen: 21-22 s, the whole
    # stream), and `podman exec --detach` once returned only then. So the leader's pid is read
    # first, the exec runs beside the test, and the test sends the signal `podman stop` sends,
    # SIGTERM to the container's PID 1 (tini), itself.
    tokens = _tokens_for(first, ANSWER_SECONDS)
    report = _on_host(volumes[CACHE_VOLUME]) / "drain-test"
    leader = int(podman("inspect", "--format", "{{.State.Pid}}", first.name))
    assert PODMAN is not None
    reader = subprocess.Popen(
        [PODMAN, "exec", "--detach", first.name, "python3", "-c", _STREAM, str(tokens)],
        stdout=subprocess.DEVNULL,
    )
    eventually_blocking(
        lambda: report.exists() and report.read_text().startswith("streaming"),
        within=120,
        what="the stream inside the container began",
        every=0.05,
    )
    stop_sent = time.monotonic()
    os.kill(leader, signal.SIGTERM)
    podman("wait", first.name, timeout=120)
    stopped_in = time.monotonic() - stop_sent
    reader.wait(60)
    finished = report.read_text().split()
    assert finished == ["streaming", str(tokens), "length"], finished  # every token came
    events = first.events()
    (requested,) = [event for event in events if event["event"] == "shutdown requested"]
    streamed = [event for event in events if event["event"] == "request"][-1]
    assert requested["answers_in_flight"] == 1, (requested, streamed)  # it drained the answer
    assert stopped_in < DRAIN_TIMEOUT + STOP_TIMEOUT, (stopped_in, first.logs()[-6000:])
    state = first.state()
    assert state["ExitCode"] == 0, first.logs()[-6000:]  # not the 137 of podman's SIGKILL
    assert "vllama stopped" in first.logs()
    assert not worker_like_processes(stop_sent - 600), "a container process outlived it"

    # Started again on the same volumes: the demo models are not rebuilt, `mine` is still there.
    second = Container(image, volumes)
    containers.append(second)
    client = ollama.Client(host=second.url, timeout=600)
    names = {model.model for model in client.list().models}
    assert {"tiny:latest", "tiny-embed:latest", "tiny-rerank:latest", "mine:latest"} <= names
    reply = client.chat(
        model="mine", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
    )
    assert reply.message.content
    assert second.exec("stat", "--format", "%Y", BUILT_CHAT_MODEL) == built  # not rebuilt
