"""The alignment probe at the paper's scale: memory and matmul efficiency of `sail-probe` steps streamed from disk.

    python benchmarks/probe_scale.py                   # 1M and 250k pairs, 2,048-d images, 1,024-d texts, fp16
    python benchmarks/probe_scale.py --steps 0         # a whole epoch at each size (31 + 8 steps: hours on 2 cores)
    python benchmarks/probe_scale.py --quick           # 100k / 25k pairs, 512 / 256-d, batch 4,096 (a minute)
    python benchmarks/probe_scale.py --micro-batch 4096 # two-pass (GradCache) steps: less memory, a second forward
    python benchmarks/probe_scale.py --micro-batch auto,4096 --pairs 1000000   # both modes, one table
    python benchmarks/probe_scale.py --keep-freed-memory # with the CLI's allocator settings (alignprobe/_allocator.py)

For each size a synthetic memory-mapped fp16 cache is written (images and one
caption per image, as `np.memmap` files -- what a `CachedEmbeddings` entry
is), then the public engine (`alignprobe.probe.Trainer` with
`TrainConfig.preset("sail-probe")`: linear heads into 2,048-d, Lion, batch
32,768, the chunked sigmoid loss) trains on it for ``--steps`` steps of the
first epoch (0: the whole epoch), each in its own subprocess. Printed:

* peak anonymous memory (``RssAnon`` of /proc/self/status, sampled every
  50 ms): heap, tensors, optimizer state -- not the page cache of the
  memory-mapped inputs, which the kernel reclaims. Goal: <= 3 GiB at 1M pairs
  and <= 1.2x the 250k figure (the engine never holds the whole matrix);
* the matmul FLOP/s of the steps as a fraction of this machine's fp32 GEMM
  peak, measured in the same process before and after (the higher is the
  reference). Counted: each head's forward and weight gradient (inputs need no
  gradient), the loss's similarity forward, its recomputation in the backward
  and the two gradient products. Goal: >= 0.7.

Batches stay in the cache's fp16 until each micro-batch runs (`streaming.py`,
`step.head_input`); the table's "batch dtype" column says what the engine held.
An epoch is ``floor(pairs / batch)`` steps (``drop_last``, as the reference).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

GiB = 1024**3
WORKER = "--worker"


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler(threading.Thread):
    """Samples RssAnon in the background; ``peak`` is the largest value seen."""

    def __init__(self, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.every_s, self.peak, self._done = every_s, rss_anon(), threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, rss_anon())
            self._done.wait(self.every_s)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_anon())


def gemm_peak(n: int = 4096, repeats: int = 3) -> float:
    """fp32 GEMM FLOP/s now (`gpu_check.gemm_peaks`, the one peak every benchmark here measures)."""
    import torch

    from gpu_check import gemm_peaks  # this folder

    return gemm_peaks(torch.device("cpu"), n, repeats)["fp32"]


def write_cache(directory: Path, n: int, d_img: int, d_txt: int, seed: int = 0) -> tuple[Path, Path]:
    """Two fp16 memmaps (images, captions) that share a latent, written in blocks."""
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / f"images_{n}_{d_img}.f16", directory / f"texts_{n}_{d_txt}.f16"
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    latent = 64
    to_img = rng.standard_normal((latent, d_img)).astype(np.float32) / 8
    to_txt = rng.standard_normal((latent, d_txt)).astype(np.float32) / 8
    img = np.memmap(str(paths[0]) + ".tmp", dtype=np.float16, mode="w+", shape=(n, d_img))
    txt = np.memmap(str(paths[1]) + ".tmp", dtype=np.float16, mode="w+", shape=(n, d_txt))
    for start in range(0, n, 65536):
        z = rng.standard_normal((min(65536, n - start), latent)).astype(np.float32)
        img[start : start + len(z)] = z @ to_img + 0.5 * rng.standard_normal((len(z), d_img), dtype=np.float32)
        txt[start : start + len(z)] = z @ to_txt + 0.5 * rng.standard_normal((len(z), d_txt), dtype=np.float32)
    img.flush(), txt.flush()
    del img, txt
    for p in paths:
        os.replace(str(p) + ".tmp", p)
    return paths


def worker(args) -> dict:
    if args.keep_freed_memory:
        # What the CLI does first thing (alignprobe/_allocator.py): glibc keeps freed
        # memory, so RssAnon is the heap's high-water mark rather than what is live.
        from alignprobe._allocator import keep_freed_memory

        keep_freed_memory()
    import numpy as np
    import torch

    from alignprobe.probe.training.config import TrainConfig
    from alignprobe.probe.training.engine import Trainer

    n, d_img, d_txt = args.n, args.d_img, args.d_txt
    images = np.memmap(args.images, dtype=np.float16, mode="r", shape=(n, d_img))
    texts = np.memmap(args.texts, dtype=np.float16, mode="r", shape=(n, d_txt))
    micro = None if args.micro_batch in (None, "none") else args.micro_batch if args.micro_batch == "auto" \
        else int(args.micro_batch)
    config = TrainConfig.preset("sail-probe", batch_size=args.batch, epochs=1, device="cpu", checkpoint_every=None,
                                prefetch=True, out_dim=args.out_dim, micro_batch=micro)
    peak_before = gemm_peak()
    sampler = PeakSampler()
    sampler.start()
    seconds, started = [], {}

    class Enough(Exception):
        pass

    def on_step(trainer, event, info):
        if event == "step":
            seconds.append(time.perf_counter() - started["t"])
            started["t"] = time.perf_counter()
            if args.steps and info["step"] >= args.steps:
                raise Enough

    trainer = Trainer(config, quiet=True)
    # each step's clock starts when the step does (not while the stream is set up or the batch gathered)
    real_step = Trainer._train_step

    def timed_step(self, batch):
        started["t"] = time.perf_counter()
        started["dtype"] = str(batch.images.dtype).replace("torch.", "")
        return real_step(self, batch)

    Trainer._train_step = timed_step
    try:
        trainer.fit(images, texts, callbacks=[on_step])
    except Enough:
        pass
    finally:
        Trainer._train_step = real_step
    peak = sampler.stop()
    peak_after = gemm_peak()
    b, d = args.batch, args.out_dim
    # heads: forward + weight gradient (2 GEMMs each); loss: similarity, its backward recomputation, 2 grads
    flops = 4 * b * (d_img + d_txt) * d + 8 * b * b * d
    step_s = float(np.median(seconds))
    ref = max(peak_before, peak_after)
    return {"pairs": n, "steps": len(seconds), "step_s": step_s, "peak_rss_anon_gib": peak / GiB,
            "batch_dtype": started.get("dtype"), "steps_per_epoch": n // args.batch,
            "gflops": flops / step_s / 1e9, "gemm_peak_gflops": ref / 1e9, "fraction_of_peak": flops / step_s / ref,
            "micro_batch": trainer.micro_batch_, "threads": torch.get_num_threads(),
            "keep_freed_memory": bool(args.keep_freed_memory)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="1000000,250000")
    parser.add_argument("--steps", type=int, default=1, help="steps per size (0: the whole first epoch)")
    parser.add_argument("--batch", type=int, default=32768)
    parser.add_argument("--d-img", type=int, default=2048)
    parser.add_argument("--d-txt", type=int, default=1024)
    parser.add_argument("--out-dim", type=int, default=2048)
    parser.add_argument("--dir", default="/tmp/alignprobe-probe-scale")
    parser.add_argument("--micro-batch", default="auto",
                        help="auto (the default: one pass when it fits), none, or rows; a comma list runs each")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="apply the CLI's allocator settings (glibc keeps freed memory) in each worker")
    parser.add_argument(WORKER, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.pairs, args.batch, args.d_img, args.d_txt, args.out_dim = "100000,25000", 4096, 512, 256, 512
    rows = []
    for n in [int(p) for p in args.pairs.split(",")]:
        t0 = time.perf_counter()
        images, texts = write_cache(Path(args.dir), n, args.d_img, args.d_txt)
        print(f"cache of {n:,} pairs ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for micro in args.micro_batch.split(","):
            cmd = [sys.executable, __file__, WORKER, "--n", str(n), "--images", str(images), "--texts", str(texts),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--d-img", str(args.d_img),
                   "--d-txt", str(args.d_txt), "--out-dim", str(args.out_dim), "--micro-batch", micro]
            cmd += ["--keep-freed-memory"] if args.keep_freed_memory else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nsail-probe steps from fp16 memmaps: batch {args.batch:,}, {args.d_img} / {args.d_txt} -> {args.out_dim}")
    print("| pairs | steps | s / step | peak RssAnon | GFLOP/s | GEMM peak | fraction of peak | micro-batch | "
          "batch dtype |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pairs']:,} | {r['steps']} | {r['step_s']:.1f} | {r['peak_rss_anon_gib']:.2f} GiB | "
              f"{r['gflops']:.0f} | {r['gemm_peak_gflops']:.0f} | {r['fraction_of_peak']:.2f} | {r['micro_batch']} | "
              f"{r['batch_dtype']} |")
    for mode in dict.fromkeys(r["micro_batch"] for r in rows):
        same = [r for r in rows if r["micro_batch"] == mode]
        if len(same) >= 2:
            big, small = max(same, key=lambda r: r["pairs"]), min(same, key=lambda r: r["pairs"])
            ratio = big["peak_rss_anon_gib"] / small["peak_rss_anon_gib"]
            print(f"\nmicro-batch {mode}: memory {big['pairs']:,} / {small['pairs']:,} pairs: {ratio:.2f}x "
                  f"(goal <= 1.2x); at {big['pairs']:,}: {big['peak_rss_anon_gib']:.2f} GiB (goal <= 3 GiB)")


if __name__ == "__main__":
    main()
