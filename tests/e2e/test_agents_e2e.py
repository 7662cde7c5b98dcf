"""The coding agents people point at a local server, run for real against the session daemon:
Claude Code (`claude -p`, Anthropic's Messages API) and Codex (`codex exec`, the Responses API),
each on the demo `tiny`. Each runs where its CLI is installed (`.ci/run` installs both with npm,
best effort) and skips, saying why, elsewhere.

Every byte they send goes to loopback: the daemon is their only provider, their HOME (and
CODEX_HOME) is the test's own folder, their environment is built from scratch (no key, proxy or
setting of the user's leaks in), and telemetry, updates and other traffic are off. What each sent
is read back from the daemon's access log, and every request must have named `tiny` and got 200.

The settings are the README's ("Agents"): for Claude Code the base URL, a dummy key and
`--model tiny`, nothing more (the flags that keep it off the network aside). It then asks for
thinking as it does of any model (`thinking: {"type": "adaptive"}` and `output_config.effort`,
which vLLM turns into the template's `enable_thinking`), and the demo model closes its thinking
block by itself before it answers, so Claude Code gets text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from tests.processes import kill_group, process_group

pytestmark = pytest.mark.e2e

# The first request may start the model (~60 s on 2 cores); each agent's own run is seconds.
BOUND = 300


def run_agent(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`argv` in its own process group, stdin closed, killed whole if it runs past BOUND (and
    anything it left behind killed when it exits)."""
    with process_group(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=BOUND)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            pytest.fail(f"{argv[0]} ran past {BOUND} s:\n{out[-2000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **extra}


def requests_since(daemon: Daemon, offset: int) -> list[dict[str, Any]]:
    """The daemon's access-log entries written after `offset` (a length of its log)."""
    entries = []
    for line in daemon.log()[offset:].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "request":
            entries.append(entry)
    return entries


def check_requests(entries: list[dict[str, Any]], path: str) -> list[str]:
    """Every inference request named `tiny` and got 200, and `path` was among them; the
    `METHOD path status` list (what the agent sent, for the report on failure)."""
    sent = [f"{e['method']} {e['path']} {e['status']}" for e in entries]
    inference = [e for e in entries if e["path"].startswith("/v1/")]
    assert any(e["path"] == path for e in inference), sent
    for entry in inference:
        assert entry["status"] == 200 and entry["model"] == "tiny", sent
    return sent


# Skipped before the session daemon is asked for: a missing CLI starts nothing.
CLAUDE = shutil.which("claude")
CODEX = shutil.which("codex")


@pytest.mark.skipif(
    CLAUDE is None, reason="Claude Code is not installed (npm install -g @anthropic-ai/claude-code)"
)
def test_claude_code_print_mode_answers_on_tiny(vllama_daemon: Daemon, tmp_path: Path) -> None:
    assert CLAUDE is not None
    env = clean_env(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=vllama_daemon.url,
        ANTHROPIC_API_KEY="unused",
        # Not needed for the answer: these keep every byte on loopback.
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    offset = len(vllama_daemon.log())
    done = run_agent(
        [CLAUDE, "-p", "Say hello in one short sentence.", "--model", "tiny",
         "--output-format", "json"],
        env,
        tmp_path,
    )  # fmt: skip
    sent = check_requests(requests_since(vllama_daemon, offset), "/v1/messages")
    assert done.returncode == 0, (sent, done.stdout[-2000:], done.stderr[-4000:])
    result = json.loads(done.stdout)
    # A finished answer: no error, text, and the turn ended by the model, not a limit.
    assert result["subtype"] == "success" and not result["is_error"], (sent, result)
    assert result["result"].strip(), (sent, result)
    assert result["stop_reason"] == "end_turn", (sent, result)
    assert result["modelUsage"].keys() == {"tiny"}, result


@pytest.mark.skipif(CODEX is None, reason="Codex is not installed (npm install -g @openai/codex)")
def test_codex_exec_answers_on_tiny(vllama_daemon: Daemon, tmp_path: Path) -> None:
    assert CODEX is not None
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        'model = "tiny"\n'
        'model_provider = "vllama"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "read-only"\n'
        "check_for_update_on_startup = false\n"
        "\n"
        "[analytics]\n"
        "enabled = false\n"
        "\n"
        "[model_providers.vllama]\n"
        'name = "vllama"\n'
        f'base_url = "{vllama_daemon.url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "VLLAMA_CODEX_KEY"\n'
    )
    env = clean_env(tmp_path / "home", CODEX_HOME=str(codex_home), VLLAMA_CODEX_KEY="unused")
    last = tmp_path / "last-message.txt"
    offset = len(vllama_daemon.log())
    done = run_agent(
        [CODEX, "exec", "--strict-config", "--skip-git-repo-check",
         "--output-last-message", str(last), "Say hello in one short sentence."],
        env,
        tmp_path,
    )  # fmt: skip
    sent = check_requests(requests_since(vllama_daemon, offset), "/v1/responses")
    assert done.returncode == 0, (sent, done.stdout[-2000:], done.stderr[-4000:])
    assert last.read_text().strip(), (sent, done.stderr[-4000:])
    assert done.stdout.strip(), (sent, done.stderr[-4000:])  # the answer, printed
