"""The `vllama` client commands (`list`, `ps`, `show`, `run`, `pull`, `stop`, `rm`, `cp`, `create`,
`logs`), which talk to a running daemon over HTTP the way the `ollama` CLI talks to Ollama.

The daemon's address comes from `VLLAMA_HOST` (see `vllama.client.daemon_url`). Formatting is
done by small pure functions (sizes, times, the processor share, tables, `show`'s sections,
`--verbose` statistics, progress lines) so that it can be tested without a daemon; the command
handlers only fetch and print.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from vllama import __version__
from vllama.catalog.names import normalize_name
from vllama.cli.client import Client, DaemonError, DaemonUnreachable, daemon_url

STOP_WAIT = 60.0  # seconds `vllama stop` waits for the model to leave /api/ps

# -- formatting: pure functions ----------------------------------------------------------------


def human_bytes(size: int) -> str:
    """Ollama's sizes: decimal units, one decimal below 100 units unless whole ("1.8 MB",
    "4.7 GB", "1 KB", "999 KB", "10.5 MB")."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            value = size / scale
            if value >= 100 or value == math.trunc(value):
                return f"{math.trunc(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_duration(seconds: float) -> str:
    """An approximate length of time, as Ollama words it ("About a minute", "4 hours")."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def human_time(moment: datetime | None, now: datetime, zero: str = "Never") -> str:
    """ "2 minutes ago", "4 minutes from now", "Forever" (more than 20 years ahead)."""
    if moment is None:
        return zero
    delta = (now - moment).total_seconds()
    if int(int(delta / 3600) / 24 / 365) < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def until_text(expires: datetime | None, now: datetime) -> str:
    """`ollama ps`'s UNTIL column: "Stopping..." once the expiry has passed."""
    if expires is not None and expires < now:
        return "Stopping..."
    return human_time(expires, now)


def processor_text(size: int, size_vram: int) -> str:
    """`ollama ps`'s PROCESSOR column, from the bytes in GPU memory against the total."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu = math.floor((size - size_vram) / size * 100 + 0.5)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 time from the API (`Z` or an offset; nanoseconds allowed); None if absent or
    Go's zero time."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None if moment.year <= 1 else moment


def short_id(digest: object) -> str:
    text = digest if isinstance(digest, str) else ""
    return text.removeprefix("sha256:")[:12]


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], padding: int = 4) -> str:
    """Left-aligned columns separated by `padding` spaces, no borders: Ollama's tables."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    gap = " " * padding
    return "\n".join(
        gap.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def list_rows(models: Sequence[dict[str, Any]], now: datetime, prefix: str = "") -> list[list[str]]:
    rows = []
    for model in models:
        name = str(model.get("name") or model.get("model") or "")
        if prefix and not name.lower().startswith(prefix.lower()):
            continue
        rows.append(
            [
                name,
                short_id(model.get("digest")),
                human_bytes(int(model.get("size") or 0)),
                human_time(parse_time(model.get("modified_at")), now),
            ]
        )
    return rows


def ps_rows(models: Sequence[dict[str, Any]], now: datetime, prefix: str = "") -> list[list[str]]:
    rows = []
    for model in models:
        name = str(model.get("name") or model.get("model") or "")
        if prefix and not name.startswith(prefix):
            continue
        size = int(model.get("size") or 0)
        context = model.get("context_length")
        rows.append(
            [
                name,
                short_id(model.get("digest")),
                human_bytes(size),
                processor_text(size, int(model.get("size_vram") or 0)),
                str(context) if context else "",
                until_text(parse_time(model.get("expires_at")), now),
            ]
        )
    return rows


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _section(title: str, rows: Sequence[Sequence[str]]) -> str:
    """One of `ollama show`'s sections: a title, then rows indented by the table padding."""
    body = format_table([""] * len(rows[0]), rows).split("\n")[1:] if rows else []
    return "\n".join([f"  {title}", *body, ""])


def _head(text: str, count: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [["", line] for line in lines[:count]]
    if len(lines) > count:
        rows.append(["", "..."])
    return rows


def show_text(info: dict[str, Any], verbose: bool = False) -> str:
    """`ollama show`'s summary: Model, Capabilities, Parameters, (Metadata), System, License."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = str(model_info.get("general.architecture") or details.get("family") or "")
    parameters = str(details.get("parameter_size") or "")
    count = model_info.get("general.parameter_count")
    if not parameters and isinstance(count, int | float) and count > 0:
        from vllama.catalog.files import format_parameter_count

        parameters = format_parameter_count(int(count))
    rows = [["", "architecture", arch], ["", "parameters", parameters]]
    for label, key in (
        ("context length", "context_length"),
        ("embedding length", "embedding_length"),
    ):
        value = model_info.get(f"{arch}.{key}")
        if value is None:  # the family may be unknown: any architecture's key will do
            value = next((v for k, v in model_info.items() if k.endswith(f".{key}")), None)
        if value is not None:
            rows.append(["", label, _number(value)])
    rows.append(["", "quantization", str(details.get("quantization_level") or "")])
    sections = [_section("Model", rows)]
    capabilities = info.get("capabilities") or []
    if capabilities:
        sections.append(_section("Capabilities", [["", str(c)] for c in capabilities]))
    parameter_rows = []
    for line in str(info.get("parameters") or "").splitlines():
        fields = line.split(None, 1)
        if fields:
            parameter_rows.append(["", fields[0], fields[1] if len(fields) > 1 else ""])
    if parameter_rows:
        sections.append(_section("Parameters", parameter_rows))
    if verbose and model_info:
        metadata = [["", key, _metadata_value(model_info[key])] for key in sorted(model_info)]
        sections.append(_section("Metadata", metadata))
    for title, key in (("System", "system"), ("License", "license")):
        text = info.get(key)
        if isinstance(text, str) and text.strip():
            sections.append(_section(title, _head(text, 2)))
    return "\n".join(sections)


def _metadata_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:3])
        return f"[{shown} ...+{len(value) - 3} more]" if len(value) > 3 else f"[{shown}]"
    return _number(value)


def go_duration(ns: int) -> str:
    """A duration in nanoseconds written as Go's time.Duration prints it ("1.5s", "230.1ms")."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def decimal(value: int, digits: int) -> str:
        whole, fraction = divmod(value, 10**digits)
        text = f"{whole}.{fraction:0{digits}d}".rstrip("0").rstrip(".")
        return text

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{decimal(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{decimal(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = decimal(rest, 9)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def verbose_stats(final: dict[str, Any]) -> str:
    """`ollama run --verbose`'s statistics, from a response's last object (durations in ns)."""

    def number(key: str) -> int:
        value = final.get(key)
        return int(value) if isinstance(value, int | float) else 0

    lines = []
    rows: list[tuple[str, str, str]] = [
        ("total duration:", "total_duration", ""),
        ("load duration:", "load_duration", ""),
        ("prompt eval count:", "prompt_eval_count", " token(s)"),
        ("prompt eval duration:", "prompt_eval_duration", ""),
        ("prompt eval rate:", "prompt_eval", ""),
        ("eval count:", "eval_count", " token(s)"),
        ("eval duration:", "eval_duration", ""),
        ("eval rate:", "eval", ""),
    ]
    for label, key, unit in rows:
        if key in ("prompt_eval", "eval"):
            duration = number(f"{key}_duration")
            if duration > 0:
                rate = number(f"{key}_count") / (duration / 1e9)
                lines.append(f"{label:<22}{rate:.2f} tokens/s")
        elif key.endswith("_count"):
            if number(key) > 0:
                lines.append(f"{label:<22}{number(key)}{unit}")
        elif number(key) > 0:
            lines.append(f"{label:<22}{go_duration(number(key))}")
    return "\n".join(lines)


def parse_scalar(text: str) -> Any:
    """A parameter value: a JSON number, boolean or string where it parses as one, else text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    """`--parameter key=value` flags as `/api/create`'s parameters; `stop` is always a list
    (repeat it for several stop strings), any other repeated key keeps its last value."""
    parameters: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--parameter {item!r}: expected key=value")
        value = parse_scalar(text)
        if key == "stop":
            parameters.setdefault("stop", []).append(value if isinstance(value, str) else text)
        else:
            parameters[key] = value
    return parameters


def progress_line(label: str, completed: int, total: int, width: int = 20) -> str:
    """A download's progress: `label  45% ▕█████     ▏ 1.2 GB/2.7 GB`."""
    fraction = min(1.0, completed / total) if total > 0 else 1.0
    filled = int(fraction * width)
    bar = "█" * filled + " " * (width - filled)
    sizes = f"{human_bytes(completed)}/{human_bytes(total)}" if total > 0 else ""
    return f"{label} {int(fraction * 100):3d}% ▕{bar}▏ {sizes}".rstrip()


class ProgressPrinter:
    """Ollama's progress protocol (`status`, `digest`, `total`, `completed`) on a stream: on a
    terminal one line per status or file, redrawn in place with `\\r`; otherwise each distinct
    line once."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out, self.tty = out, tty
        self.key: str | None = None
        self.last = ""

    def update(self, obj: dict[str, Any]) -> None:
        status = str(obj.get("status") or "")
        digest = str(obj.get("digest") or "")
        total = obj.get("total")
        if (isinstance(total, int | float) and total > 0) or digest:
            key = digest or status
            label = status or f"pulling {short_id(digest)}"
            completed = obj.get("completed")
            done = int(completed) if isinstance(completed, int | float) else 0
            line = progress_line(label, done, int(total or 0))
        elif status:
            key, line = status, status
        else:
            return
        if self.tty:
            if self.key is not None and key != self.key:
                self.out.write("\n")
            self.out.write("\r" + line + "\x1b[K")
        elif line != self.last:
            self.out.write(line + "\n")
        self.key, self.last = key, line
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.key is not None:
            self.out.write("\n")
            self.out.flush()
        self.key = None


# -- interactive chat --------------------------------------------------------------------------

HELP = """Available Commands:
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message."""


def read_message(read_line: Callable[[str], str]) -> str:
    """One user message; `\"\"\"` opens a multi-line message that a closing `\"\"\"` ends."""
    line = read_line(">>> ")
    if not line.lstrip().startswith('"""'):
        return line
    text = line.lstrip()[3:]
    if text.rstrip().endswith('"""') and text.strip():
        return text.rstrip()[:-3]
    parts = [text] if text else []
    while True:
        more = read_line("... ")
        if more.rstrip().endswith('"""'):
            parts.append(more.rstrip()[:-3])
            return "\n".join(parts)
        parts.append(more)


def chat_loop(
    read_line: Callable[[str], str],
    send: Callable[[list[dict[str, Any]]], str],
    out: TextIO,
) -> int:
    """The `run` prompt: keeps the conversation, `/clear` forgets it, `/bye` or EOF leaves.
    `send` streams an answer to the messages so far and returns its text."""
    messages: list[dict[str, Any]] = []
    while True:
        try:
            text = read_message(read_line)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        command = text.strip()
        if not command:
            continue
        if command in ("/bye", "/exit"):
            return 0
        if command == "/clear":
            messages.clear()
            out.write("Cleared session context\n")
            continue
        if command in ("/?", "/help"):
            out.write(HELP + "\n")
            continue
        if command.startswith("/"):
            out.write(f"Unknown command '{command.split()[0]}'. Type /? for help\n")
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer = send(messages)
        except KeyboardInterrupt:
            messages.pop()
            out.write("\n\n")
            continue
        except DaemonError as exc:
            messages.pop()
            print(f"Error: {exc.message}", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": answer})
        out.write("\n")
        out.flush()


# -- commands ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    models = (client.get("/api/tags") or {}).get("models") or []
    rows = list_rows(models, _now(), args.prefix or "")
    print(format_table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    models = (client.get("/api/ps") or {}).get("models") or []
    rows = ps_rows(models, _now(), args.prefix or "")
    print(format_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))
    return 0


_SHOW_FIELDS = ("modelfile", "template", "parameters", "system", "license")


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    info = client.post("/api/show", {"model": args.model}) or {}
    for field in _SHOW_FIELDS:
        if getattr(args, field):
            text = str(info.get(field) or "")
            print(text, end="" if text.endswith("\n") or not text else "\n")
            return 0
    print(show_text(info, args.verbose))
    return 0


def _chat_stream(client: Client, body: dict[str, Any], out: TextIO) -> tuple[str, dict[str, Any]]:
    """Streams one `/api/chat` answer to `out` token by token; returns its text and last object."""
    content: list[str] = []
    thinking = False
    final: dict[str, Any] = {}
    for obj in client.stream("POST", "/api/chat", body):
        message = obj.get("message") or {}
        thought = message.get("thinking")
        if thought:
            if not thinking:
                out.write("Thinking...\n")
                thinking = True
            out.write(thought)
        piece = message.get("content")
        if piece:
            if thinking:
                out.write("\n...done thinking.\n\n")
                thinking = False
            out.write(piece)
            content.append(piece)
        out.flush()
        if obj.get("done"):
            final = obj
    if thinking:
        out.write("\n...done thinking.\n\n")
    return "".join(content), final


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.keepalive is not None:
        extra["keep_alive"] = args.keepalive
    if args.format:
        extra["format"] = "json" if args.format == "json" else json.loads(args.format)
    interactive = not args.prompt and sys.stdin.isatty()
    prompt = ""
    if args.prompt:
        prompt = " ".join(args.prompt)
    elif not interactive:
        prompt = sys.stdin.read()
    if interactive or not prompt.strip():  # load the model (an empty prompt only loads it)
        client.post("/api/generate", {"model": args.model, **extra}, timeout=None)
        if not interactive:
            return 0
    out = sys.stdout

    def send(messages: list[dict[str, Any]]) -> str:
        body = {"model": args.model, "messages": messages, "stream": True, **extra}
        text, final = _chat_stream(client, body, out)
        out.write("\n")
        out.flush()
        if args.verbose:
            print(verbose_stats(final), file=sys.stderr)
        return text

    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        return chat_loop(input, send, out)
    send([{"role": "user", "content": prompt}])
    return 0


def _progress(client: Client, path: str, body: dict[str, Any]) -> int:
    printer = ProgressPrinter(sys.stderr, sys.stderr.isatty())
    try:
        for obj in client.stream("POST", path, {**body, "stream": True}):
            printer.update(obj)
    finally:
        printer.finish()
    return 0


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    return _progress(client, "/api/pull", {"model": args.model})


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.name, "from": args.base}
    if args.system is not None:
        body["system"] = args.system
    if args.template is not None:
        body["template"] = args.template
    parameters = parse_parameters(args.parameter or [])
    if parameters:
        body["parameters"] = parameters
    return _progress(client, "/api/create", body)


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    try:
        client.post("/api/generate", {"model": args.model, "keep_alive": 0})
    except DaemonError as exc:
        if exc.status == 404:
            raise DaemonError(404, f'couldn\'t find model "{args.model}" to stop') from None
        raise
    target = normalize_name(args.model)
    deadline = time.monotonic() + STOP_WAIT
    while True:
        models = (client.get("/api/ps") or {}).get("models") or []
        if not any(target in (m.get("name"), m.get("model")) for m in models):
            return 0
        if time.monotonic() > deadline:
            raise DaemonError(0, f"model '{args.model}' is still loaded after {STOP_WAIT:g}s")
        time.sleep(0.25)


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    for model in args.models:
        client.delete("/api/delete", {"model": model})
        print(f"deleted '{model}'")
    return 0


def cmd_cp(client: Client, args: argparse.Namespace) -> int:
    client.post("/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"model": args.model, "lines": args.lines})
    data = client.get(f"/api/vllama/logs?{query}") or {}
    for line in data.get("lines") or []:
        print(line)
    return 0


# -- wiring ------------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Adds the client commands to `vllama`'s subparsers; each sets `handler`."""
    epilog = "The daemon's address comes from VLLAMA_HOST (default 127.0.0.1:11434)."

    def add(name: str, handler: Any, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, epilog=epilog, **kwargs
        )
        parser.set_defaults(handler=handler)
        return parser

    parser = add("list", cmd_list, "list models", aliases=["ls"])
    parser.add_argument("prefix", nargs="?", help="only names that start with this")
    parser = add("ps", cmd_ps, "list running models")
    parser.add_argument("prefix", nargs="?", help="only names that start with this")
    parser = add("show", cmd_show, "show information for a model")
    parser.add_argument("model")
    only = parser.add_mutually_exclusive_group()
    for field in _SHOW_FIELDS:
        only.add_argument(f"--{field}", action="store_true", help=f"show the model's {field}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show all model metadata")
    parser = add("run", cmd_run, "run a model: one answer, or a chat on a terminal")
    parser.add_argument("model")
    parser.add_argument("prompt", nargs="*", help="the prompt (else stdin, else interactive)")
    parser.add_argument("--verbose", action="store_true", help="show timings and token rates")
    parser.add_argument("--keepalive", help='how long the model stays loaded ("5m", "-1")')
    parser.add_argument("--format", help='response format: "json" or a JSON schema')
    parser = add("pull", cmd_pull, "download a model (a Hugging Face org/name[:revision])")
    parser.add_argument("model")
    parser = add("stop", cmd_stop, "stop a running model")
    parser.add_argument("model")
    parser = add("rm", cmd_rm, "remove models")
    parser.add_argument("models", nargs="+", metavar="model")
    parser = add("cp", cmd_cp, "copy a model")
    parser.add_argument("source")
    parser.add_argument("destination")
    parser = add("create", cmd_create, "create a model from an existing one")
    parser.add_argument("name")
    parser.add_argument("--from", dest="base", required=True, help="the model to derive from")
    parser.add_argument("--system", help="system message")
    parser.add_argument("--template", help="chat template (Jinja)")
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="KEY=VALUE",
        help="a default option, e.g. temperature=0.2 (repeat; stop=... repeats add stops)",
    )
    parser = add("logs", cmd_logs, "show a model's worker log")
    parser.add_argument("model")
    parser.add_argument("-n", "--lines", type=int, default=100, help="how many lines (100)")


def run_command(args: argparse.Namespace, environ: dict[str, str] | None = None) -> int:
    """Runs a client command; errors become `Error: ...` on stderr and exit status 1."""
    env = os.environ if environ is None else environ
    try:
        client = Client(daemon_url(env.get("VLLAMA_HOST")))
        code: int = args.handler(client, args)
        return code
    except DaemonUnreachable as exc:
        print(f"Error: {exc}", file=sys.stderr)
    except DaemonError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
    except ValueError as exc:  # a bad VLLAMA_HOST, --parameter or --format
        print(f"Error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vllama list | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 1


def report_daemon_version(environ: dict[str, str] | None = None) -> int:
    """`vllama version`'s second line: the daemon's version, or a warning when none answers."""
    env = os.environ if environ is None else environ
    url = env.get("VLLAMA_HOST") or ""
    try:
        url = daemon_url(url)
        data = Client(url).get("/api/version", timeout=3) or {}
    except (DaemonUnreachable, DaemonError, ValueError):
        print(f"Warning: could not connect to a running vllama at {url}", file=sys.stderr)
        print(f"Warning: client version is {__version__}", file=sys.stderr)
        return 0
    daemon = data.get("vllama_version") or "unknown"
    print(f"vllama daemon version is {daemon} (Ollama API {data.get('version')})")
    if daemon != __version__:
        print(f"Warning: client version is {__version__}", file=sys.stderr)
    return 0
