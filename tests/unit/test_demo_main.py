"""`python -m vllama.demo` runs the demo models' builder (`vllama.demo.build`)."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_package_runs_as_a_module_and_says_how() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vllama.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "models_dir" in done.stdout and "demo models" in done.stdout
