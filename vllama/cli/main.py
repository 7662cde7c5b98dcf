"""`vllama` command line: `serve` runs the daemon; the other commands talk to a running one
(address from VLLAMA_HOST), as the `ollama` CLI does."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from vllama import __version__
from vllama.cli.commands import add_commands, report_daemon_version, run_command
from vllama.config.settings import Config, ConfigError, load_config, read_toml
from vllama.engine.support import check_engine_support


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


def resolve_config(args: argparse.Namespace) -> Config:
    """Flags > environment > file; with no file at all, the built-in demo configuration."""
    flags: dict[str, Any] = {"host": args.host, "port": args.port, "config": args.config}
    path_text = args.config or os.environ.get("VLLAMA_CONFIG")
    if path_text:
        path = Path(path_text).expanduser()
        return load_config(flags, read_toml(path), base_dir=path.resolve().parent)
    from vllama.demo.config import demo_config_data

    bare = load_config(flags)
    return load_config(flags, demo_config_data(bare.server.models_dir.expanduser()))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"vllama {__version__}", flush=True)
        return report_daemon_version()
    if args.command != "serve":
        return run_command(args)
    from vllama.ops.logsetup import configure_logging
    from vllama.server import serve

    try:
        config = resolve_config(args)
        check_engine_support(config)
    except ConfigError as exc:
        print(f"vllama: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_level, config.server.log_format)
    reload = (lambda: _reload(args)) if config.server.config else None
    return run(serve(config, reload))


def _reload(args: argparse.Namespace) -> Config:
    """The configuration again, for SIGHUP (the same sources, re-read)."""
    config = resolve_config(args)
    check_engine_support(config)
    return config


def run(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where installed (less CPU per relayed request), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)  # measured: docs/BENCHMARKS.md


if __name__ == "__main__":
    sys.exit(main())
