"""Is alignprobe ready for a GPU? One command, a few minutes on one CUDA device, figures as JSON.

    python benchmarks/gpu_check.py                      # writes gpu_check.json, prints a summary
    python benchmarks/gpu_check.py --out figs.json --steps 8
    python benchmarks/gpu_check.py --cpu-smoke          # every section at toy size on the CPU (tests the script)

Sections (each one's failure is recorded and the others still run):

1. ``encode``: a tiny encoder in fp16 and bf16 against fp32 on the same inputs -- the
   random-weight ViT-S control (``random-vit``, timm) on drawn images and the packaged
   MiniLM (``minilm``) on template captions: cosine of each row with its fp32 row (min and
   mean) and the largest absolute difference.
2. ``sail_probe``: the ``sail-probe`` preset (linear heads 2,048 / 1,024 -> 2,048, Lion,
   the chunked sigmoid loss, batch 32,768) through the public `Trainer`, streamed from
   synthetic fp16 features in host memory, under ``bf16`` and ``fp16`` autocast: steps/s
   (median of the steps after the first), peak GPU memory, and the fraction of this GPU's
   GEMM peak -- measured in the same run (square products in fp32, bf16 and fp16). The heads'
   GEMMs run in the autocast dtype and so do the loss's products (``matmul_dtype``, as in the
   reference's autocast), so the ideal step time is ``(head + loss FLOPs) / half-precision
   peak``; the fraction is that ideal over the measured step. (``--tf32`` lets the remaining
   fp32 matmuls use TF32.)
3. ``sail``: the ``sail`` preset (star heads w = 8 into 1,024-d) at batch 32,768 in bf16,
   one step after one warm-up step: seconds, peak memory, the micro-batch ``auto`` picked.
4. ``nccl``: with two or more GPUs, the same small bf16 run under ``torchrun
   --nproc_per_node 2`` (NCCL) and in one process; the per-epoch held-out losses must
   agree (the distributed loss is the single-process loss, split).

On a machine without CUDA it prints why and exits 0 (unless ``--cpu-smoke``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

DIST_WORKER = "--nccl-worker"
#: Feature widths of the paper's pairs: DINOv2-L CLS ++ mean patch (2 x 1,024), GTE-large (1,024).
D_IMG, D_TXT = 2048, 1024


# --------------------------------------------------------------------------- shared pieces


def gemm_peaks(device, n: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of an ``n x n x n`` product in fp32, bf16 and fp16 on ``device`` (best of ``repeats``)."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if device.type == "cpu" and dtype == torch.float16:
            continue
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * n**3 / best
        del a, b
    return out


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_pairs(n: int, d_img: int, d_txt: int, seed: int = 0):
    """fp16 features that share a 64-d latent (what an fp16 embedding cache holds), in host memory."""
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    to_img = torch.randn(64, d_img, generator=g) / 8
    to_txt = torch.randn(64, d_txt, generator=g) / 8
    image = (z @ to_img + 0.5 * torch.randn(n, d_img, generator=g)).half()
    text = (z @ to_txt + 0.5 * torch.randn(n, d_txt, generator=g)).half()
    return image, text


def peak_memory_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def timed_fit(config, image, text, steps: int) -> dict:
    """Fit for ``steps`` steps (one epoch's worth of data); per-step seconds with the device synchronised."""
    import torch

    from alignprobe.probe.training.engine import Trainer

    device = torch.device(config.device)
    times: list[float] = []
    clock = {"t": time.perf_counter()}

    def on_step(trainer, event, info):
        if event == "step":
            sync(device)
            now = time.perf_counter()
            times.append(now - clock["t"])
            clock["t"] = now

    peak_memory_reset(device)
    sync(device)
    clock["t"] = time.perf_counter()
    trainer = Trainer(config, quiet=True).fit(image, text, callbacks=[on_step])
    losses = [h["train_loss"] for h in trainer.history_]
    return {"step_seconds": times[:steps], "micro_batch": trainer.micro_batch_, "train_loss": losses,
            "peak_memory_gib": peak_memory_gib(device), "notes": trainer.notes_}


# --------------------------------------------------------------------------- sections


def check_encode(device, smoke: bool) -> dict:
    import torch
    from PIL import Image, ImageDraw

    from alignprobe.backbones import create_text_encoder, create_vision_encoder

    rng = np.random.default_rng(0)
    images = []
    for k in range(8 if smoke else 32):
        img = Image.new("RGB", (224, 224), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, 180, 2)
            draw.ellipse([int(x), int(y), int(x) + 40, int(y) + 40], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        images.append(img)
    captions = [f"a photo of {n} {c} {s}" for n in ("one", "two", "three", "many")
                for c in ("red", "blue") for s in ("circles", "squares", "shapes", "dots")]
    dtypes = ("fp32", "bf16") if smoke else ("fp32", "fp16", "bf16")
    out = {}
    for modality, name, items, make in (("vision", "random-vit", images, create_vision_encoder),
                                        ("text", "minilm", captions, create_text_encoder)):
        try:
            feats = {}
            for dt in dtypes:
                encoder = make(name, device=str(device), dtype=dt)
                feats[dt] = encoder.encode(items).double()
                del encoder
            ref = feats["fp32"]
            row = {}
            for dt in dtypes[1:]:
                cos = torch.nn.functional.cosine_similarity(feats[dt], ref, dim=1)
                row[dt] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                           "max_abs_diff": float((feats[dt] - ref).abs().max()),
                           "ok": bool(cos.min() > 0.99)}
            out[f"{modality}:{name}"] = {"rows": len(items), "dim": int(ref.shape[1]), **row}
        except Exception as err:  # a missing optional backend (timm, the packaged MiniLM) skips, not fails
            out[f"{modality}:{name}"] = {"skipped": f"{type(err).__name__}: {err}"}
    return out


def probe_flops(batch: int, d_img: int, d_txt: int, out_dim: int, texts_per_image: float = 1.0) -> tuple[float, float]:
    """(head FLOPs, loss FLOPs) of one step, counted as benchmarks/probe_scale.py counts them:
    each head's forward and weight gradient; the loss's similarity product, its
    recomputation in the backward and the two gradient products."""
    m = batch * texts_per_image
    heads = 4 * out_dim * (batch * d_img + m * d_txt)
    loss = 8 * batch * m * out_dim
    return heads, loss


def check_sail_probe(device, batch: int, steps: int, smoke: bool, dims: tuple[int, int, int]) -> dict:
    from alignprobe.probe.training.config import TrainConfig

    d_img, d_txt, out_dim = dims
    n = batch * steps
    image, text = synthetic_pairs(n, d_img, d_txt)
    n_peak = 512 if smoke else 8192
    peaks = gemm_peaks(device, n_peak)
    result = {"batch": batch, "pairs": n, "dims": list(dims), "gemm_peak_flops": peaks, "runs": {}}
    heads, loss = probe_flops(batch, d_img, d_txt, out_dim)
    precisions = ("bf16",) if smoke else ("bf16", "fp16")
    for precision in precisions:
        config = TrainConfig.preset("sail-probe", batch_size=batch, epochs=1, device=str(device), precision=precision,
                                    checkpoint_every=None, out_dim=out_dim, eval_every=0)
        try:
            run = timed_fit(config, image, text, steps)
        except Exception as err:
            result["runs"][precision] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
            continue
        timed = run["step_seconds"][1:] or run["step_seconds"]  # the first step pays for warm-up
        step_s = float(np.median(timed))
        half_peak = peaks.get(precision, peaks["bf16"])
        ideal = (heads + loss) / half_peak  # the loss's products run in the autocast dtype too
        result["runs"][precision] = {
            "steps": len(run["step_seconds"]), "step_seconds": run["step_seconds"], "median_step_s": step_s,
            "steps_per_s": 1.0 / step_s, "achieved_tflops": (heads + loss) / step_s / 1e12,
            "ideal_step_s": ideal, "fraction_of_peak": ideal / step_s, "peak_memory_gib": run["peak_memory_gib"],
            "micro_batch": run["micro_batch"], "train_loss": run["train_loss"]}
    return result


def check_sail(device, batch: int, smoke: bool, dims: tuple[int, int, int]) -> dict:
    from alignprobe.probe.training.config import TrainConfig

    d_img, d_txt, out_dim = dims
    image, text = synthetic_pairs(batch * 2, d_img, d_txt, seed=1)
    config = TrainConfig.preset("sail", batch_size=batch, epochs=1, device=str(device), precision="bf16",
                                checkpoint_every=None, out_dim=out_dim, eval_every=0,
                                **({"width": 2} if smoke else {}))
    run = timed_fit(config, image, text, 2)
    return {"batch": batch, "dims": list(dims), "width": config.width, "step_seconds": run["step_seconds"],
            "one_step_s": run["step_seconds"][-1], "peak_memory_gib": run["peak_memory_gib"],
            "micro_batch": run["micro_batch"], "notes": run["notes"]}


def dist_config(device: str):
    from alignprobe.probe.training.config import TrainConfig

    return TrainConfig.preset("sail-probe", batch_size=4096, epochs=3, lr=1e-3, out_dim=512, val_fraction=0.1,
                              device=device, precision="bf16" if device != "cpu" else "fp32",
                              checkpoint_every=None, eval_every=0, prefetch=False)


def dist_data():
    return synthetic_pairs(4096 * 4, 256, 128, seed=2)


def nccl_worker(out: str) -> None:
    import torch

    from alignprobe.probe.training import distributed as D
    from alignprobe.probe.training.engine import Trainer

    ctx = D.init_distributed("nccl")
    image, text = dist_data()
    t0 = time.perf_counter()
    trainer = Trainer(dist_config("auto"), quiet=True, dist=ctx).fit(image, text)
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        Path(out).write_text(json.dumps({"world_size": ctx.world_size, "backend": ctx.backend, "seconds": seconds,
                                         "val_loss": [h["val_loss"] for h in trainer.history_],
                                         "device": str(torch.cuda.current_device())}))
    D.shutdown(ctx)


def check_nccl(device) -> dict:
    import torch

    from alignprobe.probe.training.engine import Trainer

    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): the NCCL path needs 2"}
    out = Path(tempfile.mkdtemp(prefix="alignprobe-nccl-")) / "result.json"
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [shutil.which("torchrun")] if shutil.which("torchrun") \
        else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node", "2", __file__, DIST_WORKER, str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        return {"error": f"torchrun exited {proc.returncode}", "output": (proc.stdout + proc.stderr)[-4000:]}
    two = json.loads(out.read_text())
    two["wall_s"] = time.perf_counter() - t0
    image, text = dist_data()
    one = Trainer(dist_config(str(device)), quiet=True).fit(image, text)
    one_val = [h["val_loss"] for h in one.history_]
    diff = max(abs(a - b) / abs(b) for a, b in zip(two["val_loss"], one_val))
    # bf16 heads on different GPUs reduce in a different order: agreement to bf16 rounding, not bits
    return {"two_process": two, "one_process_val_loss": one_val, "max_relative_diff": diff, "ok": diff < 2e-2}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON figures go")
    parser.add_argument("--batch", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=6, help="sail-probe steps per precision (the first is warm-up)")
    parser.add_argument("--tf32", action="store_true", help="let the remaining fp32 matmuls use TF32")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: encode,sail_probe,sail,nccl")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every section at toy size on the CPU (checks the script, measures nothing)")
    parser.add_argument(DIST_WORKER, dest="nccl_worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nccl_worker:
        nccl_worker(args.nccl_worker)
        return 0

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check. "
              "Run it on a machine with an NVIDIA GPU (or --cpu-smoke to exercise the script on the CPU).")
        return 0
    smoke = args.cpu_smoke
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    batch, steps = (256, 3) if smoke else (args.batch, max(2, args.steps))
    probe_dims = (64, 32, 64) if smoke else (D_IMG, D_TXT, 2048)
    sail_dims = (64, 32, 32) if smoke else (D_IMG, D_TXT, 1024)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_smoke": smoke, "tf32": args.tf32,
              "device": torch.cuda.get_device_name(0) if not smoke else "cpu",
              "gpus": torch.cuda.device_count(), "sections": {}}
    sections = {"encode": lambda: check_encode(device, smoke),
                "sail_probe": lambda: check_sail_probe(device, batch, steps, smoke, probe_dims),
                "sail": lambda: check_sail(device, batch, smoke, sail_dims),
                "nccl": lambda: check_nccl(device) if not smoke else {"skipped": "--cpu-smoke"}}
    t_all = time.perf_counter()
    for name, run in sections.items():
        if name in skip:
            report["sections"][name] = {"skipped": "--skip"}
            continue
        t0 = time.perf_counter()
        try:
            report["sections"][name] = run()
        except Exception as err:
            report["sections"][name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        report["sections"][name]["section_seconds"] = time.perf_counter() - t0
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report["total_seconds"] = time.perf_counter() - t_all
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print_summary(report)
    print(f"figures written to {args.out}")
    return 0


def print_summary(report: dict) -> None:
    s = report["sections"]
    print(f"gpu_check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']}), "
          f"{report['total_seconds']:.0f} s")
    for key, row in s.get("encode", {}).items():
        if isinstance(row, dict) and "dim" in row:
            parts = [f"{dt}: cos min {row[dt]['cosine_min']:.5f}" for dt in ("fp16", "bf16") if dt in row]
            print(f"  encode {key}: " + ", ".join(parts))
        elif isinstance(row, dict) and "skipped" in row:
            print(f"  encode {key}: skipped ({row['skipped'][:80]})")
    for precision, run in s.get("sail_probe", {}).get("runs", {}).items():
        if "median_step_s" in run:
            print(f"  sail-probe {precision} batch {s['sail_probe']['batch']:,}: {run['steps_per_s']:.2f} steps/s, "
                  f"{run['fraction_of_peak']:.2f} of the GEMM peak, peak memory {run['peak_memory_gib'] or 0:.1f} GiB")
        else:
            print(f"  sail-probe {precision}: {run.get('error')}")
    sail = s.get("sail", {})
    if "one_step_s" in sail:
        print(f"  sail one step (bf16, batch {sail['batch']:,}): {sail['one_step_s']:.2f} s, peak memory "
              f"{sail['peak_memory_gib'] or 0:.1f} GiB, micro-batch {sail['micro_batch']}")
    nccl = s.get("nccl", {})
    if "max_relative_diff" in nccl:
        print(f"  nccl 2 processes vs 1: held-out losses within {nccl['max_relative_diff']:.2e} (ok: {nccl['ok']})")
    for name, row in s.items():
        if isinstance(row, dict) and "error" in row:
            print(f"  {name}: ERROR {row['error']}")


if __name__ == "__main__":
    sys.exit(main())
