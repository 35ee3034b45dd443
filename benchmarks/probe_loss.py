"""Chunked vs naive sigmoid loss: exactness, peak memory and time (forward + backward, fp32, CPU).

    python benchmarks/probe_loss.py            # batch 32,768 x 1024-d (several minutes)
    python benchmarks/probe_loss.py --quick    # batch 4,096 x 256-d

Every measurement runs in its own subprocess, so its peak resident memory
(``ru_maxrss``) belongs to that measurement alone; the inputs' own memory
(measured before the loss runs) is subtracted to give the loss's working memory.

The naive loss at batch 32,768 needs several 4 GiB logit-sized matrices and
does not fit on a 23 GiB machine, so it is measured at smaller batches, where
its working memory is ``a * N^2`` bytes; the figure printed for the full batch
is that fit, extrapolated, and labelled as such. Exactness is checked against
the naive loss at the largest batch where both run in one process, and at the
full batch against an fp64 run of the chunked loss (``--full-check``; the
chunked loss is exact in fp64 as well, so this compares fp32 to fp64 rounding).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

WORKER = "--worker"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(n: int, d: int, dtype):
    import torch

    g = torch.Generator().manual_seed(0)
    # Partly aligned pairs: text = image + noise, so the positives matter.
    image = torch.randn(n, d, generator=g)
    text = image + 1.5 * torch.randn(n, d, generator=g)
    leaves = {
        "image": image.to(dtype).requires_grad_(),
        "text": text.to(dtype).requires_grad_(),
        "t": torch.tensor(math.log(20.0), dtype=dtype, requires_grad=True),
        "b": torch.tensor(-10.0, dtype=dtype, requires_grad=True),
    }
    return leaves


def _run(leaves, chunk):
    from alignprobe.probe.training.losses import sigmoid_loss

    loss = sigmoid_loss(leaves["image"], leaves["text"], leaves["t"].exp(), leaves["b"], chunk_size=chunk)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


def worker_measure(n: int, d: int, chunk: int | None) -> dict:
    import torch

    leaves = _inputs(n, d, torch.float32)
    base = _rss_bytes()
    start = time.perf_counter()
    loss, _ = _run(leaves, chunk)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"n": n, "d": d, "chunk": chunk, "seconds": seconds, "peak_bytes": peak,
            "base_bytes": base, "work_bytes": peak - base, "loss": float(loss)}


def _diffs(loss, grads, ref_loss, ref_grads) -> dict:
    out = {"loss_abs": abs(float(loss) - float(ref_loss)),
           "loss_rel": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))}
    for k, g in grads.items():
        r = ref_grads[k].to(g.dtype)
        diff = (g - r).abs().max().item()
        out[f"grad_{k}_abs"] = diff
        out[f"grad_{k}_rel"] = diff / max(r.abs().max().item(), 1e-30)
    return out


def worker_compare_naive(n: int, d: int, chunk: int) -> dict:
    import torch

    ref_loss, ref_grads = _run(_inputs(n, d, torch.float32), None)
    loss, grads = _run(_inputs(n, d, torch.float32), chunk)
    return {"n": n, "d": d, "chunk": chunk, "reference": "naive fp32", **_diffs(loss, grads, ref_loss, ref_grads)}


def worker_compare_fp64(n: int, d: int, chunk: int) -> dict:
    import torch

    loss, grads = _run(_inputs(n, d, torch.float32), chunk)
    grads = {k: v.clone() for k, v in grads.items()}
    ref_loss, ref_grads = _run(_inputs(n, d, torch.float64), chunk)
    return {"n": n, "d": d, "chunk": chunk, "reference": "chunked fp64", **_diffs(loss, grads, ref_loss, ref_grads)}


WORKERS = {"measure": worker_measure, "naive": worker_compare_naive, "fp64": worker_compare_fp64}


def spawn(kind: str, n: int, d: int, chunk: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), WORKER, kind, str(n), str(d), str(chunk or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} n={n} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(b: float) -> str:
    return f"{b / 1024**3:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4,096 x 256-d instead of 32,768 x 1024-d")
    parser.add_argument("--chunk", type=int, default=4096, help="tile size of the chunked loss (default 4096)")
    parser.add_argument("--full-check", action=argparse.BooleanOptionalAction, default=None,
                        help="compare chunked fp32 with chunked fp64 at the full batch (default: on unless --quick)")
    args = parser.parse_args()
    n, d = (4096, 256) if args.quick else (32768, 1024)
    chunk = min(args.chunk, n // 4) if args.quick else args.chunk
    naive_sizes = [n // 8, n // 4, n // 2] if args.quick else [2048, 4096, 8192]
    full_check = (not args.quick) if args.full_check is None else args.full_check
    import torch

    print(f"sigmoid loss, forward + backward, fp32, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"target batch {n:,} x {d}-d, chunk {chunk}\n")

    print("exactness (max abs diff; relative to the reference's max abs value in brackets)")
    comparisons = [spawn("naive", naive_sizes[-1], d, chunk)]
    if full_check:
        comparisons.append(spawn("fp64", n, d, chunk))
    for c in comparisons:
        grads = ", ".join(f"{k} {c[f'grad_{k}_abs']:.1e} [{c[f'grad_{k}_rel']:.1e}]" for k in ("image", "text", "t", "b"))
        print(f"  N={c['n']:>6,} vs {c['reference']:<13}: loss {c['loss_abs']:.1e} [{c['loss_rel']:.1e}]; grads {grads}")

    print("\npeak working memory (peak RSS - RSS with the inputs allocated) and time")
    rows = []
    for size in naive_sizes:
        naive = spawn("measure", size, d, None)
        tiled = spawn("measure", size, d, min(chunk, size))
        rows.append((size, naive, tiled))
        print(f"  N={size:>6,}: naive {gib(naive['work_bytes'])} {naive['seconds']:7.2f} s | chunked "
              f"{gib(tiled['work_bytes'])} {tiled['seconds']:7.2f} s | memory ratio "
              f"{tiled['work_bytes'] / naive['work_bytes']:.3f}, time ratio {tiled['seconds'] / naive['seconds']:.2f}")
    # naive working memory = a * N^2 (+ O(N d), negligible): least-squares a over the measured sizes
    a = sum(r[1]["work_bytes"] * r[0] ** 2 for r in rows) / sum(r[0] ** 4 for r in rows)
    full = spawn("measure", n, d, chunk)
    naive_full = a * n**2
    print(f"  naive working memory ~ {a:.1f} bytes x N^2 (fit to the sizes above)")
    print(f"  N={n:>6,}: chunked measured {gib(full['work_bytes'])} (peak RSS {gib(full['peak_bytes'])}), "
          f"{full['seconds']:.1f} s; naive EXTRAPOLATED {gib(naive_full)} -> memory ratio "
          f"{full['work_bytes'] / naive_full:.4f}")
    ok_exact = all(c["loss_abs"] < 1e-5 and all(c[f"grad_{k}_abs"] < 1e-5 for k in ("image", "text", "t", "b"))
                   for c in comparisons)
    ok_memory = full["work_bytes"] < naive_full / 4 and all(t["work_bytes"] < nv["work_bytes"] / 4 for s, nv, t in rows if s >= 4 * chunk)
    print(f"\nexact (< 1e-5): {'PASS' if ok_exact else 'FAIL'}; chunked memory < 1/4 of naive: {'PASS' if ok_memory else 'FAIL'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        kind, n_arg, d_arg, chunk_arg = sys.argv[2:6]
        print(json.dumps(WORKERS[kind](int(n_arg), int(d_arg), int(chunk_arg) or None)))
    else:
        main()
