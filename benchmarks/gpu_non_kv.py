"""A torch stand-in for Llama-3.1-8B's memory besides its KV cache, against vllama's estimate.

vLLM 0.32 sizes its KV cache as the share less what it measured beside it
(`v1/worker/gpu_worker.py` `determine_available_memory`): the weights, the profile run's transient
peak, the non-torch memory that grew since its snapshot (cuBLAS and attention workspaces) and the
CUDA-graph pool. vllama estimates each of those before a model's first start
(`vllama/scheduling/sizing.py`); this script takes them for real, in vLLM's order, and puts
the figures beside that estimate, called for the same model and arguments:

1. the weights: Llama-3.1-8B's tensors in bf16 as vLLM lays them out (fused qkv and gate-up);
2. the profile run (`gpu_model_runner.py` `profile_run`): one prefill of `max_num_batched_tokens`
   through every layer, then the sampler over `max_num_seqs` rows of the vocabulary (logits in
   fp32, the top-k/top-p sort with its int64 indices, softmax, the exponential draw), as
   `_dummy_sampler_run` does. The profile run passes no attention metadata, so vLLM computes
   no attention there: here the attention's output is its query, the same shape. Activations
   are freed layer by layer, so the peak is one layer's plus the residual; all 32 are run
   anyway (about 130 TFLOP, little for a GPU; not yet timed), so nothing rests on that. Norm
   and SiLU-and-mul are torch's unfused ops: a little above vLLM's fused kernels, the safe side;
3. CUDA graphs for a few decode sizes (largest first, one shared pool, as vLLM captures), each
   the model's forward for that many tokens; vLLM captures about 67 sizes up to 512, so the
   pool measured here is a floor on vLLM's (the largest size's intermediates dominate it);
4. torch's peak (`max_memory_allocated`, `max_memory_reserved`) and the non-torch memory: NVML's
   used less torch's reserved, after the CUDA context (outside the share) and at the end.

It runs in its own process, so its CUDA context leaves with it (gpu_check.py's later steps count
every process on the GPU). `--simulate` runs the same code on CPU torch, every dimension divided
by 16, with a meter that follows each tensor's storage and the process's resident memory for
NVML's: it proves the script, not the numbers, and its report says `"simulated": true`.

Usage: python benchmarks/gpu_non_kv.py [--simulate]   (prints the JSON report)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllama.catalog.facts import ModelFacts, kv_bytes_per_token, profile_shapes
from vllama.config.settings import ModelSpec
from vllama.scheduling import sizing

# meta-llama/Llama-3.1-8B's config.json, the fields vllama and this script read.
LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
SIM_DIVISOR = 16  # --simulate: every size divided by this (head_dim kept), on CPU
MAX_MODEL_LEN = 8192  # fixed in the estimate's arguments, so its KV target is exact
DECODE_SIZES = (512, 256, 64, 8, 1)  # captured largest first; vLLM's largest is 512 by default


def scaled(config: dict[str, Any], divisor: int) -> dict[str, Any]:
    heads = max(config["num_attention_heads"] // divisor, 1)
    return {
        **config,
        "hidden_size": heads * config["head_dim"],
        "intermediate_size": config["intermediate_size"] // divisor,
        "num_hidden_layers": max(config["num_hidden_layers"] // divisor, 1),
        "num_attention_heads": heads,
        "num_key_value_heads": max(config["num_key_value_heads"] // divisor, 1),
        "vocab_size": config["vocab_size"] // divisor,
    }


class Meter:
    """One device's memory as torch and the driver see it."""

    simulated = False

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        index = int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.device = torch.device("cuda", 0)
        self.name = str(pynvml.nvmlDeviceGetName(self._handle))

    def used(self) -> int:
        """The device's used memory by NVML: all processes', so the GPU must be otherwise idle."""
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def open_context(self) -> None:
        torch.empty(1, device=self.device)
        torch.cuda.synchronize()

    def total(self) -> int:
        return int(torch.cuda.mem_get_info(self.device)[1])

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))

    def reserved(self) -> int:
        return int(torch.cuda.memory_reserved(self.device))

    def peaks(self) -> tuple[int, int]:
        torch.cuda.synchronize()
        return (
            int(torch.cuda.max_memory_allocated(self.device)),
            int(torch.cuda.max_memory_reserved(self.device)),
        )

    def reset_peak(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)

    def release_cache(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def capture(self, sizes: tuple[int, ...], step: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """Each size's step as a CUDA graph, in one pool, after an eager warm-up as vLLM does."""
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        for size in sizes:
            tokens = torch.zeros(size, dtype=torch.long, device=self.device)
            step(tokens)  # warm-up: cuBLAS picks its kernels outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                output = step(tokens)
            graphs.append((graph, tokens, output))
        torch.cuda.synchronize()
        return graphs


class SimMeter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """CPU torch with a count of every tensor storage alive (torch's allocations) and the
    process's resident memory for NVML's used: no caching allocator, so reserved = allocated."""

    simulated = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.device = torch.device("cpu")
        self.name = "simulated (CPU torch)"
        self._live: dict[int, int] = {}
        self._now = 0
        self._peak = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf)
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._live or storage.nbytes() == 0:
            return
        self._live[key] = storage.nbytes()
        self._now += storage.nbytes()
        self._peak = max(self._peak, self._now)
        # A storage's Python object lives as long as the storage (views included).
        weakref.finalize(storage, self._drop, key)

    def _drop(self, key: int) -> None:
        self._now -= self._live.pop(key, 0)

    def used(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def open_context(self) -> None:
        pass

    def total(self) -> int:
        return 80 * sizing.GiB

    def allocated(self) -> int:
        return self._now

    def reserved(self) -> int:
        return self._now

    def peaks(self) -> tuple[int, int]:
        return self._peak, self._peak

    def reset_peak(self) -> None:
        self._peak = self._now

    def release_cache(self) -> None:
        pass  # CPU tensors go back to the process's allocator when freed

    def capture(self, sizes: tuple[int, ...], step: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """No graphs on a CPU: each size's step runs once and its static buffers are kept."""
        kept = []
        for size in sizes:
            tokens = torch.zeros(size, dtype=torch.long, device=self.device)
            kept.append((tokens, step(tokens)))
        return kept


@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shapes:
        return cls(
            config["num_hidden_layers"],
            config["hidden_size"],
            config["intermediate_size"],
            config["num_attention_heads"],
            config["num_key_value_heads"],
            config["head_dim"],
            config["vocab_size"],
            config["rms_norm_eps"],
        )


class Model:
    """Llama's decoder in bf16 with vLLM's fused layouts; attention's compute left out (above)."""

    def __init__(self, shapes: Shapes, device: torch.device) -> None:
        self.s = shapes
        qkv = (shapes.heads + 2 * shapes.kv_heads) * shapes.head_dim

        def weight(*size: int) -> torch.Tensor:
            return torch.empty(size, dtype=torch.bfloat16, device=device).normal_(std=0.02)

        self.embed = weight(shapes.vocab, shapes.hidden)
        self.layers = [
            {
                "input_norm": weight(shapes.hidden),
                "qkv": weight(qkv, shapes.hidden),
                "o": weight(shapes.hidden, shapes.heads * shapes.head_dim),
                "post_norm": weight(shapes.hidden),
                "gate_up": weight(2 * shapes.intermediate, shapes.hidden),
                "down": weight(shapes.hidden, shapes.intermediate),
            }
            for _ in range(shapes.layers)
        ]
        self.norm = weight(shapes.hidden)
        self.lm_head = weight(shapes.vocab, shapes.hidden)

    def weight_bytes(self) -> int:
        tensors = [
            self.embed,
            self.norm,
            self.lm_head,
            *(t for x in self.layers for t in x.values()),
        ]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.s.eps)).to(x.dtype) * w

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q_size = self.s.heads * self.s.head_dim
        hidden = self.embed[tokens]
        for layer in self.layers:
            qkv = self._norm(hidden, layer["input_norm"]) @ layer["qkv"].t()
            hidden = hidden + qkv[:, :q_size] @ layer["o"].t()  # attention out: its query's shape
            gate, up = (self._norm(hidden, layer["post_norm"]) @ layer["gate_up"].t()).chunk(2, -1)
            hidden = hidden + (torch.nn.functional.silu(gate) * up) @ layer["down"].t()
        return self._norm(hidden, self.norm)

    def sample(self, hidden: torch.Tensor) -> torch.Tensor:
        """vLLM's sampler with top-k and top-p on every row (`_dummy_sampler_run`'s metadata):
        fp32 logits, the sort, the masks, softmax, an exponential draw."""
        logits = (hidden @ self.lm_head.t()).float()
        logits.div_(0.5)  # temperature
        values, indices = logits.sort(dim=-1, descending=False)
        top_k = values.gather(1, torch.full_like(indices[:, :1], 1))  # keep vocab - 1
        values.masked_fill_(values < top_k, -float("inf"))
        cumulative = values.softmax(dim=-1).cumsum_(dim=-1)
        values.masked_fill_(cumulative <= 1 - 0.9, -float("inf"))
        del cumulative
        logits = values.scatter(dim=-1, index=indices, src=values)
        del values, indices
        probs = logits.softmax(dim=-1)
        draw = torch.empty_like(probs).exponential_()
        return probs.div_(draw).argmax(dim=-1)


@dataclass(frozen=True)
class Run:
    """What the stand-in ran: the model's config and vLLM's batch limits."""

    config: dict[str, Any]
    max_num_seqs: int
    max_num_batched_tokens: int
    decode_sizes: tuple[int, ...]

    def spec(self) -> ModelSpec:
        """The same model and arguments, as vllama would start them."""
        args = (
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-num-batched-tokens",
            str(self.max_num_batched_tokens),
        )
        return ModelSpec(model="standin/Llama-3.1-8B", args=args)


def plan(simulate: bool, cuda_total: int) -> Run:
    """On a GPU, the full model at vLLM's default batch limits for this GPU's size (vllama's
    table of them); simulated, every size divided by `SIM_DIVISOR`."""
    batch = sizing.default_batch(cuda_total)
    if not simulate:
        return Run(LLAMA_31_8B, batch.max_num_seqs, batch.max_num_batched_tokens, DECODE_SIZES)
    seqs = batch.max_num_seqs // SIM_DIVISOR
    sizes = tuple(sorted({max(s // SIM_DIVISOR, 1) for s in DECODE_SIZES}, reverse=True))
    return Run(
        scaled(LLAMA_31_8B, SIM_DIVISOR), seqs, batch.max_num_batched_tokens // SIM_DIVISOR, sizes
    )


def vllama_estimate(run: Run, weight_bytes: int, cuda_total: int) -> dict[str, int]:
    """vllama's own estimate for this model and these arguments: what its share holds besides
    the KV cache, whole and by part."""
    config = run.config
    facts = ModelFacts(
        weight_bytes=weight_bytes,
        kv_bytes_per_token=kv_bytes_per_token(config),
        context_length=config["max_position_embeddings"],
        **profile_shapes(config),
    )
    spec = run.spec()
    planned = sizing.estimate(spec, facts, "gpu", 0, cuda_total)
    kv = sizing.kv_target(spec, facts, 0)
    batch = sizing.Batch(run.max_num_seqs, run.max_num_batched_tokens)
    return {
        "share": planned.share,
        "kv": kv,
        "non_kv": planned.share - kv,
        "weights": facts.weight_bytes,
        "profile_peak": sizing.profile_peak(facts, batch),
        "non_torch": sizing.NON_TORCH,
        "graphs": planned.graphs,
        "outside": planned.outside,
    }


def ratio(measured: int, estimated: int) -> float | None:
    return round(measured / estimated, 4) if estimated else None


def measure(meter: Meter | SimMeter, run: Run) -> dict[str, Any]:
    """Take the memory vLLM takes, in its order, with each part's figure."""
    begin = time.monotonic()
    before_context = meter.used()
    meter.open_context()
    context = meter.used() - before_context  # outside the share
    cuda_total = meter.total()
    # vLLM's snapshot: what is not torch's after the context, before the weights.
    non_torch_start = meter.used() - meter.reserved()
    model = Model(Shapes.of(run.config), meter.device)
    weights = meter.allocated()
    meter.reset_peak()
    with torch.no_grad():
        # The profile run: a prefill of max_num_batched_tokens, then the sampler over
        # max_num_seqs rows (the last token of each request).
        tokens = torch.randint(
            run.config["vocab_size"], (run.max_num_batched_tokens,), device=meter.device
        )
        hidden = model.forward(tokens)
        rows = hidden[-run.max_num_seqs :].clone()  # vLLM keeps both through the sampler
        prefill_peak = meter.peaks()[0] - weights
        model.sample(torch.rand_like(rows))
        del rows, hidden
        peak_allocated, peak_reserved = meter.peaks()
        profile_peak = peak_allocated - weights
        meter.release_cache()  # as vLLM after its profile run: the pool's freed blocks go back
        reserved_before_graphs = meter.reserved()
        used_before_graphs = meter.used()
        graphs = meter.capture(run.decode_sizes, model.forward)
        graph_pool = meter.reserved() - reserved_before_graphs
        graph_device = meter.used() - used_before_graphs
    used_end, reserved_end = meter.used(), meter.reserved()
    non_torch_end = used_end - reserved_end
    non_torch_growth = max(non_torch_end - non_torch_start, 0)
    taken = {
        "weights": weights,
        "profile_peak": profile_peak,
        "prefill_peak": prefill_peak,
        "non_torch": non_torch_growth,
        "graphs": max(graph_pool, graph_device),
    }
    # What vLLM takes from the share besides the KV cache, the same parts the estimate adds.
    taken["non_kv"] = weights + profile_peak + non_torch_growth + taken["graphs"]
    estimate = vllama_estimate(run, model.weight_bytes(), cuda_total)
    del graphs, model
    return {
        "simulated": meter.simulated,
        "device": meter.name,
        "model": "Llama-3.1-8B" + (f" / {SIM_DIVISOR}" if meter.simulated else ""),
        "config": run.config,
        "args": list(run.spec().args),
        "decode_sizes": list(run.decode_sizes),
        "cuda_total": cuda_total,
        "torch": {
            "max_memory_allocated": peak_allocated,
            "max_memory_reserved": peak_reserved,
            "reserved_end": reserved_end,
            "graph_pool_reserved": graph_pool,
        },
        # NVML's used (simulated: resident memory) less torch's reserved.
        "non_torch": {"after_context": non_torch_start, "end": non_torch_end},
        "nvml": {"context": context, "used_end": used_end, "graphs": graph_device},
        "measured": taken,
        "estimate": estimate,
        "ratio": {part: ratio(taken[part], estimate[part]) for part in estimate if part in taken},
        "within_estimate": taken["non_kv"] <= estimate["non_kv"],
        "seconds": round(time.monotonic() - begin, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="CPU torch, sizes / 16")
    options = parser.parse_args()
    if options.simulate:
        with SimMeter() as meter:
            report = measure(meter, plan(True, meter.total()))
    else:
        cuda = Meter()
        report = measure(cuda, plan(False, int(torch.cuda.mem_get_info(0)[1])))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
