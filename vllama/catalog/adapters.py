"""LoRA adapters (PEFT folders) that a base model's worker serves beside the base model."""

from __future__ import annotations

from pathlib import Path

from vllama.catalog.files import ModelFormatError, json_object


def adapter_rank(folder: Path) -> int:
    """The LoRA rank of a PEFT adapter folder; `ModelFormatError` when it is not one.

    vLLM needs `--max-lora-rank` at least as large as every adapter's rank, fixed at start.
    """
    config_file = Path(folder) / "adapter_config.json"
    try:
        config = json_object(config_file.read_bytes(), config_file)
    except OSError:
        raise ModelFormatError(f"{folder}: no adapter_config.json, so not a PEFT adapter") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ModelFormatError(f"{folder}: a {config.get('peft_type')} adapter; vLLM serves LoRA")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ModelFormatError(f"{folder}: adapter_config.json has no valid rank `r`")
    if not any(Path(folder).glob("adapter_model.*")):
        raise ModelFormatError(f"{folder}: no adapter_model.safetensors (or .bin)")
    return rank
