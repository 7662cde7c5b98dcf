"""Shared fixtures. Every test that spawns processes is checked, at its end, for leftovers, and
every test for what it reached outside the run (tests/sandbox/vllama_test_audit.py)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.sandbox import vllama_test_audit

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SANDBOX = TESTS / "sandbox"
FAKE_VLLM = TESTS / "fake_vllm.py"
FAKE_ENGINE_COMMAND = [sys.executable, str(FAKE_VLLM)]
# The host RAM a daemon running the fake engine counts on (`memory_reserved_cpu`): its workers
# use almost none, so placement must not depend on what the machine has free at the moment
# (under another load, a 6 GiB estimate per fake model was refused by measured free memory).
FAKE_ENGINE_MEMORY = "64GiB"

# Every process this test session starts inherits this mark, so the leak check finds exactly
# ours and never touches another run's (or a developer's daemon's) processes.
SESSION_MARK = f"{os.getpid()}-{uuid.uuid4().hex}"
os.environ["TEST_VLLAMA_SESSION"] = SESSION_MARK

# Hermetic by construction: before anything starts, this process and every one it starts (their
# environment is inherited) live in the run's own folder, offline, and tell nobody they ran.
RUN_DIR = Path(tempfile.mkdtemp(prefix="vllama-test-run-")).resolve()
AUDIT_LOG = RUN_DIR / "outside.log"  # what reached outside the run: tests/sandbox/


def _own_addresses() -> list[str]:
    """This host's interface addresses (IPv4 and IPv6)."""
    return [
        address.address.split("%", 1)[0]
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family in (socket.AF_INET, socket.AF_INET6)
    ]


def _hermetic_environment(run: Path) -> dict[str, str]:
    for folder in ("home", "cache", "config", "data", "state", "runtime"):
        (run / folder).mkdir(mode=0o700)
    # Besides the run's own: the system's temporary folder (pytest's tmp_path, Ray's sockets),
    # devices and /proc, and the checkout's git-ignored caches (the e2e models built once,
    # pytest's and hypothesis's example databases).
    writable = [str(run), tempfile.gettempdir(), "/dev", "/proc"]
    writable += [str(REPO / name) for name in (".cache", ".pytest_cache", ".hypothesis")]
    return {
        "HOME": str(run / "home"),  # ~/.vllama, ~/.netrc, ~/ray_bootstrap_config.yaml, ...
        "XDG_CACHE_HOME": str(run / "cache"),
        "XDG_CONFIG_HOME": str(run / "config"),
        "XDG_DATA_HOME": str(run / "data"),
        "XDG_STATE_HOME": str(run / "state"),
        "XDG_RUNTIME_DIR": str(run / "runtime"),
        "HF_HOME": str(run / "cache" / "huggingface"),
        "HF_HUB_CACHE": str(run / "cache" / "huggingface" / "hub"),
        # No Hub: a test that wants one points HF_ENDPOINT at its fake (tests/fake_hf.py,
        # `point_hub_at`); anything that ignores the offline switch finds a closed loopback port.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # vLLM finds its host's address by connecting a UDP socket to 8.8.8.8 (`get_ip`; no packet
        # is sent, but it is a connection past loopback): given its address, it asks nothing.
        "VLLM_HOST_IP": "127.0.0.1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DISABLE_DASHBOARD": "1",
        # Loopback never goes through a developer's proxy.
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SANDBOX), os.environ.get("PYTHONPATH")])),
        vllama_test_audit.LOG_VARIABLE: str(AUDIT_LOG),
        vllama_test_audit.ROOTS_VARIABLE: os.pathsep.join(writable),
        vllama_test_audit.OWN_VARIABLE: " ".join(_own_addresses()),
    }


HERMETIC_ENV = _hermetic_environment(RUN_DIR)
os.environ.update(HERMETIC_ENV)
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLAMA_CONFIG", "VLLAMA_HOST"):
    os.environ.pop(_name, None)  # the user's credentials and daemon are not the run's
vllama_test_audit.install_from_environment()

# The default models folder is the user's (~/.vllama/models): a test must never read or write it.
# A config a test writes without a models folder (tests/component/fakes.py, tests/daemon.py) gets
# this session's own empty one instead, so a demo the user built there (`make serve`) never shows
# up in a listing a test compares exactly. Removed when the session ends.
_MODELS_DIR = tempfile.TemporaryDirectory(prefix="vllama-test-models-")
EMPTY_MODELS_DIR = _MODELS_DIR.name

# What a leaked worker looks like: the fake server (and its fake EngineCore grandchild), a real vLLM
# server or engine, or a vllama process started by a test: a daemon (`vllama serve`) or a CLI
# command (`python -m vllama run ...`, or the `vllama` console script).
_LEAK_MARKERS = (
    "fake_vllm",
    "vllm.entrypoints",
    "VLLM::",
    "vllama serve",
    "-m vllama",
    "bin/vllama",
    "ray::",  # Ray's processes, for the tests that start a Ray cluster
    "/site-packages/ray/",
    "-m ray.",
)


# Daemons that a module-scoped fixture keeps running across tests: they and their workers are
# not leftovers until that fixture ends (it checks for leftovers itself then).
LONG_LIVED: set[int] = set()


def _long_lived_tree() -> set[int]:
    pids = set()
    for pid in LONG_LIVED:
        try:
            proc = psutil.Process(pid)
            pids.add(pid)
            pids.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return pids


def worker_like_processes(since: float) -> list[psutil.Process]:
    found = []
    exempt = _long_lived_tree()
    for proc in psutil.process_iter(["pid", "cmdline", "name", "create_time", "status"]):
        info = proc.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if info["pid"] in exempt:
            continue
        if (info["create_time"] or 0) < since:
            continue
        text = " ".join(info["cmdline"] or []) + " " + (info["name"] or "")
        if not any(marker in text for marker in _LEAK_MARKERS):
            continue
        try:
            if proc.environ().get("TEST_VLLAMA_SESSION") != SESSION_MARK:
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def assert_no_leftovers(since: float, settle: float = 10.0) -> None:
    deadline = time.monotonic() + settle
    while True:
        left = worker_like_processes(since)
        if not left:
            return
        if time.monotonic() >= deadline:
            details = []
            for proc in left:
                try:
                    details.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
                except psutil.Error:
                    continue
                proc.kill()  # don't let one leak poison the tests after it
            if details:
                pytest.fail("processes left behind:\n" + "\n".join(details))
            return
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fails a test that leaves a worker-like process (fake or real vLLM, a daemon) running."""
    started = time.time() - 1.0  # create_time has coarse resolution
    yield
    assert_no_leftovers(started)


def outside_the_run(since: int) -> list[str]:
    """What processes of this run reached outside it (audit log lines) after byte `since`."""
    try:
        with AUDIT_LOG.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _audit_size() -> int:
    try:
        return AUDIT_LOG.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.fixture(autouse=True)
def nothing_outside_the_run() -> Iterator[None]:
    """Fails a test during which a process of this run connected past loopback or wrote outside
    the run's folders (the system's temporary folder, the repository's .cache, /dev, /proc)."""
    since = _audit_size()
    yield
    reached = outside_the_run(since)
    if reached:
        pytest.fail("reached outside the test run:\n" + "\n".join(reached[:20]), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
