"""Shared fixtures. Every test that spawns processes is checked, at its end, for leftovers."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).resolve().parent
FAKE_VLLM = TESTS / "fake_vllm.py"
FAKE_ENGINE_COMMAND = [sys.executable, str(FAKE_VLLM)]

# Every process this test session starts inherits this mark, so the leak check finds exactly
# ours and never touches another run's (or a developer's daemon's) processes.
SESSION_MARK = f"{os.getpid()}-{uuid.uuid4().hex}"
os.environ["TEST_VLLAMA_SESSION"] = SESSION_MARK

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
