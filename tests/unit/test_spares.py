"""Which models a warm spare can become, and which engine commands a spare can run."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from tests.processes import group_alive, process_group
from vllama.engine.import_time import unfit_variable
from vllama.engine.spare import parse_command
from vllama.engine.spares import spare_argv, tree_memory

BASE = {"PATH": "/usr/bin", "HOME": "/var/lib/vllama", "VLLM_NO_USAGE_STATS": "1"}


@pytest.mark.parametrize(
    "extra",
    [
        {"CUDA_VISIBLE_DEVICES": "1"},  # read when CUDA starts, after the spare takes the model
        {"VLLM_CPU_KVCACHE_SPACE": "4"},  # vLLM's envs are read on use
        {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1", "FAKE_VLLM_TOKENS": "3"},
    ],
)
def test_variables_read_after_import_fit(extra: dict[str, str]) -> None:
    assert unfit_variable(BASE, {**BASE, **extra}) is None


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE"),  # huggingface_hub reads it at import
        ({"OMP_NUM_THREADS": "4"}, "OMP_NUM_THREADS"),
        ({"PYTHONHASHSEED": "0"}, "PYTHONHASHSEED"),
        ({"VLLM_LOGGING_LEVEL": "DEBUG"}, "VLLM_LOGGING_LEVEL"),  # vLLM's logger, at import
        ({"HOME": "/root"}, "HOME"),  # changed, not only added
    ],
)
def test_variables_read_at_import_make_a_spare_unfit(change: dict[str, str], variable: str) -> None:
    assert unfit_variable(BASE, {**BASE, **change}) == variable
    assert unfit_variable({**BASE, **change}, BASE) == variable  # removed, too


def test_a_spare_runs_python_dash_m_or_a_script_only() -> None:
    assert parse_command([sys.executable, "-m", "vllm.entrypoints.openai.api_server"]) == (
        "module",
        "vllm.entrypoints.openai.api_server",
    )
    assert parse_command([sys.executable, "/x/fake_vllm.py"]) == ("script", "/x/fake_vllm.py")
    assert spare_argv(["vllm", "serve"]) is None  # a console script: not a Python command
    assert spare_argv(["/usr/bin/python3", "-c", "print(1)"]) is None
    assert spare_argv(["python3"]) is None


def test_a_forked_tree_is_not_counted_twice() -> None:
    # A parent that filled 200 MB, then forked a child that shares them (as a spare's zygote
    # shares the spare's imports): the tree holds ~200 MB, not ~400.
    code = (
        "import os, sys, time\n"
        "block = bytearray(200 * 2**20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "if os.fork() == 0: time.sleep(60); os._exit(0)\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    with process_group(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        held = tree_memory(proc.pid)
        children = psutil.Process(proc.pid).children(recursive=True)
    psutil.wait_procs(children, timeout=10)  # reaped by init once their parent is gone
    assert not group_alive(proc.pid)
    assert 190 * 2**20 < held < 300 * 2**20
