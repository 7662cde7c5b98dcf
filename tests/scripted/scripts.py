"""The scripts the scripted test model can be made to say, by name.

A request selects one by putting `marker(name)` in its prompt (the last marker in the rendered
prompt wins, so a marker in the last user message or in a tool result picks the next answer). The
processor forces the script's tokens, then end-of-sequence. Pure data: imported both by the tests,
to know what to expect, and by the vLLM worker's logits processor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

MARKER_RE = re.compile(r"\[\[script:([a-z0-9_]+)\]\]")


def marker(name: str) -> str:
    """What a prompt carries to select the script `name`."""
    if name not in SCRIPTS:
        raise KeyError(name)
    return f"[[script:{name}]]"


def script_in(prompt: str) -> str | None:
    """The name of the last known script marked in `prompt`, if any."""
    names = [name for name in MARKER_RE.findall(prompt) if name in SCRIPTS]
    return names[-1] if names else None


WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
TIME_ARGS = {"timezone": "Europe/Paris"}
JSON_ANSWER = {"capital": "Paris", "country": "France", "population_millions": 2}
REASONING = "The user asks about the sky. Rayleigh scattering favours short wavelengths."
ANSWER = "The sky is blue because air scatters blue light most."
PLAIN = "Hello from the scripted model."
STOP_STRING = "<<END>>"
BEFORE_STOP = "Counting: one, two, three."


def _call(name: str, arguments: Mapping[str, object]) -> str:
    """One call in the hermes format vLLM's hermes parser reads (Qwen's)."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


SCRIPTS: dict[str, str] = {
    "plain": PLAIN,
    "weather_call": _call("get_weather", WEATHER_ARGS),
    "two_calls": _call("get_weather", WEATHER_ARGS) + "\n" + _call("get_time", TIME_ARGS),
    # A template started with enable_thinking already opened <think>: the answer closes it.
    "thinking": f"{REASONING}\n</think>\n\n{ANSWER}",
    # Compact, as a grammar without free whitespace allows it.
    "json": json.dumps(JSON_ANSWER, separators=(",", ":")),
    "stop": f"{BEFORE_STOP}{STOP_STRING} This text must never reach the client.",
}
