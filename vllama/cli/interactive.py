"""What the `vllama` commands draw on a terminal: pull progress bars and the `run` chat prompt."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from vllama.cli.client import DaemonError
from vllama.cli.format import human_bytes, short_id


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
        self.logged = ("", -1)  # off a terminal: the file and tenth of it last written

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
            tenth = done * 10 // int(total) if isinstance(total, int | float) and total > 0 else 10
        elif status:
            key, line, tenth = status, status, -1
        else:
            return
        if self.tty:
            if self.key is not None and key != self.key:
                self.out.write("\n")
            self.out.write("\r" + line + "\x1b[K")
        elif line != self.last and (key, tenth) != self.logged:
            # A log gets a line per tenth of a file, not one per update (several a second).
            self.out.write(line + "\n")
            self.logged = (key, tenth)
        self.key, self.last = key, line
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.key is not None:
            self.out.write("\n")
            self.out.flush()
        self.key = None


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
