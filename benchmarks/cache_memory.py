"""Opening a large embedding-cache entry reads only its headers: resident memory before and after.

    python benchmarks/cache_memory.py                 # 200,000 x 1024 fp16 (400 MB on disk)
    python benchmarks/cache_memory.py --rows 50000    # a quicker, 100 MB entry

Writes one entry shard by shard into a temporary directory, then, in a fresh process (so that
the pages the writer touched are not counted), looks the entry up and reads its first and last
rows. Prints the entry's size on disk, the RSS growth of the lookup plus the read, and their
ratio; the memory-mapped shards should keep the growth to a few MB whatever the entry's size.
(The unit tests check the mapping itself on a small entry: `tests/test_cache.py`.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from alignprobe.probe.embeddings.cache import CacheIdentity, EmbeddingCache

WORKER = "--worker"
DIM = 1024


def _identity(rows: int, shard_rows: int) -> CacheIdentity:
    source = {"kind": "captions", "name": "big", "n": rows, "fingerprint": "benchmark"}
    return CacheIdentity("text", {"name": "big"}, source, "fp16", shard_rows=shard_rows)


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def write_entry(root: Path, rows: int, shard_rows: int) -> int:
    """Write the entry; returns its size on disk in bytes."""
    cache = EmbeddingCache(root)
    identity = _identity(rows, shard_rows)
    cache.begin(identity)
    rng = np.random.default_rng(0)
    for j in range(identity.n_shards):
        n = min(shard_rows, rows - j * shard_rows)
        cache.write_shard(identity, j, rng.standard_normal((n, DIM), dtype=np.float32), np.ones(n, bool), {})
    cache.finalize(identity)
    return sum(p.stat().st_size for p in cache.entry_dir(identity).iterdir())


def measure(root: Path, rows: int, shard_rows: int) -> dict:
    """In this (fresh) process: RSS growth of a lookup and a read of two rows."""
    cache = EmbeddingCache(root)
    before = _rss_kib()
    emb = cache.lookup(_identity(rows, shard_rows))
    picked = emb.rows([0, rows - 1])
    after = _rss_kib()
    assert emb.shape == (rows, DIM) and picked.shape == (2, DIM)
    return {"rss_growth_kib": after - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument(WORKER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(Path(args.worker), args.rows, args.shard_rows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = write_entry(Path(tmp), args.rows, args.shard_rows)
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--shard-rows",
                              str(args.shard_rows), WORKER, tmp], check=True, capture_output=True, text=True)
        growth = json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_kib"] * 1024
    print(f"entry: {args.rows:,} x {DIM} fp16, {size / 2**20:,.1f} MiB on disk")
    print(f"RSS growth of lookup + 2 rows: {growth / 2**20:,.2f} MiB ({growth / size:.4f} of the entry)")


if __name__ == "__main__":
    main()
