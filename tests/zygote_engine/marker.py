"""Imported by the spare (through engine.py): a child that finds `IMPORTED_BY` set to another
process's pid was forked from the zygote with its imports, one that finds its own was spawned.

ZYGOTE_TEST_OMP starts torch's OpenMP pool, as an engine that ran a parallel operation would have:
`now` in the spare (it must then start no zygote), `child` in every forked child, the zygote among
them (it must then refuse to fork)."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()


def _start_openmp() -> None:
    import torch

    torch.set_num_threads(2)
    torch.ones(256, 256) @ torch.ones(256, 256)  # a parallel region: the pool starts


if os.environ.get("ZYGOTE_TEST_OMP") == "now":
    _start_openmp()
elif os.environ.get("ZYGOTE_TEST_OMP") == "child":
    import torch  # noqa: F401  (imported in the spare, as vLLM's stack is)

    os.register_at_fork(after_in_child=_start_openmp)
