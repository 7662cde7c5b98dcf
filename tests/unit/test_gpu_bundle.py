"""The GPU check's wheel bundle covers every dependency vllama declares: the dry run from a bare
Python found httptools missing (the daemon could not start there) once a dependency was added."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks.gpu_bundle import MISSING_THERE, THERE_ALREADY

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_every_declared_dependency_travels_or_is_there_already() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    needed = {canonicalize_name(Requirement(text).name) for text in declared}
    bundled = {canonicalize_name(name) for name in MISSING_THERE + THERE_ALREADY}
    assert needed - bundled == set()
