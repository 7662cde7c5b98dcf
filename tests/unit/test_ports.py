"""Worker ports: the kernel's ephemeral range is read, and an overlap with it is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllama.engine.ports import ephemeral_overlap, ephemeral_range


def test_the_ephemeral_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("32768\t60999\n")
    assert ephemeral_range(str(path)) == (32768, 60999)
    assert ephemeral_range(str(tmp_path / "missing")) is None
    path.write_text("garbage\n")
    assert ephemeral_range(str(path)) is None


@pytest.mark.parametrize(
    ("low", "high", "overlap"),
    [
        (24000, 24999, None),  # the default range, below Linux's default ephemeral one
        (43000, 43999, (43000, 43999)),  # seen here: inside it
        (32000, 33000, (32768, 33000)),
        (60999, 61500, (60999, 60999)),
        (61000, 62000, None),
    ],
)
def test_an_overlap_with_the_ephemeral_range_is_found(
    low: int, high: int, overlap: tuple[int, int] | None
) -> None:
    assert ephemeral_overlap(low, high, (32768, 60999)) == overlap
    assert ephemeral_overlap(low, high, None) is None
