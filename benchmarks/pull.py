"""What vllama's own downloader costs against huggingface_hub's, on one file over plain HTTP.

`/api/pull` fetches files with its own aiohttp GET (`vllama/catalog/hub.py`: resumable, byte
progress, digest checked on the way) instead of `huggingface_hub.hf_hub_download`. This measures
whether that costs throughput: both fetch the same file from a local fake Hub (tests/fake_hf.py,
unthrottled, on loopback, so the clients' own costs are what differs), alternately, several
rounds, in one run (the machines are shared and noisy: only the ratio means anything). Reported:
each side's median MB/s and vllama / huggingface_hub.

Files in Xet storage go through huggingface_hub and hf_xet either way, so they are not measured.

Usage: .venv/bin/python benchmarks/pull.py [--size-mb 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huggingface_hub import hf_hub_download  # noqa: E402

from tests.fake_hf import FakeHub, FakeRepo, serve_in_thread  # noqa: E402
from vllama.catalog import hub  # noqa: E402

NAME = "bench/model"
FILE = "model.safetensors"


async def vllama_fetch(folder: Path, size: int) -> float:
    """Seconds for vllama's downloader to fetch the file (its digest checked, as in a pull)."""
    async with hub.session() as http:
        info = await hub.repo_info(http, NAME, "main")
        (file,) = [f for f in info.files if f.path == FILE]
        assert file.size == size
        began = time.perf_counter()
        await hub.download(http, info, file, folder / f"{FILE}.part", lambda n: None)
        return time.perf_counter() - began


def hf_fetch(folder: Path, endpoint: str) -> float:
    began = time.perf_counter()
    hf_hub_download(NAME, FILE, local_dir=folder, cache_dir=folder / "cache", endpoint=endpoint)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    content = os.urandom(size)
    fake = FakeHub({NAME: FakeRepo({"config.json": b"{}", FILE: content})}, chunk_size=1 << 20)
    speeds: dict[str, list[float]] = {"vllama": [], "huggingface_hub": []}
    with serve_in_thread(fake) as endpoint, tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_ENDPOINT"] = endpoint
        os.environ.pop("HF_TOKEN", None)
        for round_ in range(args.rounds):
            for side in (
                ("vllama", "huggingface_hub") if round_ % 2 else ("huggingface_hub", "vllama")
            ):
                folder = Path(tmp) / f"{side}-{round_}"
                folder.mkdir()
                if side == "vllama":
                    seconds = asyncio.run(vllama_fetch(folder, size))
                else:
                    seconds = hf_fetch(folder, endpoint)
                speeds[side].append(size / seconds / 1e6)
                print(f"round {round_ + 1} {side:16} {speeds[side][-1]:8.1f} MB/s", flush=True)
    ours, theirs = (statistics.median(speeds[s]) for s in ("vllama", "huggingface_hub"))
    print(f"median: vllama {ours:.1f} MB/s, huggingface_hub {theirs:.1f} MB/s")
    print(f"ratio vllama / huggingface_hub: {ours / theirs:.2f}x ({args.size_mb} MiB file)")


if __name__ == "__main__":
    main()
