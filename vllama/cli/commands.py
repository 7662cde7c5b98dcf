"""The `vllama` client commands (`list`, `ps`, `show`, `run`, `pull`, `stop`, `rm`, `cp`, `create`,
`logs`), which talk to a running daemon over HTTP the way the `ollama` CLI talks to Ollama.

The daemon's address comes from `VLLAMA_HOST` (see `vllama.cli.client.daemon_url`). The handlers
only fetch and print: formatting is `vllama.cli.format`, terminal drawing `vllama.cli.interactive`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from vllama import __version__
from vllama.catalog.names import normalize_name
from vllama.cli.client import Client, DaemonError, DaemonUnreachable, daemon_url
from vllama.cli.format import format_table, list_rows, ps_rows, show_text, verbose_stats
from vllama.cli.interactive import ProgressPrinter, chat_loop

STOP_WAIT = 60.0  # seconds `vllama stop` waits for the model to leave /api/ps
# A one-shot `vllama run MODEL PROMPT` answer stops after this many tokens, or half the model's
# context where that is less (vLLM refuses a prompt plus limit over the context), unless
# --max-tokens says otherwise: a model that never ends its answer would print until its context
# is full (`ollama run` sends no limit; Ollama's own default is to generate forever).
ONE_SHOT_MAX_TOKENS = 2048


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


# -- commands ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    models = (client.get("/api/tags") or {}).get("models") or []
    rows = list_rows(models, _now(), args.prefix or "")
    print(format_table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def _ps_table(client: Client, prefix: str) -> str:
    models = (client.get("/api/ps") or {}).get("models") or []
    rows = ps_rows(models, _now(), prefix)
    return format_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    if not args.watch:
        print(_ps_table(client, args.prefix or ""))
        return 0
    # Redrawn on each status event (every scheduler event, and every 2 s for the countdowns);
    # the table itself is /api/ps's, so it reads exactly as plain `vllama ps`.
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    try:
        for name, _ in client.events("/api/vllama/events"):
            if name == "status":
                table = _ps_table(client, args.prefix or "")
                print(f"{clear}{table}\n", flush=True)
    except KeyboardInterrupt:
        return 0
    print("vllama closed the stream (shutting down?)", file=sys.stderr)
    return 1


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


def context_length(info: dict[str, Any]) -> int | None:
    """The model's context length from `/api/show` (`<family>.context_length`: the length its
    worker serves, once it has run)."""
    for key, value in (info.get("model_info") or {}).items():
        if key.endswith(".context_length") and isinstance(value, int) and value > 0:
            return value
    return None


def one_shot_limit(max_tokens: int | None, context: int | None) -> int | None:
    """The `num_predict` a one-shot run sends: --max-tokens as given (0 or less: none), else
    ONE_SHOT_MAX_TOKENS or half the context where that is less (none when the context is not
    known: vLLM then stops at the context's end)."""
    if max_tokens is not None:
        return max_tokens if max_tokens > 0 else None
    if context is None:
        return None
    return max(1, min(ONE_SHOT_MAX_TOKENS, context // 2))


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
    info = _show_or_pull(client, args.model)
    if interactive or not prompt.strip():  # load the model (an empty prompt only loads it)
        client.post("/api/generate", {"model": args.model, **extra}, timeout=None)
        if not interactive:
            return 0
    # A chat on a terminal is stopped with Ctrl-C: it has a limit only when one is asked for.
    limit = None
    if args.max_tokens is not None or not interactive:
        limit = one_shot_limit(args.max_tokens, context_length(info))
    if limit is not None:
        extra["options"] = {"num_predict": limit}
    out = sys.stdout

    def send(messages: list[dict[str, Any]]) -> str:
        body = {"model": args.model, "messages": messages, "stream": True, **extra}
        text, final = _chat_stream(client, body, out)
        out.write("\n")
        out.flush()
        if args.verbose:
            print(verbose_stats(final), file=sys.stderr)
        if limit is not None and final.get("done_reason") == "length":
            print(
                f"(the answer stopped at the {limit}-token limit: "
                "--max-tokens N raises it, --max-tokens 0 lifts it)",
                file=sys.stderr,
            )
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


def _show_or_pull(client: Client, model: str) -> dict[str, Any]:
    """The model's `/api/show`; as `ollama run` does, a model not here yet is pulled first, with
    its progress."""
    try:
        return client.post("/api/show", {"model": model}) or {}
    except DaemonError as missing:
        if missing.status != 404:
            raise
        try:
            _progress(client, "/api/pull", {"model": model})
        except DaemonError as exc:
            if exc.status == 404:  # nothing by that name to pull either: say it is not found
                raise missing from None
            raise
    return client.post("/api/show", {"model": model}) or {}


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
    parser.add_argument(
        "-w", "--watch", action="store_true", help="redraw as models change, until Ctrl-C"
    )
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
    parser.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help=f"stop the answer after N tokens (num_predict; 0: no limit). A one-shot run stops "
        f"at {ONE_SHOT_MAX_TOKENS} (or half the model's context) unless told; a chat has no limit",
    )
    parser = add("pull", cmd_pull, "download a model: qwen3:8b, or a Hugging Face org/name")
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
        client = Client(daemon_url(env.get("VLLAMA_HOST")), env.get("VLLAMA_API_KEY"))
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
        data = Client(url, env.get("VLLAMA_API_KEY")).get("/api/version", timeout=3) or {}
    except (DaemonUnreachable, DaemonError, ValueError):
        print(f"Warning: could not connect to a running vllama at {url}", file=sys.stderr)
        print(f"Warning: client version is {__version__}", file=sys.stderr)
        return 0
    daemon = data.get("vllama_version") or "unknown"
    print(f"vllama daemon version is {daemon} (Ollama API {data.get('version')})")
    if daemon != __version__:
        print(f"Warning: client version is {__version__}", file=sys.stderr)
    return 0
