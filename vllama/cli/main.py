"""`vllama` command line: `serve` runs the daemon; the other commands talk to a running one
(address from VLLAMA_HOST), as the `ollama` CLI does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllama import __version__
from vllama.cli.commands import add_commands, report_daemon_version, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllama", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", type=Path, help="TOML config file (env VLLAMA_CONFIG)")
    serve.add_argument("--host", help="address to listen on (env VLLAMA_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (env VLLAMA_PORT)")
    commands.add_parser("version", help="print the version (and the running daemon's)")
    add_commands(commands)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `vllama run MODEL --verbose PROMPT` as ollama takes it: argparse gives a `*` positional
    # only the words before the first flag, and leaves the prompt's other words over.
    if extra and args.command == "run" and not any(word.startswith("-") for word in extra):
        args.prompt = [*args.prompt, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "version":
        print(f"vllama {__version__}", flush=True)
        return report_daemon_version()
    if args.command != "serve":
        return run_command(args)
    from vllama.server import run_daemon  # the daemon's imports, only when it runs

    return run_daemon(args.config, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
