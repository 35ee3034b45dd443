"""The small-data probe's training step against the GEMM peak of the same run (issue 20, goal 4).

    python benchmarks/probe_step.py                      # effnet-lite0 x MiniLM shapes: 1,280 / 384 -> 2,048
    python benchmarks/probe_step.py --image-dim 384      # DINOv2-S
    python benchmarks/probe_step.py --rounds 5 --steps 20

What `run` trains below 100k pairs (`training.config.small_data_changes`): linear heads into
2,048-d, batch 240 images (2,160 training images in near-equal batches of at most 256) with
three captions each, AdamW (Lion until 2026-12-07, late), the chunked sigmoid loss. Each variant
runs the engine's own `step.train_step` on drawn fp16-stored embeddings:

* ``fp32``: everything in fp32;
* ``bf16 heads``: the heads under bf16 autocast, the loss's products in fp32 (the recipe until
  2026-12-07 evening);
* ``bf16``: the heads and the loss's three products in bf16 (`pairwise_sigmoid_loss`'s
  ``matmul_dtype``; the reference's ``autocast()`` around its loss), sums and nonlinearities fp32;

``--losses-from FILE`` adds each variant once more with the loss of another version of
``probe/training/losses.py`` (e.g. ``git show HEAD~1:probe/training/losses.py > /tmp/old.py``), so
a change to the loss is measured against its predecessor in the same run.

Each runs with the optimizers ``--optimizers`` names: ``adamw`` (the engine's AdamW, `step.make_optimizer`:
torch's fused CPU kernel where it has one), ``adamw-foreach`` / ``adamw-loop`` (torch's other two
AdamW implementations), ``lion`` (the engine's Lion: ``lion_pytorch.foreach.Lion``) and
``lion-per-tensor`` (``lion_pytorch.Lion``, the engine's until 2026-12-07). The variants run in interleaved rounds and the fastest round of
each is reported (the machine's load drifts), with the step's matrix-product FLOPs -- heads
forward, weight and input gradients (the LayerNorm's gain needs the input gradient), the loss's
three products -- per second as a fraction of the GEMM peak of the step's dtype, measured in the
same process between the rounds, and the time those products take alone, each at its own shape
(`product_times`), as a fraction of the step: the peak of a 2,048^3 product is out of reach of
these thin products on some CPUs (AMX: bf16 tiles need large, square products to fill), so the
second ratio says how far the rest of the step is from free. ``--profile`` then runs each variant's
steps once more under ``torch.profiler`` and prints where a step's time goes: the phases
`step.train_step` labels (heads forward, loss, backward, gradient norm, optimizer) and the matrix
products' share of each. Run it only while nothing else runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import torch
from torch.profiler import ProfilerActivity, profile

from alignprobe._allocator import keep_freed_memory

keep_freed_memory()  # as the CLI does, before torch allocates anything large

from alignprobe.probe.training import step as step_module  # noqa: E402
from alignprobe.probe.training.config import TrainConfig  # noqa: E402
from alignprobe.probe.training.heads import AlignmentModel  # noqa: E402
from alignprobe.probe.training.step import make_optimizer, train_step  # noqa: E402
from gpu_check import gemm_peaks  # noqa: E402  (this folder: the same peak gpu_check.py measures)


def step_flops(n: int, m: int, d_img: int, d_txt: int, d_out: int) -> float:
    heads = 2 * (n * d_img + m * d_txt) * d_out  # one product per head, forward
    return 3 * heads + 3 * 2 * n * m * d_out  # forward, weight and input gradients; the loss's three


OPTIMIZERS = ("adamw", "adamw-foreach", "adamw-loop", "lion", "lion-per-tensor")
#: name -> (label, the step's precision, whether the loss's products run in half precision)
PRECISIONS = {"fp32": ("fp32", "fp32", False), "bf16-heads": ("bf16 heads, fp32 loss", "bf16", False),
              "bf16": ("bf16", "bf16", True)}


def step_products(n: int, m: int, d_img: int, d_txt: int, d_out: int) -> list[tuple[int, int, int]]:
    """The step's matrix products as (rows, inner, cols): each head's forward, weight gradient and
    input gradient, and the loss's logits and its two gradient products."""
    heads = []
    for rows, d_in in ((n, d_img), (m, d_txt)):
        heads += [(rows, d_in, d_out), (d_out, rows, d_in), (rows, d_out, d_in)]
    return heads + [(n, d_out, m), (n, m, d_out), (m, n, d_out)]


def product_times(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int = 5) -> list[float]:
    """Seconds each of the step's products takes alone at its own shape in ``dtype`` (best of
    ``repeats``); their sum is what the step would take if everything else in it were free."""
    times = []
    for rows, inner, cols in shapes:
        a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        times.append(best)
    return times


def load_losses(path: str):
    """Another version of the engine's losses module, loaded from ``path`` under its own name."""
    spec = importlib.util.spec_from_file_location("losses_compared", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Variant:
    def __init__(self, name: str, precision: str, loss_half: bool, optimizer: str, args, losses=None):
        self.name, self.loss_half, self.optimizer_kind, self.losses = name, loss_half, optimizer, losses
        kind = "lion" if optimizer.startswith("lion") else "adamw"
        self.config = TrainConfig(precision=precision, chunk_size=4096, batch_size=args.batch,
                                  lr=3e-4 if kind == "lion" else 1e-2, micro_batch=None, optimizer=kind)
        torch.manual_seed(0)
        self.model = AlignmentModel(args.image_dim, args.text_dim, args.out_dim)
        if optimizer == "lion-per-tensor":
            from lion_pytorch import Lion

            self.optimizer = Lion(self.model.parameters(), lr=3e-4, betas=self.config.betas)
        elif optimizer in ("adamw-foreach", "adamw-loop"):
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, betas=self.config.betas,
                                               foreach=optimizer == "adamw-foreach")
        else:
            self.optimizer = make_optimizer(self.model, self.config)
        self.best = float("inf")

    def run(self, batches, steps: int) -> None:
        # `loss_half=False` recreates the previous behaviour: the step asks `half_dtype` for the
        # loss's product dtype, so None here keeps the loss's products in fp32.
        original, original_loss = step_module.half_dtype, step_module.pairwise_sigmoid_loss
        if not self.loss_half:
            step_module.half_dtype = lambda precision: None
        if self.losses is not None:
            step_module.pairwise_sigmoid_loss = self.losses.pairwise_sigmoid_loss
        try:
            start = time.perf_counter()
            for i in range(steps):
                images, texts, index = batches[i % len(batches)]
                train_step(self.model, self.optimizer, images, texts, index, len(images), self.config)
            self.best = min(self.best, (time.perf_counter() - start) / steps)
        finally:
            step_module.half_dtype, step_module.pairwise_sigmoid_loss = original, original_loss


PHASES = ("heads forward", "loss", "backward", "gradient norm", "optimizer")
PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::dot")


def phase_times(variant: "Variant", batches, steps: int) -> dict[str, float]:
    """Milliseconds a step spends in each phase `step.train_step` labels, and in matrix products
    within each, from ``steps`` steps under torch.profiler (which itself adds a little per op)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        variant.run(batches, steps)
    events = prof.events()
    spans = {name: [(e.time_range.start, e.time_range.end) for e in events if e.name == f"step: {name}"]
             for name in PHASES}
    out: dict[str, float] = {}
    for name, ranges in spans.items():
        out[name] = sum(end - start for start, end in ranges) / steps / 1e3  # us -> ms
        # products: their own (self) time, inside this phase's spans on the same thread
        inside = [e for e in events if e.name in PRODUCTS
                  and any(start <= e.time_range.start and e.time_range.end <= end for start, end in ranges)]
        out[f"{name} products"] = sum(e.self_cpu_time_total for e in inside) / steps / 1e3
    return out


def print_phases(variants, batches, steps: int) -> None:
    print("\nWhere a step's time goes (ms; torch.profiler, in brackets the matrix products within):\n")
    print("| variant | " + " | ".join(PHASES) + " | step |")
    print("|---|" + "--:|" * (len(PHASES) + 1))
    for v in variants:
        t = phase_times(v, batches, steps)
        cells = [f"{t[p]:.1f} ({t[p + ' products']:.1f})" for p in PHASES]
        total, products = sum(t[p] for p in PHASES), sum(t[p + " products"] for p in PHASES)
        print(f"| {v.name} | " + " | ".join(cells) + f" | {total:.1f} ({products:.1f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-dim", type=int, default=1280)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--out-dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=240, help="images a step (the recipe's near-equal batches)")
    parser.add_argument("--captions", type=int, default=3, help="captions per image")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--optimizers", default="adamw,lion",
                        help=f"comma-separated, of {','.join(OPTIMIZERS)}: the engine's AdamW and Lion, torch's "
                             "foreach and for-loop AdamW, lion-pytorch's per-tensor Lion")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated, of fp32, bf16-heads (bf16 heads, fp32 loss products), bf16")
    parser.add_argument("--losses-from", metavar="FILE",
                        help="also run each variant with the losses module in FILE (another version of "
                             "probe/training/losses.py), to compare a change of the loss in one run")
    parser.add_argument("--profile", action="store_true",
                        help="then profile each variant's steps: time per phase of the step, and its matrix products")
    args = parser.parse_args()
    torch.manual_seed(0)
    n, m = args.batch, args.batch * args.captions
    batches = [(torch.randn(n, args.image_dim).abs().half(), torch.randn(m, args.text_dim).half(),
                torch.arange(n).repeat_interleave(args.captions)) for _ in range(4)]
    optimizers, precisions = args.optimizers.split(","), args.precisions.split(",")
    unknown = sorted((set(optimizers) - set(OPTIMIZERS)) | (set(precisions) - set(PRECISIONS)))
    if unknown:
        parser.error(f"unknown optimizer(s) or precision(s) {unknown}")
    variants = [Variant(f"{PRECISIONS[p][0]}, {opt}", PRECISIONS[p][1], PRECISIONS[p][2], opt, args)
                for opt in optimizers for p in precisions]
    if args.losses_from:
        compared = load_losses(args.losses_from)
        variants += [Variant(f"{PRECISIONS[p][0]}, {opt}, loss from {args.losses_from}", PRECISIONS[p][1],
                             PRECISIONS[p][2], opt, args, compared) for opt in optimizers for p in precisions]
    peaks = {"fp32": 0.0, "bf16": 0.0}
    shapes = step_products(n, m, args.image_dim, args.text_dim, args.out_dim)
    # per product, its fastest time in each dtype; the heads' six products come first, the loss's three last
    times = {"fp32": [float("inf")] * len(shapes), "bf16": [float("inf")] * len(shapes)}
    for _ in range(args.rounds):
        for dtype, peak in gemm_peaks(torch.device("cpu"), 2048).items():
            peaks[dtype] = max(peaks[dtype], peak)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            times[name] = [min(a, b) for a, b in zip(times[name], product_times(shapes, dtype))]
        for variant in variants:
            variant.run(batches, args.steps)
    flops = step_flops(n, m, args.image_dim, args.text_dim, args.out_dim)
    print(f"# probe step: {n} images x {args.captions} captions, linear heads {args.image_dim} / {args.text_dim}"
          f" -> {args.out_dim}; {flops / 1e9:.2f} GFLOP of matrix products a step; {torch.get_num_threads()} "
          f"threads; GEMM peak fp32 {peaks['fp32'] / 1e9:.0f}, bf16 {peaks['bf16'] / 1e9:.0f} "
          f"GFLOP/s (2,048^3, same run); the step's {len(shapes)} products alone, each at its own shape: "
          f"fp32 {sum(times['fp32']) * 1e3:.1f} ms, bf16 {sum(times['bf16']) * 1e3:.1f} ms\n")
    print("| variant | ms / step | GFLOP/s | fraction of its dtype's peak | its products alone / step "
          "| speed-up over the first row |")
    print("|---|--:|--:|--:|--:|--:|")
    base = variants[0].best
    for v in variants:
        peak = peaks[v.config.precision]
        floor = sum(times[v.config.precision][:6]) + sum(times["bf16" if v.loss_half else "fp32"][6:])
        rate = flops / v.best
        print(f"| {v.name} | {v.best * 1e3:.1f} | {rate / 1e9:.0f} | {rate / peak:.2f} | {floor / v.best:.2f} "
              f"| {base / v.best:.2f}x |")
    if args.profile:
        print_phases(variants, batches, args.steps)


if __name__ == "__main__":
    main()
