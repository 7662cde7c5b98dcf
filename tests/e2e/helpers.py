"""Helpers shared by the end-to-end modules."""

from __future__ import annotations

import psutil

from tests.daemon import Daemon


def workers(daemon: Daemon) -> dict[str, psutil.Process]:
    """The daemon's vLLM API-server children, by served model name."""
    found = {}
    for child in psutil.Process(daemon.proc.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:  # exited (a zombie until reaped): not a worker any more
            continue
        if "--served-model-name" in cmdline:
            found[cmdline[cmdline.index("--served-model-name") + 1]] = child
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
