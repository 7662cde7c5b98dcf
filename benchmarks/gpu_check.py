"""A prepared check of vllama's GPU accounting and placement on a real NVIDIA GPU, for hosts where
vLLM itself is not installed: vllama runs with `benchmarks/gpu_standin.py` as its engine, which
takes real GPU memory by vLLM's rules (docs/GPU.md), and NVML is read directly to compare.

What it checks, each step recorded with its figures (pass or fail, it goes on):
1. three models load on GPU 0, each holding the share vllama gave it (NVML per process);
2. `/api/ps` size_vram agrees with NVML (within 5 %), and `/metrics` device memory with NVML;
3. a fourth model that does not fit evicts the least recently used one, whose memory comes back;
4. sleep mode: an idle model's share is freed on sleep and taken back on the next request;
5. after SIGTERM, no stand-in process holds GPU memory and free memory is back where it began.

Needs on the GPU host: Python 3.11+, torch with CUDA, nvidia-ml-py, aiohttp, and vllama's
dependencies (pydantic, pydantic-settings, structlog, prometheus-client, psutil); where they are
missing, install them beside the tree first (`pip install --target .gpu-deps pydantic
pydantic-settings structlog prometheus-client psutil`; this script adds `.gpu-deps` to the path).

Usage: python benchmarks/gpu_check.py [--out FILE]   (report: JSON, also printed)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEPS = REPO / ".gpu-deps"
GiB = 1 << 30


def http(method: str, url: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class Check:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def record(self, name: str, ok: bool, **figures: Any) -> None:
        self.steps.append({"step": name, "ok": bool(ok), **figures})
        print(("PASS " if ok else "FAIL ") + name, json.dumps(figures, default=str), flush=True)


def nvml_usage(pynvml: Any, index: int) -> dict[int, int]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return {
        p.pid: int(p.usedGpuMemory or 0)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    }


def free_memory(pynvml: Any, index: int) -> int:
    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)


def write_config(folder: Path, port_base: int, kv_gib: int) -> Path:
    engine = json.dumps([sys.executable, str(REPO / "benchmarks" / "gpu_standin.py")])
    lines = [
        "[server]",
        f"engine_command = {engine}",
        f'kv_cache = "{kv_gib}GiB"',
        f"worker_port_min = {port_base}",
        f"worker_port_max = {port_base + 99}",
        'health_interval = "2s"',
        'load_stall_timeout = "2m"',
        f'models_dir = "{folder / "models"}"',
    ]
    for name in ("a", "b", "c", "d", "sleepy"):
        # A local folder with a config.json only: no weights to count, and no Hub to ask.
        model = folder / "standin" / name
        model.mkdir(parents=True, exist_ok=True)
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        (model / "config.json").write_text(json.dumps(config))
        keep_alive = "3s" if name == "sleepy" else "1h"
        lines += ["", f"[models.{name}]", f'model = "{model}"', f'keep_alive = "{keep_alive}"']
        lines += ['args = ["--max-model-len", "4096"]']
        if name == "sleepy":
            lines += ["sleep_when_idle = true"]
    path = folder / "vllama.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(out: Path | None) -> int:
    sys.path.insert(0, str(DEPS))
    import pynvml

    pynvml.nvmlInit()
    check = Check()
    total = int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total)
    gpus = pynvml.nvmlDeviceGetCount()
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    # Three models per GPU fit, a fourth does not: share = 1 GiB activations + KV, need = share
    # + 1 GiB context (vllama's estimates), so KV = total / 3.3 - 2 GiB.
    kv_gib = max(int(total / 3.3 / GiB) - 2, 1)
    begin_free = free_memory(pynvml, 0)
    check.record("device", True, gpu=str(name), gpus=gpus, total=total, free=begin_free)
    folder = Path(tempfile.mkdtemp(prefix="vllama-gpu-check-"))
    port = 21434
    config = write_config(folder, 23000, kv_gib)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(DEPS)])}
    log = (folder / "vllama.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "vllama", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if http("GET", url + "/", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        completion = {"prompt": "hi", "max_tokens": 1}
        for model in ("a", "b", "c"):
            status, answer = http("POST", url + "/v1/completions", {"model": model, **completion})
            check.record(f"load {model}", status == 200, answer=str(answer)[:300])
        usage = nvml_usage(pynvml, 0)
        share_bytes = sorted(usage.values())
        check.record(
            "three workers hold their shares",
            len(usage) >= 3,
            per_process=share_bytes,
            kv_gib=kv_gib,
        )
        status, ps = http("GET", url + "/api/ps")
        reported = sum(m.get("size_vram", 0) for m in ps.get("models", [])) if status == 200 else 0
        measured = sum(usage.values())
        close = measured > 0 and abs(reported - measured) <= 0.05 * measured
        check.record("/api/ps size_vram matches NVML", close, reported=reported, nvml=measured)
        status, metrics = http("GET", url + "/metrics")
        used_line = [
            line
            for line in str(metrics).splitlines()
            if line.startswith('vllama_device_memory_vllama_bytes{device="gpu:0"}')
        ]
        check.record("metrics list gpu:0", bool(used_line), line=used_line[:1])
        before = set(nvml_usage(pynvml, 0))
        status, _ = http("POST", url + "/v1/completions", {"model": "d", **completion})
        time.sleep(2)
        _, ps = http("GET", url + "/api/ps")
        loaded = sorted(m["name"] for m in ps.get("models", []))
        gone = before - set(nvml_usage(pynvml, 0))
        check.record(
            "a fourth model evicts the least recently used",
            status == 200 and "a:latest" not in loaded and len(gone) >= 1,
            loaded=loaded,
            processes_gone=len(gone),
        )
        status, _ = http("POST", url + "/v1/completions", {"model": "sleepy", **completion})
        awake = sum(nvml_usage(pynvml, 0).values())
        time.sleep(6)  # keep_alive 3 s: it sleeps
        asleep = sum(nvml_usage(pynvml, 0).values())
        status, _ = http("POST", url + "/v1/completions", {"model": "sleepy", **completion})
        woken = sum(nvml_usage(pynvml, 0).values())
        check.record(
            "sleep frees the share, a request takes it back",
            status == 200 and asleep < awake and woken >= awake * 0.95,
            awake=awake,
            asleep=asleep,
            woken=woken,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        log.close()
    time.sleep(2)
    left = nvml_usage(pynvml, 0)
    end_free = free_memory(pynvml, 0)
    check.record(
        "after SIGTERM nothing holds GPU memory",
        code == 0 and not left and end_free >= begin_free - 256 * (1 << 20),
        exit_code=code,
        processes=left,
        free_before=begin_free,
        free_after=end_free,
    )
    report = {
        "ok": all(step["ok"] for step in check.steps),
        "steps": check.steps,
        "log_tail": (folder / "vllama.log").read_text(errors="replace").splitlines()[-40:],
    }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if out is not None:
        out.write_text(text)
    return 0 if report["ok"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    sys.exit(run(parser.parse_args().out))


if __name__ == "__main__":
    main()
