from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllama.ops import systemd
from vllama.ops.systemd import Notifier, watchdog_loop

UNIT = Path(__file__).resolve().parents[2] / "configs" / "vllama.service"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued, without waiting for more."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(2.0)


def test_ready_status_stopping_arrive_exactly_and_in_order(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("listening on 127.0.0.1:11434")
    notifier.status("2 models loaded")
    notifier.status("multi\nline")
    notifier.stopping()
    notifier.notify(EXTEND_TIMEOUT_USEC=5_000_000)
    assert [sock.recv(4096) for _ in range(5)] == [
        b"READY=1\nSTATUS=listening on 127.0.0.1:11434",
        b"STATUS=2 models loaded",
        b"STATUS=multi line",
        b"STOPPING=1",
        b"EXTEND_TIMEOUT_USEC=5000000",
    ]
    notifier.close()


def test_abstract_socket_address() -> None:
    name = f"vllama-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


async def test_watchdog_loop_pings_at_half_the_timeout(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_interval() == pytest.approx(0.5)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watchdog_loop(notifier))
    try:
        # Pings waited for, not a fixed window: three (one at once, then one per 0.5 s) span
        # 1 s; pinging at the whole timeout would take 2 s, and load only adds to either.
        arrivals = []
        for _ in range(3):
            assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 10) == b"WATCHDOG=1"
            arrivals.append(loop.time())
        assert 1.0 - 0.02 <= arrivals[-1] - arrivals[0] < 1.9
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_pid_of_another_process_disables_the_watchdog(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_interval() is None
    await asyncio.wait_for(watchdog_loop(notifier), timeout=1.0)  # returns at once
    assert drain(sock) == []
    # Unset WATCHDOG_PID: the watchdog is ours.
    del env["WATCHDOG_PID"]
    assert Notifier.from_environment(env).watchdog_interval() == pytest.approx(0.1)


def test_bad_watchdog_values_mean_no_watchdog(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    for usec in ("", "0", "-5", "soon"):
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec}
        assert Notifier.from_environment(env).watchdog_interval() is None


async def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "200000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    notifier.ready("x")
    notifier.status("x")
    notifier.stopping()
    notifier.watchdog()
    notifier.send("anything")
    notifier.close()
    await asyncio.wait_for(watchdog_loop(notifier), timeout=1.0)
    # An unsupported address family (vsock) is a no-op too.
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_missing_socket_path_never_raises_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []

    class Recorder:
        def warning(self, event: str, **_: object) -> None:
            warnings.append(event)

    monkeypatch.setattr(systemd, "log", Recorder())
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    for _ in range(3):
        notifier.ready("x")
        notifier.watchdog()
    notifier.close()
    assert warnings == ["cannot notify systemd"]


def test_unset_environment_removes_only_systemds_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin"}
    Notifier.unset_environment(env)
    assert env == {"PATH": "/bin"}
    Notifier.unset_environment(env)  # idempotent
    assert env == {"PATH": "/bin"}


# -- the unit file ---------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=value, '#'/';' comments, repeatable keys."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_file_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/vllama/.venv/bin/vllama serve --config /etc/vllama/vllama.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "KillMode": "mixed",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "90",
        "Restart": "on-failure",
        "RestartSec": "5",
        "EnvironmentFile": "-/etc/vllama/vllama.env",
        "User": "vllama",
        "Group": "vllama",
        "SupplementaryGroups": "video render",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "ReadWritePaths": "/var/lib/vllama",
        "StateDirectory": "vllama",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LimitNOFILE": "65536",
    }
    assert {key: service.get(key) for key in expected} == expected
    environment = " ".join(unit["Service"]["Environment"]).split()
    assert set(environment) >= {
        "VLLAMA_MODELS_DIR=/var/lib/vllama/models",
        "HF_HOME=/var/lib/vllama/huggingface",
        "XDG_CACHE_HOME=/var/lib/vllama/cache",
        "HOME=/var/lib/vllama",
    }
    # A private /dev would hide /dev/nvidia*.
    assert service.get("PrivateDevices", "no") == "no"
    # Stop must outlast the daemon's own drain (30 s) + worker stop (20 s).
    assert int(service["TimeoutStopSec"]) > 30 + 20
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on PATH (install systemd to run this check)")
    # verify insists that ExecStart's binary exists; /opt/vllama does not here.
    text = UNIT.read_text().replace(
        "ExecStart=/opt/vllama/.venv/bin/vllama serve", "ExecStart=/bin/true serve"
    )
    assert "ExecStart=/bin/true" in text
    copy = tmp_path / "vllama.service"
    copy.write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # Lines about the vllama unit itself; verify also loads its dependencies (multi-user.target
    # and friends), whose own complaints on a host without systemd running are not ours.
    ours = [line for line in output.splitlines() if "vllama.service" in line]
    assert result.returncode == 0 and not ours, output


def test_unit_file_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on PATH (install systemd to run this check)")
    copy = tmp_path / "vllama.service"
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for vllama\.service: (\d+\.\d)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= 4.0, result.stdout
    # What vLLM needs stays allowed: the GPUs, /dev/shm, JIT-compiled code.
    settings = [line for line in UNIT.read_text().splitlines() if not line.startswith("#")]
    for forbidden in ("PrivateDevices=yes", "MemoryDenyWriteExecute=yes", "ProcSubset=pid"):
        assert forbidden not in settings
