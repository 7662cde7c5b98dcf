"""Build `.gpu-wheels`: vllama's dependencies as wheels for a GPU machine's Python, where nothing
can be fetched, for `benchmarks/gpu_check.py` (which installs them into `.gpu-deps` there).

The lent GPU machines run Python 3.12 with torch, nvidia-ml-py, aiohttp, psutil,
prometheus-client and uvloop already there (the device notes' package list); only pydantic's and
structlog's families and httptools travel. `--all` adds the rest, for a bare Python (the dry run
here). The versions are the ones installed beside this script's Python, so the bundle matches
what the tests ran with. Needs PyPI (pip download); the wheels come to a few MiB (the carry limit
is 64 MiB).

Usage: python benchmarks/gpu_bundle.py [--python-version 3.12] [--all] [--dest .gpu-wheels]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISSING_THERE = (
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "typing-inspection",
    "annotated-types",
    "typing-extensions",
    "structlog",
    "httptools",  # the relay's worker client (api/upstream.py)
    "orjson",  # the Ollama translation's stream lines (api/ollama/stream.py)
)
THERE_ALREADY = (
    "aiohttp",
    "aiohappyeyeballs",
    "aiosignal",
    "attrs",
    "frozenlist",
    "multidict",
    "propcache",
    "yarl",
    "idna",
    "psutil",
    "prometheus-client",
    "nvidia-ml-py",
    "uvloop",
)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--all", action="store_true", help="also what a GPU machine has")
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels")
    options = parser.parse_args()
    names = MISSING_THERE + (THERE_ALREADY if options.all else ())
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in names]
    shutil.rmtree(options.dest, ignore_errors=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = (sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:")
    target = ("--python-version", options.python_version, "--implementation", "cp")
    subprocess.run(
        [*download, *target, *platforms, "-d", str(options.dest), *pins],
        check=True,
    )
    size = sum(f.stat().st_size for f in options.dest.iterdir())
    print(f"{len(pins)} wheels, {size / 2**20:.1f} MiB in {options.dest}")


if __name__ == "__main__":
    main()
