"""A Llama model with random weights of a chosen size, built locally from the demo's tokenizer:
for benchmarks where the weights' size matters (reading them cold, `benchmarks/switch.py
--model wide`). Its answers are noise; its start reads as many bytes as a real model's would.

Usage: .venv/bin/python benchmarks/wide_model.py [--mb 600] [--dest .cache/bench-models]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vllama.demo.build import ensure_demo_models  # noqa: E402

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 1024, 2816, 16, 4
COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


def layers_for(megabytes: int, vocab: int) -> int:
    """fp32 layers that bring the weights to about `megabytes`."""
    head_dim = HIDDEN // HEADS
    attention = HIDDEN * HIDDEN * 2 + 2 * HIDDEN * KV_HEADS * head_dim
    per_layer = 4 * (attention + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN)
    embeddings = 4 * 2 * vocab * HIDDEN
    return max(1, round((megabytes * 1e6 - embeddings) / per_layer))


def build(megabytes: int, dest: Path) -> Path:
    """The model's folder (built once per size)."""
    folder = dest / f"vllama-wide-{megabytes}mb"
    done = folder / ".complete"
    if done.is_file():
        return folder
    import torch

    transformers: Any = importlib.import_module("transformers")  # untyped

    demo = ensure_demo_models(REPO / ".cache" / "test-models")["chat"]
    base = json.loads((demo / "config.json").read_text())
    config = transformers.LlamaConfig(
        **{
            **base,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HIDDEN // HEADS,
            "num_hidden_layers": layers_for(megabytes, int(base["vocab_size"])),
            "attention_bias": False,
            "max_position_embeddings": 4096,
        }
    )
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    for name in COPIED:
        shutil.copy(demo / name, folder / name)
    done.write_text("built\n")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=600)
    parser.add_argument("--dest", type=Path, default=REPO / ".cache" / "bench-models")
    options = parser.parse_args()
    print(build(options.mb, options.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
