"""A small sd_notify(3) client: tell systemd (Type=notify) when the daemon is ready, what it is
doing, when it stops, and that its event loop is alive (the watchdog).

Stdlib only, and it never raises: a daemon must not fail because its supervisor's socket went
away. Without NOTIFY_SOCKET (run by hand, in tests, under another supervisor) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping

import structlog

from vllama.scheduling.events import Event, StateChanged
from vllama.scheduling.status import SchedulerStatus

log = structlog.get_logger("vllama.systemd")

# What systemd hands the main process; children must not inherit it (a worker sending READY=1 or
# WATCHDOG=1 would speak for the daemon).
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends sd_notify datagrams to `address` (None: a no-op notifier)."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._sock: socket.socket | None = None
        self._error_logged = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        raw = environ.get("NOTIFY_SOCKET", "")
        if not raw:
            return cls()
        if raw.startswith("@"):
            # An abstract socket: Linux names it with a leading NUL instead of a path.
            address = "\0" + raw[1:]
        elif raw.startswith("/"):
            address = raw
        else:
            # systemd also knows vsock: addresses (VMs); we never run there.
            log.warning("unsupported NOTIFY_SOCKET, not notifying systemd", address=raw)
            return cls()
        return cls(address, _watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, text: str) -> None:
        """Send one datagram; failures are logged once and never raised."""
        if self.address is None:
            return
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full socket buffer: a lost STATUS is harmless.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._error_logged:
                self._error_logged = True
                log.warning("cannot notify systemd", address=self.address, error=str(exc))

    def notify(self, **fields: object) -> None:
        # One KEY=value per line; a newline inside a value would start a bogus assignment.
        self.send("\n".join(f"{k}={_one_line(v)}" for k, v in fields.items()))

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def stopping(self) -> None:
        self.notify(STOPPING=1)

    def watchdog(self) -> None:
        self.notify(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) recommends."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    @staticmethod
    def unset_environment(environ: MutableMapping[str, str]) -> None:
        for name in ENV_VARS:
            environ.pop(name, None)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: object) -> str:
    return str(value).replace("\n", " ")


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process systemd watches; if we inherited it from a parent that is
    # being watched, pinging would be a lie about a process that is not ours.
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    return usec if usec > 0 else None


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping WATCHDOG=1 every `watchdog_interval()` until cancelled.

    Driven by the event loop on purpose: if the loop blocks, pings stop and systemd restarts the
    daemon. Never gate the pings on worker health; supervising workers is the daemon's job.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


class StatusLine:
    """systemd's STATUS= line (`systemctl status`): the loaded models, sent when they change."""

    def __init__(self, notifier: Notifier, status: Callable[[], SchedulerStatus]) -> None:
        self._notifier = notifier
        self._status = status
        self._last = ""

    def listen(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.update()

    def update(self) -> None:
        loaded = self._status().loaded()
        text = f"loaded: {', '.join(loaded)}" if loaded else "no model loaded"
        if text != self._last:
            self._notifier.status(text)
            self._last = text
