"""The `vllama` client commands: formatting (pure functions) and the CLI end to end, as a
subprocess against a real `vllama serve` whose workers are fake vLLM servers."""

from __future__ import annotations

import io
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.component.fakes import worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND, LONG_LIVED, SESSION_MARK, assert_no_leftovers
from tests.daemon import VLLAMA, Daemon, free_port, write_config
from tests.processes import default_sigint
from vllama import __version__
from vllama.cli.client import DEFAULT_URL, daemon_url, error_message
from vllama.cli.commands import (
    ONE_SHOT_MAX_TOKENS,
    context_length,
    one_shot_limit,
    parse_parameters,
)
from vllama.cli.format import (
    format_table,
    go_duration,
    human_bytes,
    human_duration,
    human_time,
    list_rows,
    parse_time,
    processor_text,
    ps_rows,
    show_text,
    until_text,
    verbose_stats,
)
from vllama.cli.interactive import ProgressPrinter, chat_loop, progress_line, read_message
from vllama.cli.main import parse

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
TOKENS = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "  # the fake's 8 default tokens

# -- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (999_999, "999 KB"),
        (1_800_000, "1.8 MB"),
        (10_500_000, "10.5 MB"),
        (1_234_567_890, "1.2 GB"),
        (4_700_000_000, "4.7 GB"),
        (1_500_000_000_000, "1.5 TB"),
        (1_999_999_999_999, "2.0 TB"),
    ],
)
def test_human_bytes_as_ollama(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (150, "2 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (90 * 86400, "3 months"),
        (3 * 365 * 86400, "3 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_relative_times_and_until() -> None:
    assert human_time(NOW - timedelta(minutes=2, seconds=5), NOW) == "2 minutes ago"
    assert human_time(NOW + timedelta(minutes=4, seconds=30), NOW) == "4 minutes from now"
    assert human_time(None, NOW) == "Never"
    forever = datetime(2318, 1, 1, tzinfo=UTC)  # how the daemon writes keep_alive < 0
    assert human_time(forever, NOW) == "Forever"
    assert until_text(forever, NOW) == "Forever"
    assert until_text(NOW + timedelta(minutes=4, seconds=59), NOW) == "4 minutes from now"
    assert until_text(NOW - timedelta(seconds=1), NOW) == "Stopping..."
    assert human_time(NOW + timedelta(days=365 * 15), NOW) == "15 years from now"


def test_parse_time_accepts_the_api_forms() -> None:
    assert parse_time("2025-06-01T12:00:00Z") == NOW
    assert parse_time("2025-06-01T12:00:00.123456789Z") == NOW + timedelta(microseconds=123456)
    assert parse_time("2025-06-01T14:00:00+02:00") == NOW
    assert parse_time("0001-01-01T00:00:00Z") is None  # Go's zero time
    assert parse_time("") is None
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


@pytest.mark.parametrize(
    ("size", "vram", "text"),
    [
        (1000, 0, "100% CPU"),
        (1000, 1000, "100% GPU"),
        (1000, 520, "48%/52% CPU/GPU"),
        (1000, 995, "1%/99% CPU/GPU"),  # rounded as Ollama (half away from zero)
        (1000, 1500, "Unknown"),
        (0, 5, "Unknown"),
    ],
)
def test_processor_share(size: int, vram: int, text: str) -> None:
    assert processor_text(size, vram) == text


def test_table_layout_is_ollamas() -> None:
    table = format_table(["NAME", "ID", "SIZE"], [["llama3.2:latest", "a80c4f17acd5", "2.0 GB"]])
    assert table == (
        "NAME               ID              SIZE\nllama3.2:latest    a80c4f17acd5    2.0 GB"
    )
    assert format_table(["NAME", "ID"], []) == "NAME    ID"


def test_list_and_ps_rows() -> None:
    tags = [
        {
            "name": "tiny:latest",
            "digest": "sha256:0123456789abcdef",
            "size": 4_700_000_000,
            "modified_at": "2025-06-01T11:58:00Z",
        },
        {"name": "other:latest", "digest": "", "size": 0, "modified_at": "2025-06-01T11:00:00Z"},
    ]
    assert list_rows(tags, NOW) == [
        ["tiny:latest", "0123456789ab", "4.7 GB", "2 minutes ago"],
        ["other:latest", "", "0 B", "About an hour ago"],
    ]
    assert [row[0] for row in list_rows(tags, NOW, "TI")] == ["tiny:latest"]
    ps = [
        {
            "name": "tiny:latest",
            "digest": "fedcba9876543210",
            "size": 1_800_000,
            "size_vram": 0,
            "context_length": 4096,
            "expires_at": "2025-06-01T12:04:30Z",
        }
    ]
    assert ps_rows(ps, NOW) == [
        ["tiny:latest", "fedcba987654", "1.8 MB", "100% CPU", "4096", "4 minutes from now"]
    ]


SHOW = {
    "modelfile": "FROM org/model\n",
    "parameters": 'temperature                    0.2\nstop                           "<|end|>"',
    "template": "{{ messages }}",
    "system": "You are terse.\nSecond line.\nThird line.",
    "details": {"family": "llama", "parameter_size": "1.2B", "quantization_level": "BF16"},
    "model_info": {
        "general.architecture": "llama",
        "general.parameter_count": 1_200_000_000,
        "llama.context_length": 131072,
        "llama.embedding_length": 2048,
    },
    "capabilities": ["completion", "tools"],
}


def test_show_sections() -> None:
    assert show_text(SHOW) == (
        "  Model\n"
        "    architecture        llama\n"
        "    parameters          1.2B\n"
        "    context length      131072\n"
        "    embedding length    2048\n"
        "    quantization        BF16\n"
        "\n"
        "  Capabilities\n"
        "    completion\n"
        "    tools\n"
        "\n"
        "  Parameters\n"
        "    temperature    0.2\n"
        '    stop           "<|end|>"\n'
        "\n"
        "  System\n"
        "    You are terse.\n"
        "    Second line.\n"
        "    ...\n"
    )
    verbose = show_text(SHOW, verbose=True)
    assert "  Metadata\n" in verbose and "    general.parameter_count    1200000000" in verbose


def test_show_without_model_files() -> None:
    # A model the daemon has no files for: no architecture, the context length under "general".
    info = {"details": {"family": ""}, "model_info": {"general.context_length": 4096}}
    text = show_text(info)
    assert "    context length    4096" in text
    assert "Capabilities" not in text and "System" not in text


def test_go_durations_and_verbose_stats() -> None:
    assert go_duration(0) == "0s"
    assert go_duration(999) == "999ns"
    assert go_duration(12_345) == "12.345µs"
    assert go_duration(230_100_000) == "230.1ms"
    assert go_duration(1_500_000_000) == "1.5s"
    assert go_duration(62_000_000_000) == "1m2s"
    assert go_duration(3_600_000_000_000) == "1h0m0s"
    final = {
        "done": True,
        "total_duration": 1_500_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 10,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 8,
        "eval_duration": 400_000_000,
    }
    assert verbose_stats(final) == (
        "total duration:       1.5s\n"
        "load duration:        1ms\n"
        "prompt eval count:    10 token(s)\n"
        "prompt eval duration: 100ms\n"
        "prompt eval rate:     100.00 tokens/s\n"
        "eval count:           8 token(s)\n"
        "eval duration:        400ms\n"
        "eval rate:            20.00 tokens/s"
    )
    assert verbose_stats({"done": True}) == ""


def test_parse_parameters() -> None:
    parameters = parse_parameters(
        ["temperature=0.2", "num_ctx=4096", "stop=<|eot|>", 'stop="\\n"', "seed=-1", "x=true"]
    )
    assert parameters == {
        "temperature": 0.2,
        "num_ctx": 4096,
        "stop": ["<|eot|>", "\n"],
        "seed": -1,
        "x": True,
    }
    assert parse_parameters(["stop=1"]) == {"stop": ["1"]}  # stop strings stay strings
    assert parse_parameters(["top_k=1", "top_k=2"]) == {"top_k": 2}
    assert parse_parameters(["a=[1, 2]"]) == {"a": "[1, 2]"}  # scalars only
    with pytest.raises(ValueError, match="key=value"):
        parse_parameters(["temperature"])


def test_progress_lines() -> None:
    assert progress_line("pulling a", 0, 2_000_000_000) == (
        "pulling a   0% ▕                    ▏ 0 B/2 GB"
    )
    assert progress_line("pulling a", 1_000_000_000, 2_000_000_000).startswith(
        "pulling a  50% ▕██████████          ▏ 1 GB/2 GB"
    )
    updates: list[dict[str, Any]] = [
        {"status": "pulling manifest"},
        {"status": "pulling config.json", "digest": "", "total": 700, "completed": 0},
        {"status": "pulling config.json", "digest": "", "total": 700, "completed": 300},
        {"status": "pulling config.json", "digest": "", "total": 700, "completed": 310},
        {"status": "pulling config.json", "digest": "", "total": 700, "completed": 700},
        {"status": "writing manifest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    plain = io.StringIO()
    printer = ProgressPrinter(plain, tty=False)
    for update in updates:
        printer.update(update)
    printer.finish()
    assert plain.getvalue().splitlines() == [
        "pulling manifest",
        "pulling config.json   0% ▕                    ▏ 0 B/700 B",
        "pulling config.json  42% ▕████████            ▏ 300 B/700 B",  # 310 B: the same tenth
        "pulling config.json 100% ▕████████████████████▏ 700 B/700 B",
        "writing manifest",
        "success",
    ]
    terminal = io.StringIO()
    printer = ProgressPrinter(terminal, tty=True)
    for update in updates:
        printer.update(update)
    printer.finish()
    text = terminal.getvalue()
    assert text.count("\n") == 4  # one line per status or file, each redrawn in place
    assert "\rpulling config.json 100%" in text and text.endswith("\rsuccess\x1b[K\n")


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (None, DEFAULT_URL),
        ("", DEFAULT_URL),
        ("example.com", "http://example.com:11434"),
        ("example.com:8080", "http://example.com:8080"),
        ("http://example.com:8080/", "http://example.com:8080"),
        ("https://example.com", "https://example.com:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:9000", "http://127.0.0.1:9000"),
        (":9000", "http://127.0.0.1:9000"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("::", "http://[::1]:11434"),
    ],
)
def test_daemon_url(value: str | None, url: str) -> None:
    assert daemon_url(value) == url


def test_daemon_url_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="VLLAMA_HOST"):
        daemon_url("ftp://x")
    with pytest.raises(ValueError, match="VLLAMA_HOST"):
        daemon_url("host:notaport")


def test_error_messages() -> None:
    assert error_message(404, b'{"error": "model \'x\' not found"}') == "model 'x' not found"
    assert error_message(400, b'{"error": {"message": "bad", "type": "x"}}') == "bad"
    assert error_message(500, b"boom\n") == "boom"
    assert error_message(502, b"") == "HTTP 502"


def scripted(lines: list[str]) -> Any:
    feed = iter(lines)
    prompts: list[str] = []

    def read_line(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    read_line.prompts = prompts  # type: ignore[attr-defined]
    return read_line


def test_chat_loop_keeps_and_clears_the_conversation() -> None:
    sent: list[list[dict[str, Any]]] = []

    def send(messages: list[dict[str, Any]]) -> str:
        sent.append([dict(m) for m in messages])
        return f"answer{len(sent)}"

    out = io.StringIO()
    read_line = scripted(["hi", "", "again", "/clear", "/nope", "fresh", "/bye", "never"])
    assert chat_loop(read_line, send, out) == 0
    assert sent == [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "answer1"},
            {"role": "user", "content": "again"},
        ],
        [{"role": "user", "content": "fresh"}],
    ]
    assert "Cleared session context" in out.getvalue()
    assert "Unknown command '/nope'" in out.getvalue()
    assert set(read_line.prompts) == {">>> "}
    # End of input leaves too.
    assert chat_loop(scripted(["hi"]), send, io.StringIO()) == 0


def test_multiline_messages() -> None:
    assert read_message(scripted(['"""first', "second", 'third"""'])) == "first\nsecond\nthird"
    assert read_message(scripted(['"""one line"""'])) == "one line"
    assert read_message(scripted(["plain"])) == "plain"


# -- the CLI against a daemon ------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, with a fake model `tiny` (8 tokens an answer, then its end of
    sequence), a fake embedding model `tiny-embed` (its folder's config.json says BERT) and
    `runaway`, a fake model that never ends an answer by itself (a 64-token context)."""
    started = time.time() - 1
    folder = tmp_path_factory.mktemp("cli")
    (folder / "hf-cache").mkdir()
    embedder = folder / "embedder"
    embedder.mkdir()
    (embedder / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    config = write_config(
        folder / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "stop_timeout": 3,
            "models_dir": str(folder / "models"),
            **worker_ports(),
        },
        {
            "tiny": {"model": "fake/tiny", "env": {"FAKE_VLLM_EOS": "1"}},
            "tiny-embed": {"model": str(embedder)},
            "runaway": {"model": "fake/runaway", "args": ["--max-model-len", "64"]},
        },
    )
    with pytest.MonkeyPatch.context() as patch:  # only the daemon's environment
        patch.setenv("HF_HUB_CACHE", str(folder / "hf-cache"))  # no models but configured ones
        patch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # no network for pulls
        patch.delenv("VLLAMA_HOST", raising=False)
        daemon = Daemon(config, free_port(), folder / "vllama.log")
    LONG_LIVED.add(daemon.proc.pid)
    try:
        with daemon:
            yield daemon
    finally:
        LONG_LIVED.discard(daemon.proc.pid)
        assert_no_leftovers(started)


def vllama(
    url: str, *args: str, stdin: str | None = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`vllama ARGS` with VLLAMA_HOST=url; stdin is a pipe with `stdin` in it (never a tty)."""
    # The session's mark, so the leak check (tests/conftest.py) would catch a CLI left running.
    env = {**os.environ, "VLLAMA_HOST": url, "TEST_VLLAMA_SESSION": SESSION_MARK}
    return subprocess.run(
        [*VLLAMA, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def running(url: str) -> list[str]:
    return [str(m["name"]) for m in httpx.get(url + "/api/ps", timeout=10).json()["models"]]


def test_run_with_a_prompt_streams_the_answer(daemon: Daemon) -> None:
    assert ok(vllama(daemon.url, "run", "tiny", "Hello", "there")) == TOKENS + "\n"


def test_run_reads_the_prompt_from_stdin_and_prints_stats(daemon: Daemon) -> None:
    result = vllama(daemon.url, "run", "tiny", "--verbose", stdin="Why is the sky blue?\n")
    assert ok(result) == TOKENS + "\n"
    assert "eval count:           8 token(s)" in result.stderr
    assert "total duration:" in result.stderr and "eval rate:" in result.stderr


def test_run_with_an_empty_prompt_only_loads(daemon: Daemon) -> None:
    vllama(daemon.url, "stop", "tiny")
    assert ok(vllama(daemon.url, "run", "tiny", "")) == ""
    assert "tiny:latest" in running(daemon.url)


def test_a_one_shot_run_of_a_model_that_never_stops_is_cut_and_says_so(daemon: Daemon) -> None:
    # Issue 20: `vllama run tiny "hello"` printed the model's whole context. A one-shot answer
    # stops at ONE_SHOT_MAX_TOKENS or half the context (here 32 of 64), or at --max-tokens.
    result = vllama(daemon.url, "run", "runaway", "hello")
    assert ok(result) == "".join(f"tok{i} " for i in range(32)) + "\n"
    assert "stopped at the 32-token limit" in result.stderr
    result = vllama(daemon.url, "run", "runaway", "--max-tokens", "5", "hello")
    assert ok(result) == "tok0 tok1 tok2 tok3 tok4 \n"
    assert "stopped at the 5-token limit: --max-tokens N raises it" in result.stderr
    # A model that ends its answer itself says nothing about a limit; 0 asks for none.
    for argv in (["run", "tiny", "hi"], ["run", "tiny", "--max-tokens", "0", "hi"]):
        result = vllama(daemon.url, *argv)
        assert ok(result) == TOKENS + "\n" and "limit" not in result.stderr


@pytest.mark.parametrize(
    ("max_tokens", "context", "limit"),
    [
        (None, None, None),
        (None, 64, 32),
        (None, 1, 1),
        (None, 131072, ONE_SHOT_MAX_TOKENS),
        (7, None, 7),
        (7, 4, 7),
        (0, 64, None),
        (-1, 64, None),
    ],
)
def test_one_shot_limit(max_tokens: int | None, context: int | None, limit: int | None) -> None:
    assert one_shot_limit(max_tokens, context) == limit


def test_context_length_from_show() -> None:
    assert context_length({"model_info": {"qwen3.context_length": 40960}}) == 40960
    assert context_length({"model_info": {"general.architecture": "x"}}) is None
    assert context_length({}) is None


def test_run_an_unknown_model_fails(daemon: Daemon) -> None:
    result = vllama(daemon.url, "run", "nope", "hi")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: model 'nope' not found"


def test_ps_lists_the_running_model(daemon: Daemon) -> None:
    ok(vllama(daemon.url, "run", "tiny", "hi"))
    lines = ok(vllama(daemon.url, "ps")).splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    (row,) = [line for line in lines[1:] if line.startswith("tiny:latest ")]
    assert "100% CPU" in row
    assert row.endswith("from now")


def test_ps_watch_redraws_on_a_load_until_ctrl_c(daemon: Daemon) -> None:
    vllama(daemon.url, "stop", "tiny")
    env = {**os.environ, "VLLAMA_HOST": daemon.url, "TEST_VLLAMA_SESSION": SESSION_MARK}
    watch = subprocess.Popen(
        [*VLLAMA, "ps", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,  # Ctrl-C as in a terminal
    )
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().split() == [
            "NAME",
            "ID",
            "SIZE",
            "PROCESSOR",
            "CONTEXT",
            "UNTIL",
        ]
        ok(vllama(daemon.url, "run", "tiny", ""))  # a load: the next tables list it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if watch.stdout.readline().startswith("tiny:latest "):
                break
        else:
            raise AssertionError("the watch never showed the loaded model")
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)


def test_list_shows_configured_models(daemon: Daemon) -> None:
    lines = ok(vllama(daemon.url, "list")).splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(line.startswith("tiny:latest ") for line in lines[1:])
    # The same listing, but for the MODIFIED column's "N seconds ago", which may tick between
    # the two commands (it did, on a loaded host).
    assert ago(ok(vllama(daemon.url, "ls"))) == ago("\n".join(lines) + "\n")


def ago(listing: str) -> str:
    return re.sub(r"\b\d+ (second|minute|hour)s? ago\b", "(time) ago", listing)


def test_show(daemon: Daemon) -> None:
    text = ok(vllama(daemon.url, "show", "tiny"))
    assert text.startswith("  Model\n    architecture")
    assert "    quantization" in text
    assert ok(vllama(daemon.url, "show", "tiny", "--modelfile")).startswith("FROM fake/tiny\n")
    result = vllama(daemon.url, "show", "nope")
    assert (result.returncode, result.stderr) == (1, "Error: model 'nope' not found\n")


def test_stop_unloads_the_model(daemon: Daemon) -> None:
    ok(vllama(daemon.url, "run", "tiny", "hi"))
    assert "tiny:latest" in running(daemon.url)
    assert ok(vllama(daemon.url, "stop", "tiny")) == ""
    assert "tiny:latest" not in running(daemon.url)
    assert "tiny:latest" not in ok(vllama(daemon.url, "ps"))
    result = vllama(daemon.url, "stop", "nope")
    assert result.returncode == 1
    assert result.stderr == 'Error: couldn\'t find model "nope" to stop\n'


def test_stop_unloads_an_embedding_model(daemon: Daemon) -> None:
    # Issue 20: `vllama stop tiny-embed` said "does not support generate".
    loaded = httpx.post(daemon.url + "/api/embed", json={"model": "tiny-embed", "input": "hi"})
    assert loaded.status_code == 200, loaded.text
    assert "tiny-embed:latest" in running(daemon.url)
    assert ok(vllama(daemon.url, "stop", "tiny-embed")) == ""
    assert "tiny-embed:latest" not in running(daemon.url)


def test_cp_then_rm(daemon: Daemon) -> None:
    assert ok(vllama(daemon.url, "cp", "tiny", "mine")) == "copied 'tiny' to 'mine'\n"
    assert "mine:latest" in ok(vllama(daemon.url, "list"))
    assert ok(vllama(daemon.url, "run", "mine", "hi")) == TOKENS + "\n"
    assert ok(vllama(daemon.url, "rm", "mine")) == "deleted 'mine'\n"
    assert "mine:latest" not in ok(vllama(daemon.url, "list"))
    result = vllama(daemon.url, "rm", "mine")
    assert (result.returncode, result.stderr) == (1, "Error: model 'mine' not found\n")
    result = vllama(daemon.url, "rm", "tiny")  # configured: the daemon refuses
    assert result.returncode == 1 and result.stderr.startswith("Error: ")


def test_create_a_derived_model(daemon: Daemon) -> None:
    result = vllama(
        daemon.url,
        *["create", "terse", "--from", "tiny", "--system", "Be brief."],
        *["-p", "temperature=0.2", "-p", "stop=tok3", "-p", "stop=tok9"],
    )
    ok(result)
    assert result.stderr.splitlines()[-1] == "success"
    parameters = ok(vllama(daemon.url, "show", "terse", "--parameters"))
    assert parameters.split() == ["temperature", "0.2", "stop", '"tok3"', "stop", '"tok9"']
    assert ok(vllama(daemon.url, "show", "terse", "--system")) == "Be brief.\n"
    assert "  System\n    Be brief.\n" in ok(vllama(daemon.url, "show", "terse"))
    # The derived model's stop parameter applies to its answers.
    assert ok(vllama(daemon.url, "run", "terse", "hi")) == "tok0 tok1 tok2 \n"
    ok(vllama(daemon.url, "rm", "terse"))
    result = vllama(daemon.url, "create", "bad", "--from", "tiny", "-p", "temperature")
    assert (result.returncode, result.stderr) == (
        1,
        "Error: --parameter 'temperature': expected key=value\n",
    )


def test_pull_of_a_name_that_names_nothing_says_why(daemon: Daemon) -> None:
    # Both are refused before anything is asked of the Hub (tests/component/test_pull.py pulls).
    result = vllama(daemon.url, "pull", "llama9")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "library" in result.stderr
    assert "org/name" in result.stderr
    result = vllama(daemon.url, "pull", "llama3.2:3b-q6_K")
    assert result.returncode == 1
    assert "GGUF" in result.stderr and "the nearest is llama3.2:3b-" in result.stderr


def test_logs(daemon: Daemon) -> None:
    ok(vllama(daemon.url, "run", "tiny", "hi"))
    endpoint = daemon.url + "/api/vllama/logs"
    lines = ok(vllama(daemon.url, "logs", "tiny", "-n", "5")).splitlines()
    assert 0 < len(lines) <= 5
    later = httpx.get(endpoint, params={"model": "tiny", "lines": 50}, timeout=10)
    assert later.status_code == 200, later.text
    assert set(lines) <= set(later.json()["lines"])
    result = vllama(daemon.url, "logs", "nope")
    assert (result.returncode, result.stderr) == (1, "Error: model 'nope' not found\n")


def test_version_reports_the_daemon(daemon: Daemon) -> None:
    result = vllama(daemon.url, "version")
    assert ok(result).splitlines() == [
        f"vllama {__version__}",
        f"vllama daemon version is {__version__} (Ollama API 0.12.0)",
    ]
    assert result.stderr == ""


def test_interactive_chat_on_a_terminal(daemon: Daemon) -> None:
    """A terminal on stdin and no prompt: the `>>>` loop, which keeps the conversation."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*VLLAMA, "run", "tiny"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "VLLAMA_HOST": daemon.url,
                "TERM": "dumb",
                "TEST_VLLAMA_SESSION": SESSION_MARK,
            },
            text=True,
        )
        os.write(controller, b"hello\n/clear\nagain\n/bye\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, err
    assert out.count(TOKENS + "\n") == 2
    assert "Cleared session context" in out
    assert out.count(">>> ") == 4


def test_an_unreachable_daemon(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["list"], ["ps"], ["run", "tiny", "hi"], ["stop", "tiny"], ["pull", "a/b"]):
        result = vllama(url, *command)
        assert result.returncode == 1, command
        assert result.stderr == (
            f"Error: could not connect to vllama at {url}: is it running? (vllama serve)\n"
        )
        assert result.stdout == ""
    result = vllama(url, "version")
    assert ok(result) == f"vllama {__version__}\n"
    assert f"Warning: client version is {__version__}" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "tiny", "--verbose", "hello", "world"],
        ["run", "tiny", "hello", "world", "--verbose"],
        ["run", "--verbose", "tiny", "hello", "world"],
    ],
)
def test_run_takes_flags_anywhere_as_ollama_does(argv: list[str]) -> None:
    args = parse(argv)
    assert (args.model, args.prompt, args.verbose) == ("tiny", ["hello", "world"], True)


def test_unknown_flags_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["list", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ({"model": "fake/m", "keep_alive": "soon"}, "models.m.keep_alive"),
        # Found only once the library is read (by the daemon, not the config loader).
        ({"model": "qwen3:8b-q6_K"}, "models.m.model: qwen3:8b-q6_K has no vLLM-ready repo"),
    ],
)
def test_serve_with_a_bad_config_exits_2_saying_what_is_wrong(
    tmp_path: Path, model: dict[str, Any], why: str
) -> None:
    path = write_config(
        tmp_path / "bad.toml",
        {"engine_command": FAKE_ENGINE_COMMAND, **worker_ports()},
        {"m": model},
    )
    env = {**os.environ, "TEST_VLLAMA_SESSION": SESSION_MARK}
    done = subprocess.run(
        [*VLLAMA, "serve", "--config", str(path), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"vllama: invalid configuration: {why}"), done.stderr
