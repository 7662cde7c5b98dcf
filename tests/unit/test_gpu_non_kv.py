"""The 8B stand-in's non-KV memory against vllama's estimate (benchmarks/gpu_non_kv.py), run as
`gpu_check.py --simulate` runs it: CPU torch, every size divided by 16. It proves the script's
logic and that its comparison is vllama's own estimate, not the GPU's numbers."""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from vllama.catalog.facts import ModelFacts, kv_bytes_per_token, profile_shapes
from vllama.scheduling import sizing

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module (they are scripts, not a package); its dataclasses
    need it in sys.modules."""
    qualified = f"benchmarks_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


def simulated_run() -> dict[str, Any]:
    non_kv = benchmark("gpu_non_kv")  # imports torch: only for the tests that need it
    with non_kv.SimMeter() as meter:
        report: dict[str, Any] = non_kv.measure(meter, non_kv.plan(True, meter.total()))
    return report


def test_the_simulated_run_takes_each_part_and_sets_it_beside_vllamas_estimate() -> None:
    report = simulated_run()
    assert report["simulated"] is True and report["model"] == "Llama-3.1-8B / 16"
    config = report["config"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        256,
        2,
        128_256 // 16,
    )
    measured, estimate = report["measured"], report["estimate"]
    # bf16 weights as vLLM lays them out: embedding, lm_head, final norm, and per layer fused
    # qkv (2 + 2 x 1 heads of 128), o, gate-up, down and two norms.
    hidden, inner, vocab = 256, 896, 8016
    per_layer = (4 * 128) * hidden + hidden * 256 + 2 * inner * hidden + hidden * inner + 2 * hidden
    assert measured["weights"] == 2 * (2 * vocab * hidden + hidden + 2 * per_layer)
    # The sampler sorts 64 rows x the vocabulary in fp32 with int64 indices: the peak holds it.
    assert measured["profile_peak"] >= 64 * vocab * (4 + 8)
    assert measured["profile_peak"] > measured["prefill_peak"] > 0
    torch_peaks = report["torch"]
    assert torch_peaks["max_memory_allocated"] == measured["weights"] + measured["profile_peak"]
    assert torch_peaks["max_memory_reserved"] >= torch_peaks["max_memory_allocated"]
    assert report["non_torch"]["end"] > 0 and report["nvml"]["used_end"] > 0
    parts = ("weights", "profile_peak", "non_torch", "graphs")
    assert measured["non_kv"] == sum(measured[p] for p in parts)
    # vLLM's own arguments for what ran, and vllama's estimate for exactly those.
    assert report["args"] == [
        "--max-model-len",
        "8192",
        "--max-num-seqs",
        "64",
        "--max-num-batched-tokens",
        "512",
    ]
    facts = ModelFacts(
        weight_bytes=measured["weights"],
        kv_bytes_per_token=kv_bytes_per_token(config),
        context_length=config["max_position_embeddings"],
        **profile_shapes(config),
    )
    spec = benchmark("gpu_non_kv").Run(config, 64, 512, tuple(report["decode_sizes"])).spec()
    planned = sizing.estimate(spec, facts, "gpu", 0, report["cuda_total"])
    assert estimate["non_kv"] == planned.share - sizing.kv_target(spec, facts, 0)
    assert estimate["kv"] == (8192 // 16 + 1) * 16 * kv_bytes_per_token(config)  # type: ignore[operator]
    assert report["ratio"]["non_kv"] == round(measured["non_kv"] / estimate["non_kv"], 4)
    assert report["within_estimate"] is (measured["non_kv"] <= estimate["non_kv"])


def test_the_comparison_moves_with_vllamas_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were the estimate written into the script, these would not move it.
    monkeypatch.setattr(sizing, "NON_TORCH", 100 * MiB)
    monkeypatch.setattr(sizing, "CUDA_GRAPHS", 3 * MiB)
    monkeypatch.setattr(sizing, "ACTIVATIONS_MIN", 1 * MiB)
    report = simulated_run()
    estimate, measured = report["estimate"], report["measured"]
    assert (estimate["non_torch"], estimate["graphs"]) == (100 * MiB, 3 * MiB)
    sampler = 64 * 8016 * sizing.SAMPLER_BYTES  # now above the activations' floor
    assert estimate["profile_peak"] == sampler
    assert estimate["non_kv"] == measured["weights"] + sampler + 100 * MiB + 3 * MiB
    assert report["ratio"]["graphs"] == round(measured["graphs"] / (3 * MiB), 4)


def test_gpu_check_records_the_step_with_the_stand_ins_report() -> None:
    check_module = benchmark("gpu_check")
    check = check_module.Check()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    check_module.non_kv_step(check, env, simulate=True)
    (step,) = check.steps
    assert step["step"] == "8B stand-in's non-KV memory within vllama's estimate"
    assert step["simulated"] is True and step["ok"] is step["within_estimate"]
    assert {"measured", "estimate", "ratio", "torch", "non_torch"} <= set(step)
    assert step["estimate"]["non_kv"] > 0 and step["ratio"]["non_kv"] > 0


def test_the_bundle_carries_every_declared_dependency_or_finds_it_there() -> None:
    # The dry run from a bare Python found httptools missing (the daemon could not start there)
    # once it became a dependency.
    bundle = benchmark("gpu_bundle")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {canonicalize_name(Requirement(text).name) for text in declared}
    listed = {canonicalize_name(name) for name in bundle.MISSING_THERE + bundle.THERE_ALREADY}
    assert needed - listed == set()
