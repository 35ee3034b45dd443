"""SAIL training step: time, throughput, memory and matmul efficiency; chunked vs naive loss.

    python benchmarks/train_step.py              # star heads at SAIL's dims, batch 4,096 / 16,384 / 32,768
    python benchmarks/train_step.py --quick      # small dims and batches (a minute)
    python benchmarks/train_step.py --device cuda --precision bf16   # on a GPU
    python benchmarks/train_step.py --small-data-lr [--quick]         # Lion lr for small pair sets

The step is `alignprobe.probe.training.step.train_step` -- what the engine's `Trainer`
runs -- on random embeddings: star heads (w = 8, vision 2048 -> 1024, text
1024 -> 1024), Lion, the chunked sigmoid loss (chunk 4,096), one caption per
image. ``--micro-batch`` (default 4,096; the trainer's default is "auto") switches batches
larger than it to the two-pass (GradCache) step; batch 16,384 is also run in
one pass for comparison (``--one-pass-batches``).

Matmul efficiency is the matmul FLOPs the step really executes (forward,
backward for weights and inputs, the two-pass step's second forward, the
loss's three GEMMs per tile), per second, as a fraction of this machine's GEMM
peak measured in the same process just before and just after the step (square
fp32 -- or bf16 -- products; the higher of the two is the reference, since the
load of a shared machine drifts). "Useful" counts a one-pass step's FLOPs only
(no recomputation). On a shared CPU the wall-clock fraction also measures how
much of the cores other processes took during the step; the same ratio per
CPU-second (process time of all threads, the step's against the GEMM's) does
not, and is printed beside it.

On the CPU every measurement runs in its own subprocess, so its peak resident
memory (``ru_maxrss``) is its own; "working memory" is that peak minus the
resident memory once the model, optimizer state and inputs exist. On CUDA the
peak is ``torch.cuda.max_memory_allocated`` above the same baseline.
The naive loss at batch 32,768 needs ~22 GiB and is not run: its working
memory there is extrapolated from the measured sizes (``a * N^2``), labelled so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

WORKER = "--worker"
GiB = 1024**3


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Memory:
    """Working memory above a baseline: peak RSS on the CPU, peak allocation on CUDA."""

    def __init__(self, device):
        import torch

        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.base = _rss()

    def peak(self) -> tuple[int, int]:
        """(working bytes, total peak bytes)."""
        import torch

        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _peak_rss()
        return peak - self.base, peak


# --------------------------------------------------------------------------- FLOP counts


def head_forward_flops(rows: int, d_in: int, d_out: int, kind: str, width: int) -> float:
    """Matmul FLOPs of one head's forward pass (2 per multiply-add)."""
    if kind == "star":
        hidden = width * d_in
        return 2.0 * rows * d_in * 2 * hidden + 2.0 * rows * hidden * d_out
    if kind == "linear":
        return 2.0 * rows * d_in * d_out
    raise ValueError(kind)


def step_flops(batch: int, texts: int, dims: dict, two_pass: bool) -> tuple[float, float]:
    """(executed, useful) matmul FLOPs of one training step.

    Backward is twice the forward: weight gradients of every Linear, and input
    gradients of every Linear -- the first one's too, since the LayerNorm
    before it has parameters. The two-pass step runs the forward once more.
    The loss runs three GEMMs per logit tile (logits, two gradients).
    """
    forward = (head_forward_flops(batch, dims["vision"], dims["out"], dims["head"], dims["width"])
               + head_forward_flops(texts, dims["text"], dims["out"], dims["head"], dims["width"]))
    loss = 3 * 2.0 * batch * texts * dims["out"]
    useful = 3 * forward + loss
    return useful + (forward if two_pass else 0.0), useful


# --------------------------------------------------------------------------- workers


def _setup(args):
    import torch

    torch.set_num_threads(args["threads"])
    if args.get("device", "cpu").startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch, torch.device(args.get("device", "cpu"))


def gemm_rate(device, dtype_name: str, n: int, repeats: int) -> tuple[float, float, float]:
    """(best, median) FLOP/s of an ``n^3`` matrix product after a warm-up, and its
    best FLOPs per CPU-second (process time, all threads)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times, cpu = [], []
    for i in range(repeats + 1):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    flops = 2.0 * n**3
    return flops / min(times), flops / statistics.median(times), flops / max(min(cpu), 1e-9)


def worker_gemm(args) -> dict:
    torch, device = _setup(args)
    best, median, per_cpu = gemm_rate(device, args["dtype"], args["n"], args["repeats"])
    return {"flops_per_s": best, "median_flops_per_s": median, "flops_per_cpu_s": per_cpu, "n": args["n"]}


def worker_step(args) -> dict:
    torch, device = _setup(args)
    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.config import TrainConfig
    from alignprobe.probe.training.step import make_optimizer, train_step as sail_step

    dims = args["dims"]
    batch, texts = args["batch"], args["batch"] * args["positives"]
    config = TrainConfig(out_dim=dims["out"], image_head=dims["head"], text_head=dims["head"], width=dims["width"],
                        micro_batch=args["micro_batch"], chunk_size=args["chunk"], precision=args["precision"],
                        device=str(device))
    torch.manual_seed(0)
    model = AlignmentModel(dims["vision"], dims["text"], dims["out"], dims["head"], dims["head"], dims["width"]).to(device)
    optimizer = make_optimizer(model, config)
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, dims["vision"], generator=g).to(device)
    captions = torch.randn(texts, dims["text"], generator=g).to(device)
    positive_index = torch.arange(batch, device=device).repeat(args["positives"])
    # a small step first allocates gradients and optimizer state, which belong to the baseline
    sail_step(model, optimizer, images[:64], captions[:64], torch.arange(64, device=device), 64, config)
    _sync(device)
    gemm_before = gemm_rate(device, args["gemm_dtype"], args["gemm_n"], 3)
    memory = _Memory(device)
    times, cpu, losses, faults = [], [], [], []
    for _ in range(args["steps"]):
        _sync(device)
        t0, c0, f0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        loss, _ = sail_step(model, optimizer, images, captions, positive_index, batch, config,
                            positives=args["positives"])
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        losses.append(loss)
    working, peak = memory.peak()
    # The GEMM peak again, in this process right after the step: on a shared
    # machine the load drifts, and the step is compared with the higher of the two.
    gemm_after = gemm_rate(device, args["gemm_dtype"], args["gemm_n"], 3)
    two_pass = args["micro_batch"] is not None and max(batch, texts) > args["micro_batch"]
    executed, useful = step_flops(batch, texts, dims, two_pass)
    seconds = min(times)
    return {"seconds": seconds, "all_seconds": times, "samples_per_s": batch / seconds, "two_pass": two_pass,
            "executed_flops": executed, "useful_flops": useful, "working_bytes": working, "peak_bytes": peak,
            "loss": losses[-1], "cpu_seconds": min(cpu), "page_faults": faults[times.index(min(times))],
            "gemm_before": gemm_before[0], "gemm_after": gemm_after[0],
            "gemm_per_cpu_s": max(gemm_before[2], gemm_after[2])}


def worker_loss(args) -> dict:
    torch, device = _setup(args)
    import math

    from alignprobe.probe.training.losses import sigmoid_loss

    n, d = args["batch"], args["dim"]
    g = torch.Generator(device="cpu").manual_seed(0)
    image = torch.randn(n, d, generator=g)
    text = image + 1.5 * torch.randn(n, d, generator=g)
    image, text = image.to(device).requires_grad_(), text.to(device).requires_grad_()
    t = torch.tensor(math.log(20.0), device=device, requires_grad=True)
    b = torch.tensor(-10.0, device=device, requires_grad=True)
    times = []
    memory = None
    for i in range(args["repeats"] + (1 if device.type == "cuda" else 0)):
        for leaf in (image, text, t, b):
            leaf.grad = None
        if memory is None and (device.type != "cuda" or i == 1):
            memory = _Memory(device)
        _sync(device)
        t0 = time.perf_counter()
        loss = sigmoid_loss(image, text, t.exp(), b, chunk_size=args["chunk"])
        loss.backward()
        _sync(device)
        if device.type != "cuda" or i > 0:
            times.append(time.perf_counter() - t0)
    working, peak = memory.peak()
    return {"seconds": min(times), "working_bytes": working, "peak_bytes": peak, "loss": float(loss)}


WORKERS = {"gemm": worker_gemm, "step": worker_step, "loss": worker_loss}


# glibc serves allocations above 32 MiB with fresh mmap pages and unmaps them on
# free, so a CPU step faults in (and the kernel zeroes) every large activation
# anew: ~1.4 million page faults per batch-4,096 step. These settings (read by
# glibc at process start) keep freed memory for reuse; later steps then fault
# nothing. README "SAIL training" recommends them for CPU runs.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(2**30)}


def measure(kind: str, args: dict, device: str) -> dict:
    """Run one measurement; on the CPU in a fresh subprocess (for a clean peak RSS)."""
    args = {**args, "device": device}
    if device.startswith("cuda"):
        return WORKERS[kind](args)
    env = {**os.environ, **(KEEP_FREED_MEMORY if args.get("malloc_keep") else {})}
    out = subprocess.run([sys.executable, __file__, WORKER, kind, json.dumps(args)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- small data


def small_data_lr(quick: bool) -> None:
    """Which Lion learning rate star heads need on a small pair set (`training.config.small_data_changes`).

    The planted structure of benchmarks/probe_small_data.py (shared 32-d latent,
    image = z A + noise + offset, text = tanh(z B) + noise; 256-d / 192-d), star
    heads w = 8 into 256-d, Lion, batch 1,024, early stopping (patience 20).
    """
    import numpy as np
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from probe_small_data import planted

    from alignprobe.probe.training.evaluation import retrieval_scores
    from alignprobe.probe.training.config import resolve_recipe
    from alignprobe.probe.training.engine import Trainer

    torch.set_num_threads(1)
    n, epochs = (2000, 200) if quick else (3000, 200)
    lrs = [1e-4, 3e-4, 1e-3] if quick else [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    image, text = planted(n, 3.0)
    print(f"{n} planted pairs, star heads w=8 -> 256-d, Lion, batch 1,024, up to {epochs} epochs; "
          f"chance R@1 = {1 / round(0.1 * n):.4f}")
    print("| lr | init val loss | best val loss | best epoch / run | i2t R@1 | t2i R@1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for lr in lrs:
        start = time.perf_counter()
        config, _ = resolve_recipe("sail", n, dict(out_dim=256, lr=lr, epochs=epochs, device="cpu", micro_batch=None))
        trainer = Trainer(config, quiet=True).fit(image, text)
        v = trainer.val_index_
        r = retrieval_scores(trainer.transform_image(image[v]), trainer.transform_text(text[v]), np.arange(len(v)))
        print(f"| {lr:g} | {trainer.initial_val_loss_:.4f} | {trainer.best_score_:.4f} | {trainer.best_epoch_} / "
              f"{len(trainer.history_)} | {r['i2t_r1']:.3f} | {r['t2i_r1']:.3f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


# --------------------------------------------------------------------------- main


def _gib(b) -> str:
    return f"{b / GiB:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dims (512/256 -> 256) and batches 1,024-4,096")
    parser.add_argument("--batches", default=None, help="comma-separated batches [4096,16384,32768]")
    parser.add_argument("--micro-batch", type=int, default=4096,
                        help="two-pass above this batch [4096; the trainer's default 'auto' picks per machine]")
    parser.add_argument("--one-pass-batches", default=None,
                        help="comma-separated batches also run in one pass, for comparison [the middle batch; "
                             "'none' for no comparison]")
    parser.add_argument("--positives", type=int, default=1, help="captions per image (SAIL multi-positive: 2)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per batch (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--skip-loss", action="store_true", help="only the training step")
    parser.add_argument("--malloc-keep", action="store_true",
                        help="run the CPU workers with glibc keeping freed memory (no page faults after the "
                             "first step; use with --steps 2)")
    parser.add_argument("--json", default=None, help="also write all figures to this file")
    parser.add_argument("--small-data-lr", action="store_true",
                        help="instead: the Lion learning rate star heads need on a small pair set")
    args = parser.parse_args()
    if args.small_data_lr:
        small_data_lr(args.quick)
        return

    import torch

    on_gpu = args.device.startswith("cuda")
    if args.quick:
        dims = {"vision": 512, "text": 256, "out": 256, "head": "star", "width": 8}
        batches, chunk, loss_dim = [1024, 2048, 4096], 1024, 256
        micro = min(args.micro_batch, 1024)
        naive_sizes, loss_small, loss_big = [1024, 2048], 1024, 4096
    else:
        dims = {"vision": 2048, "text": 1024, "out": 1024, "head": "star", "width": 8}
        batches, chunk, loss_dim = [4096, 16384, 32768], 4096, 1024
        micro = args.micro_batch
        naive_sizes, loss_small, loss_big = [4096, 8192], 4096, 32768
        if on_gpu:
            naive_sizes = [4096, 8192, 16384]
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    common = {"threads": args.threads, "malloc_keep": args.malloc_keep}
    report: dict = {"device": args.device, "threads": args.threads, "torch": torch.__version__, "dims": dims,
                    "precision": args.precision, "micro_batch": micro, "positives": args.positives}
    print(f"device {args.device}, {args.threads} threads, torch {torch.__version__}, precision {args.precision}; "
          f"star heads w={dims['width']}: vision {dims['vision']} / text {dims['text']} -> {dims['out']}", flush=True)

    gemm_dtype = "bf16" if args.precision == "bf16" else "fp32"
    gemm = measure("gemm", {**common, "dtype": gemm_dtype, "n": 8192 if on_gpu else 4096, "repeats": 5}, args.device)
    peak = gemm["flops_per_s"]
    report["gemm"] = gemm
    print(f"GEMM peak ({gemm_dtype}, {gemm['n']}^3, best of 5): {peak / 1e9:.1f} GFLOP/s "
          f"(median {gemm['median_flops_per_s'] / 1e9:.1f})", flush=True)

    if not on_gpu:  # what the trainer's micro_batch='auto' would pick here (the rows below fix it)
        from alignprobe.probe.training.heads import AlignmentModel
        from alignprobe.probe.training.engine import resolve_micro_batch

        probe_model = AlignmentModel(dims["vision"], dims["text"], dims["out"], dims["head"], dims["head"], dims["width"])
        picks = {b: resolve_micro_batch(probe_model, b, b * args.positives, torch.device("cpu")) for b in batches}
        del probe_model
        print("trainer's micro_batch='auto' on this machine now: " + ", ".join(
            f"{b:,} -> {'one pass' if m is None else f'micro {m:,}'}" for b, m in picks.items()), flush=True)
        report["auto_micro_batch"] = picks
    runs = [(b, micro) for b in batches]
    if args.one_pass_batches is None:
        one_pass = [batches[1]] if len(batches) > 1 else []
    elif args.one_pass_batches.strip().lower() == "none":
        one_pass = []
    else:
        one_pass = [int(b) for b in args.one_pass_batches.split(",")]
    runs += [(b, None) for b in one_pass if b > micro]
    report["steps"] = []
    print("\n| batch | step | s/step | samples/s | working memory | peak memory | matmul FLOP/s | "
          "fraction of GEMM peak (peak measured around the step) | useful fraction | "
          "per CPU-second: fraction (useful) | page faults |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, mb in runs:
        res = measure("step", {**common, "dims": dims, "batch": batch, "micro_batch": mb, "chunk": chunk,
                               "precision": args.precision, "positives": args.positives, "steps": args.steps,
                               "gemm_dtype": gemm_dtype, "gemm_n": gemm["n"]}, args.device)
        res.update(batch=batch, micro_batch=mb)
        report["steps"].append(res)
        if "error" in res:
            print(f"| {batch:,} | {'two-pass' if mb else 'one pass'} | failed: {res['error']} |", flush=True)
            continue
        rate = res["executed_flops"] / res["seconds"]
        ref = max(res["gemm_before"], res["gemm_after"])
        # FLOPs per CPU-second, step vs GEMM: what the cores did while they ran this
        # process, so the load of other processes on a shared machine cancels out
        cpu_rate, cpu_ref = res["executed_flops"] / res["cpu_seconds"], res["gemm_per_cpu_s"]
        mode = f"two-pass (micro {mb:,})" if res["two_pass"] else "one pass"
        print(f"| {batch:,} | {mode} | {res['seconds']:.2f} | {res['samples_per_s']:.0f} | "
              f"{_gib(res['working_bytes'])} | {_gib(res['peak_bytes'])} | {rate / 1e9:.1f} G | "
              f"{rate / ref:.2f} ({ref / 1e9:.0f} G) | {res['useful_flops'] / res['seconds'] / ref:.2f} | "
              f"{cpu_rate / cpu_ref:.2f} ({res['useful_flops'] / res['cpu_seconds'] / cpu_ref:.2f}) | "
              f"{res['page_faults']:,} |", flush=True)

    if not args.skip_loss:
        report["loss"] = {}
        print(f"\nSigmoid loss alone, forward + backward, {loss_dim}-d features:")
        naive = {}
        for n in naive_sizes:
            naive[n] = measure("loss", {**common, "batch": n, "dim": loss_dim, "chunk": None, "repeats": 1},
                               args.device)
        chunked = {c: measure("loss", {**common, "batch": loss_small, "dim": loss_dim, "chunk": c, "repeats": 1},
                              args.device) for c in (chunk, chunk // 4)}
        for c, res in chunked.items():
            ratio = res["seconds"] / naive[loss_small]["seconds"]
            print(f"  batch {loss_small:,}: naive {naive[loss_small]['seconds']:.2f} s, chunked (chunk {c:,}) "
                  f"{res['seconds']:.2f} s: time ratio {ratio:.2f} (goal <= 1.3)", flush=True)
        big = measure("loss", {**common, "batch": loss_big, "dim": loss_dim, "chunk": chunk, "repeats": 1},
                      args.device)
        good = [n for n in naive if "error" not in naive[n]]
        coeff = max(naive[n]["working_bytes"] / n**2 for n in good) if good else float("nan")
        if loss_big in naive and "error" not in naive[loss_big]:
            naive_big, label = naive[loss_big]["working_bytes"], "measured"
        else:
            naive_big, label = coeff * loss_big**2, f"extrapolated ({coeff:.1f} bytes x N^2, fit to {good})"
        for n in good:
            print(f"  naive batch {n:,}: working memory {_gib(naive[n]['working_bytes'])}, "
                  f"{naive[n]['working_bytes'] / n**2:.1f} bytes x N^2, {naive[n]['seconds']:.2f} s")
        if "error" in big:
            print(f"  chunked batch {loss_big:,}: failed: {big['error']}")
        else:
            print(f"  batch {loss_big:,}: chunked working memory {_gib(big['working_bytes'])} "
                  f"({big['seconds']:.1f} s); naive {_gib(naive_big)} {label}: "
                  f"fraction {big['working_bytes'] / naive_big:.3f} (goal <= 0.25)")
        report["loss"] = {"naive": naive, "chunked_small": chunked, "chunked_big": big,
                          "naive_big_bytes": naive_big, "naive_big_label": label}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=str)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        result = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(result))
    else:
        main()
