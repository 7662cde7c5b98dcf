"""A vLLM (v1) logits processor that makes a model say a script chosen by the prompt.

Loaded by the vLLM worker, never by vllama: a model configured with
`--logits-processors tests.scripted.processor:ScriptedLogitsProcessor` (and this repository on the
worker's PYTHONPATH) runs it for every request. A request whose rendered prompt holds a script
marker (`tests.scripted.scripts.marker`) gets that script's tokens, one per step, then the
end-of-sequence token: every other logit is set to -inf, so sampling settings, penalties and the
weights cannot change the answer. A request with no marker is left to the model.

The marker is read from the prompt's tokens, decoded with the model's own tokenizer, so it works
the same whichever API the request came through (Ollama, OpenAI chat or Responses, Anthropic): all
of them render a chat template that holds the user's text.

vLLM is imported untyped (through importlib): its package is typed, and following it would make
mypy check vLLM itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tests.scripted.scripts import SCRIPTS, script_in

_interface: Any = importlib.import_module("vllm.v1.sample.logits_processor.interface")
_builtin: Any = importlib.import_module("vllm.v1.sample.logits_processor.builtin")


class _Script:
    """One request's forced answer: its tokens, and its live list of output tokens (vLLM keeps
    appending to it), whose length says which token comes next."""

    def __init__(self, tokens: list[int], output: list[int]) -> None:
        self.tokens = tokens
        self.output = output


class ScriptedLogitsProcessor(_interface.LogitsProcessor):  # type: ignore[misc]
    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        from tokenizers import Tokenizer

        folder = Path(vllm_config.model_config.tokenizer)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        eos = vllm_config.model_config.hf_config.eos_token_id
        self._eos: int = eos[0] if isinstance(eos, list) else int(eos)
        # Encoded once each: a script's text as the tokenizer splits it, special tokens (such as
        # <tool_call> and </think>) included as themselves.
        self._scripts = {
            name: list(self._tokenizer.encode(text, add_special_tokens=False).ids)
            for name, text in SCRIPTS.items()
        }
        self._active: dict[int, _Script] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it decides the argmax

    def _start(self, params: Any, prompt: list[int] | None, output: list[int]) -> _Script | None:
        if not prompt:
            return None
        name = script_in(self._tokenizer.decode(prompt, skip_special_tokens=False))
        return None if name is None else _Script(self._scripts[name], output)

    def update_state(self, batch_update: Any) -> None:
        _builtin.process_dict_updates(self._active, batch_update, self._start)

    def apply(self, logits: Any) -> Any:
        for row, script in self._active.items():
            step = len(script.output)
            token = script.tokens[step] if step < len(script.tokens) else self._eos
            logits[row].fill_(float("-inf"))
            logits[row, token] = 0.0
        return logits
