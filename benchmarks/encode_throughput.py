"""End-to-end encode throughput vs the model's pure forward, and cache-open cost.

Prints, measured in one run:
  1. images/s of `encode_source` (decode + preprocess in DataLoader workers, forward,
     cache write) divided by images/s of the model's forward alone on the same
     preprocessed batches (goal: >= 0.9 on the CPU with a small ViT);
  2. the time and RSS growth of opening a 1M x 1024 fp16 cache and reading rows
     from it (goal: opening reads headers only).

Usage: python benchmarks/encode_throughput.py [--quick] [--images N] [--batch-size B]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_mib(kind: str = "VmRSS") -> float:
    """Resident memory in MiB: VmRSS (all), RssAnon (private heap), RssFile (mapped page cache)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(kind + ":")) / 1024


def forward_only(encoder, dataset, n: int, batch_size: int) -> float:
    """images/s of encoder.forward on batches preprocessed beforehand (held in RAM)."""
    pre = encoder.preprocessor
    batches = []
    for start in range(0, n, batch_size):
        items = [pre.preprocess(dataset.load_image(i)) for i in range(start, min(start + batch_size, n))]
        batches.append(pre.collate(items))
    encoder.forward(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        encoder.forward(batch)
    return n / (time.perf_counter() - t0)


def end_to_end(encoder, dataset, n: int, batch_size: int, workers: int | None) -> float:
    from alignprobe.probe.embeddings.cache import EmbeddingCache
    from alignprobe.probe.embeddings.encoding import ImageSource, encode_source

    class FirstN:
        def __init__(self, ds, n):
            self.ds, self.n, self.name = ds, n, f"{ds.name}[:{n}]"
            self.ids = ds.ids[:n]

        def __len__(self):
            return self.n

        def load_image(self, i):
            return self.ds.load_image(i)

        def fingerprint(self):
            return f"{self.ds.fingerprint()}:{self.n}"

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        encode_source(encoder, ImageSource(FirstN(dataset, n)), cache=EmbeddingCache(Path(tmp)),
                      batch_size=batch_size, num_workers=workers, quiet=True)
        return n / (time.perf_counter() - t0)


def cache_open(rows: int, dim: int, shard_rows: int) -> dict:
    from alignprobe.probe.embeddings.cache import CacheIdentity, EmbeddingCache

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp))
        ident = CacheIdentity("text", {"name": "bench"},
                              {"kind": "captions", "name": "bench", "n": rows, "fingerprint": "x"},
                              "fp16", shard_rows=shard_rows)
        cache.begin(ident)
        rng = np.random.default_rng(0)
        block = rng.standard_normal((shard_rows, dim), dtype=np.float32)
        for j in range(ident.n_shards):
            start, end = ident.shard_range(j)
            cache.write_shard(ident, j, block[: end - start], np.ones(end - start, bool), {})
        del block
        cache.finalize(ident)
        before, before_anon = rss_mib(), rss_mib("RssAnon")
        t0 = time.perf_counter()
        emb = cache.lookup(ident)
        open_s = time.perf_counter() - t0
        after_open = rss_mib()
        idx = rng.choice(rows, size=4096, replace=False)
        t0 = time.perf_counter()
        out = emb.rows(idx)
        gather_s = time.perf_counter() - t0
        return {"open_s": open_s, "open_rss_mib": after_open - before, "gather_4096_s": gather_s,
                "gather_rss_mib": rss_mib() - before, "gather_anon_mib": rss_mib("RssAnon") - before_anon,
                "out_mib": out.nbytes / 2**20, "file_gib": rows * dim * 2 / 2**30}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers [auto]")
    parser.add_argument("--model", default="random-vit", help="a small ViT (default: random-vit, ViT-S/16)")
    args = parser.parse_args()
    n = args.images or (64 if args.quick else 512)
    rows = 50_000 if args.quick else 1_000_000

    import alignprobe
    from alignprobe.probe.data.spec import open_dataset

    os.environ.setdefault("TQDM_DISABLE", "1")
    encoder = alignprobe.create_vision_encoder(args.model, device="cpu")
    dataset = open_dataset("shapes")
    print(f"model {args.model} ({encoder.dim}-d), {n} shapes images, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    fwd = forward_only(encoder, dataset, n, args.batch_size)
    e2e = end_to_end(encoder, dataset, n, args.batch_size, args.workers)
    print(f"forward only      : {fwd:8.1f} images/s")
    print(f"end to end        : {e2e:8.1f} images/s")
    print(f"ratio e2e/forward : {e2e / fwd:8.3f}   (goal >= 0.9)")

    res = cache_open(rows, 1024, shard_rows=65536)
    print(f"cache {rows} x 1024 fp16 ({res['file_gib']:.2f} GiB on disk):")
    print(f"  open            : {res['open_s'] * 1000:8.1f} ms, RSS +{res['open_rss_mib']:.1f} MiB")
    print(f"  gather 4096 random rows: {res['gather_4096_s'] * 1000:8.1f} ms; private memory +"
          f"{res['gather_anon_mib']:.1f} MiB (the {res['out_mib']:.0f} MiB fp32 result); RSS incl. mapped "
          f"page cache +{res['gather_rss_mib']:.0f} MiB (file-backed, evictable: the kernel maps whole "
          f"folios around each faulted row)")


if __name__ == "__main__":
    main()
