"""Which models a warm spare can become, and which engine commands a spare can run."""

from __future__ import annotations

import sys

import pytest

from vllama.engine.import_time import unfit_variable
from vllama.engine.spare import parse_command
from vllama.engine.spares import spare_argv

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
