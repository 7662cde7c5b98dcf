"""A prepared check of vllama's GPU accounting and placement on a real NVIDIA GPU, for hosts where
vLLM itself is not installed: vllama runs with `benchmarks/gpu_standin.py` as its engine, which
takes real GPU memory by vLLM's start-up rules (docs/GPU.md), and NVML is read directly to compare.

What it checks, each step recorded with its figures (pass or fail, it goes on):
1. NVML's total and reserve against `cudaMemGetInfo`'s total (torch's), which vLLM multiplies;
2. an 8B model's memory besides its KV cache, taken by torch as vLLM takes it (bf16 weights, the
   profile run's 8,192-token prefill and sampler sort, CUDA graphs for decode sizes), against
   vllama's estimate for the same model and arguments (`benchmarks/gpu_non_kv.py`);
3. vLLM's free-memory start check, with the stand-in alone: 0.45 and 0.45 start, 0.10 is refused;
4. three models load on GPU 0, each holding the share vllama gave it;
5. `/api/ps` size_vram against each stand-in's own count (torch's allocations + its context),
   and `/metrics` counts the same on the GPU (once its 10 s sample has run);
6. a fourth model that does not fit evicts the least recently used one;
7. sleep mode: an idle model's share is freed on sleep and taken back by a real wake (the same
   process, its wake counted), not a cold reload;
8. after SIGTERM, no stand-in process holds GPU memory and free memory is back where it began.
Whatever touches CUDA runs in a child process: a CUDA context in the check itself would be one
more process on the GPU, holding memory to the end.

On a GPU machine (torch with CUDA and nvidia-ml-py there), one line from the repository root:
    python3 benchmarks/gpu_check.py --out gpu_check.json
vllama's own dependencies that such a machine lacks travel as wheels in `.gpu-wheels`
(`python benchmarks/gpu_bundle.py` builds it here, for the machine's Python); the check installs
them into `.gpu-deps` first. `--simulate` runs it all where there is no GPU, on the simulated GPU
of `benchmarks/gpu_sim` (the dry run: it proves the script, not the GPU).

Usage: python benchmarks/gpu_check.py [--out FILE] [--simulate]   (report: JSON, also printed)
"""

from __future__ import annotations

import argparse
import importlib.util
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
WHEELS = REPO / ".gpu-wheels"
SIM = REPO / "benchmarks" / "gpu_sim"
STANDIN = REPO / "benchmarks" / "gpu_standin.py"
NON_KV = REPO / "benchmarks" / "gpu_non_kv.py"
PORTS = (23000, 23099)  # the workers' ports
GiB = 1 << 30
MiB = 1 << 20


PIP_INSTALL = (
    sys.executable,
    "-m",
    "pip",
    "install",
    "-q",
    "--no-index",
    "--no-deps",
    "--no-compile",
)


def install_bundle() -> None:
    """vllama's dependencies the GPU machine lacks, from the carried wheels (no index there)."""
    if DEPS.is_dir() or not WHEELS.is_dir():
        return
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
    subprocess.run(
        [*PIP_INSTALL, "--target", str(DEPS), *wheels],
        check=True,
    )


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
        # A skipped step does not fail the run, and does not read as a pass either.
        word = "SKIP " if figures.get("skipped") else "PASS " if ok else "FAIL "
        print(word + name, json.dumps(figures, default=str), flush=True)


def nvml_usage(pynvml: Any, index: int) -> dict[int, int]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return {
        p.pid: int(p.usedGpuMemory or 0)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    }


def free_memory(pynvml: Any, index: int) -> int:
    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)


def write_config(folder: Path, port_base: int, kv_gib: int) -> Path:
    engine = json.dumps([sys.executable, str(STANDIN)])
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
        # Asleep for one more keep-alive, a model is stopped: the check wakes it well before.
        keep_alive = "5s" if name == "sleepy" else "1h"
        lines += ["", f"[models.{name}]", f'model = "{model}"', f'keep_alive = "{keep_alive}"']
        lines += ['args = ["--max-model-len", "4096"]']
        if name == "sleepy":
            lines += ["sleep_when_idle = true"]
    path = folder / "vllama.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def standin_account(pid: int) -> dict[str, Any] | None:
    """A stand-in's own count of its memory, found by its pid among the workers' ports."""
    for port in range(PORTS[0], PORTS[1] + 1):
        try:
            status, body = http("GET", f"http://127.0.0.1:{port}/standin/memory", timeout=0.5)
        except OSError:
            continue
        if status == 200 and isinstance(body, dict) and body.get("pid") == pid:
            return body
    return None


def cuda_total(env: dict[str, str]) -> int:
    """`cudaMemGetInfo`'s total, asked by a stand-in (it opens a CUDA context to ask, and exits)."""
    said = subprocess.run(
        [sys.executable, str(STANDIN), "--model", "x", "--port", "1", "--total"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(said.stdout.split()[-1])


def non_kv_step(check: Check, env: dict[str, str], simulate: bool) -> None:
    """An 8B model's memory besides its KV cache, by torch, against vllama's estimate (the
    GPU must be otherwise idle: NVML's used counts every process)."""
    name = "8B stand-in's non-KV memory within vllama's estimate"
    if simulate and importlib.util.find_spec("torch") is None:
        # The dry run from a bare Python (the bundle's test): a GPU machine has torch.
        check.record(name, True, simulated=True, skipped="no torch in this Python")
        return
    argv = [sys.executable, str(NON_KV), *(["--simulate"] if simulate else [])]
    try:
        ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        report = json.loads(ran.stdout)
    except (subprocess.TimeoutExpired, ValueError) as exc:
        check.record(name, False, error=str(exc)[-500:])
        return
    if ran.returncode != 0 or not isinstance(report, dict):
        check.record(name, False, exit_code=ran.returncode, said=ran.stderr[-500:])
        return
    check.record(name, bool(report.get("within_estimate")), **report)


def start_checks(check: Check, env: dict[str, str]) -> None:
    """vLLM's free-memory start check: 0.45 and 0.45 start one after the other, 0.10 then
    finds less than 10 % free and is refused."""
    held: list[subprocess.Popen[str]] = []
    standin = (sys.executable, str(STANDIN), "--model", "x")
    try:
        for n, utilization in enumerate(("0.45", "0.45")):
            argv = [*standin, "--port", str(PORTS[1] - n)]
            process = subprocess.Popen(
                [*argv, "--gpu-memory-utilization", utilization],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            held.append(process)
            line = ""
            while process.stdout is not None and "holding" not in line and line is not None:
                line = process.stdout.readline()
                if not line and process.poll() is not None:
                    break
            check.record(f"stand-in at {utilization} starts", process.poll() is None, said=line)
        third = subprocess.run(
            [*standin, "--port", "1", "--check-only", "--gpu-memory-utilization", "0.10"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        refused = third.returncode == 1 and "Free memory on device" in third.stdout
        check.record("stand-in at 0.10 beside them is refused", refused, said=third.stdout[-300:])
    finally:
        for process in held:
            process.terminate()
            process.wait(30)


def run(out: Path | None, simulate: bool) -> int:
    folder = Path(tempfile.mkdtemp(prefix="vllama-gpu-check-"))
    paths = [str(REPO), str(DEPS)]
    env = dict(os.environ)
    if simulate:
        paths.insert(0, str(SIM))
        env["GPU_SIM_STATE"] = str(folder / "gpu.json")
        os.environ["GPU_SIM_STATE"] = env["GPU_SIM_STATE"]
    install_bundle()
    sys.path[:0] = paths
    env["PYTHONPATH"] = os.pathsep.join(paths)
    import pynvml

    if simulate:
        pynvml.create(env["GPU_SIM_STATE"], 80 * GiB, 470 * MiB)
    pynvml.nvmlInit()
    check = Check()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    try:
        v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        reserved: int | None = int(v2.reserved)
    except Exception:
        reserved = None
    cuda = cuda_total(env)
    name = pynvml.nvmlDeviceGetName(handle)
    begin_free = free_memory(pynvml, 0)
    check.record(
        "NVML's and CUDA's totals",
        cuda <= total and (reserved is None or abs(total - reserved - cuda) <= 64 * MiB),
        gpu=str(name),
        simulated=simulate,
        nvml_total=total,
        nvml_reserved=reserved,
        cuda_total=cuda,
        free=begin_free,
    )
    non_kv_step(check, env, simulate)
    start_checks(check, env)
    # Three models per GPU fit, a fourth does not. The stand-in's config says nothing of its
    # shapes, so vllama's estimate is 2.75 GiB (non-torch, the peak's floor, graphs) + KV inside
    # the share, of CUDA's total, + 1 GiB of context outside.
    kv_gib = max(int(total / 3.3 / GiB) - 4, 1)
    config = write_config(folder, PORTS[0], kv_gib)
    log = (folder / "vllama.log").open("wb")
    port = 21434
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
        check.record(
            "three workers hold their shares",
            len(usage) >= 3,
            per_process=sorted(usage.values()),
            kv_gib=kv_gib,
        )
        # vllama's /api/ps comes from its own measurement (NVML); each stand-in counts what it
        # allocated itself (torch) and what its context took: an independent figure.
        own = {pid: standin_account(pid) for pid in usage}
        counted = sum(a["held"] + a["context"] for a in own.values() if a is not None)
        status, ps = http("GET", url + "/api/ps")
        reported = sum(m.get("size_vram", 0) for m in ps.get("models", [])) if status == 200 else 0
        close = counted > 0 and abs(reported - counted) <= 0.05 * counted
        check.record(
            "/api/ps size_vram matches the stand-ins' own count",
            close and None not in own.values(),
            reported=reported,
            standins=counted,
            nvml=sum(usage.values()),
        )
        # /metrics samples memory every 10 s (ops/metrics.py SAMPLE_INTERVAL), off the scrape
        # path: the gauge may lag a load by that much, so wait for it, then hold it to /api/ps.
        scraped = 0.0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            status, metrics = http("GET", url + "/metrics")
            scraped = sum(
                float(line.rsplit(" ", 1)[1])
                for line in str(metrics).splitlines()
                if line.startswith('vllama_device_memory_vllama_bytes{device="gpu:0"}')
            )
            if reported and abs(scraped - reported) <= 0.05 * reported:
                break
            time.sleep(1)
        check.record(
            "/metrics counts vllama's memory on gpu:0 as /api/ps does",
            bool(reported) and abs(scraped - reported) <= 0.05 * reported,
            metrics=scraped,
            ps=reported,
        )
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
        before = set(nvml_usage(pynvml, 0))
        status, _ = http("POST", url + "/v1/completions", {"model": "sleepy", **completion})
        new = sorted(set(nvml_usage(pynvml, 0)) - before)
        pid = new[0] if len(new) == 1 else None
        awake = nvml_usage(pynvml, 0).get(pid or -1, 0)
        account = standin_account(pid) if pid else None
        deadline = time.monotonic() + 30
        while account is not None and account["sleeps"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # keep_alive 5 s: it goes to sleep
            account = standin_account(pid) if pid else None
        asleep = nvml_usage(pynvml, 0).get(pid or -1, 0)
        status, _ = http("POST", url + "/v1/completions", {"model": "sleepy", **completion})
        woken = nvml_usage(pynvml, 0).get(pid or -1, 0)
        after = standin_account(pid) if pid else None
        real_wake = after is not None and after["sleeps"] == 1 and after["wakes"] == 1
        check.record(
            "sleep frees the share, a real wake takes it back",
            status == 200 and real_wake and asleep < awake and woken >= awake * 0.95,
            pid=pid,
            awake=awake,
            asleep=asleep,
            woken=woken,
            standin=after,
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
        code == 0 and not left and end_free >= begin_free - 256 * MiB,
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
    parser.add_argument("--simulate", action="store_true", help="no GPU: the simulated one")
    options = parser.parse_args()
    sys.exit(run(options.out, options.simulate))


if __name__ == "__main__":
    main()
