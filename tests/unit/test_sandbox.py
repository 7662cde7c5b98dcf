"""The run's own check (tests/sandbox/vllama_test_audit.py, tests/conftest.py): a test that
connects past loopback or writes outside the run's folders fails, in the pytest process and in
any Python process it starts; loopback and the temporary folders are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO, SANDBOX
from tests.sandbox import vllama_test_audit as audit

# TEST-NET-1 (RFC 5737): an address that is never this machine's. The hook refuses the connection
# before it is tried, so nothing leaves even where a route exists.
OUTSIDE = "192.0.2.1"


def own_run_env() -> dict[str, str]:
    """The environment without this run's audit settings, so that what a child does is checked
    against its own, not recorded as this test's."""
    drop = (audit.LOG_VARIABLE, audit.ROOTS_VARIABLE)
    return {name: value for name, value in os.environ.items() if name not in drop}


def test_only_loopback_and_the_allowed_folders_pass() -> None:
    roots = ("/run/x",)
    assert audit.is_local_host("127.0.0.1") and audit.is_local_host("::1")
    assert audit.is_local_host("localhost") and audit.is_local_host("0.0.0.0")
    assert not audit.is_local_host("huggingface.co") and not audit.is_local_host(OUTSIDE)
    assert audit.violation("socket.getaddrinfo", ("huggingface.co", 443, 0, 0, 0), roots)
    assert audit.violation("socket.getaddrinfo", ("127.0.0.1", 443, 0, 0, 0), roots) is None
    assert audit.violation("open", ("/run/x/a/b", "w", 0), roots) is None
    assert audit.violation("open", ("/run/xy", "w", 0), roots) == "open '/run/xy'"
    assert audit.violation("open", ("/etc/passwd", "r", 0), roots) is None  # reading is fine
    assert audit.violation("open", ("/etc/x", None, os.O_WRONLY | os.O_CREAT), roots)
    assert audit.violation("os.rename", ("/run/x/a", "/home/u/a", -1, -1), roots)
    # mkdir of a folder that exists changes nothing (vLLM's os.makedirs(".", exist_ok=True)).
    assert audit.violation("os.mkdir", ("/", 0o777, -1), roots) is None
    assert audit.violation("os.mkdir", ("/nonexistent-vllama-x", 0o777, -1), roots)


def test_a_child_process_is_refused_a_connection_past_loopback_and_reports_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "outside.log"
    script = textwrap.dedent(f"""
        import socket
        try:
            socket.create_connection(({OUTSIDE!r}, 9), timeout=1)
        except PermissionError as exc:
            print("refused:", exc)
        open({str(tmp_path / "inside")!r}, "w").close()
    """)
    env = {
        **own_run_env(),
        "PYTHONPATH": str(SANDBOX),
        audit.LOG_VARIABLE: str(log),
        audit.ROOTS_VARIABLE: str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "refused: test run: no connections past loopback" in done.stdout
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and f"socket.getaddrinfo '{OUTSIDE}'" in lines[0]


def test_a_test_that_reaches_outside_fails_the_run(tmp_path: Path) -> None:
    bad = tmp_path / "test_reaching_out.py"
    bad.write_text(
        textwrap.dedent(f"""
        import socket, subprocess, sys
        from tests.daemon import free_port

        def test_connects_outside():
            try:
                socket.create_connection(({OUTSIDE!r}, 80), timeout=1)
            except OSError:
                pass  # swallowed, as a library might: the check still sees it

        def test_a_child_writes_outside():
            code = "open('/nonexistent-vllama-test/x', 'w')"
            subprocess.run([sys.executable, "-c", code])  # it fails; the attempt is the point

        def test_stays_home(tmp_path):
            (tmp_path / "ok").write_text("inside")
            try:
                socket.create_connection(("127.0.0.1", free_port()), timeout=1)
            except ConnectionRefusedError:
                pass  # nothing listens there; trying is allowed
        """)
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            bad,
        ],
        cwd=REPO,
        env={**own_run_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 1, out
    assert "2 errors" in out and "3 passed" in out, out
    assert "reached outside the test run:" in out
    assert f"socket.getaddrinfo '{OUTSIDE}'" in out
    assert "open '/nonexistent-vllama-test/x'" in out


def test_paths_relative_to_a_directory_descriptor_are_left_alone() -> None:
    # shutil.rmtree removes a tree's entries by name, relative to the folder's descriptor.
    assert audit.violation("os.remove", ("config.json", 5), ("/run/x",)) is None
    assert audit.violation("os.remove", ("/home/u/config.json", 5), ("/run/x",))
    assert audit.violation("os.remove", ("config.json", None), ("/run/x",))  # the cwd's
