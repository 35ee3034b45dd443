"""Why the alignment probe fails on DINOv2-S block 4 features, and what fixes it.

    ALIGNPROBE_CACHE_DIR=/tmp/demo/cache python benchmarks/probe_diagnose_layer.py            # everything
    python benchmarks/probe_diagnose_layer.py --cache /tmp/demo/cache --stats                  # statistics only
    python benchmarks/probe_diagnose_layer.py --cells b4:recipe,b4:fp32,b4:std                 # some cells

The embeddings come from a warm cache (``alignprobe sweep --config examples/demo_sweep.yaml``
fills it): ``shapes:train`` pairs (2,400 images x 3 captions) for the probe, ``shapes:test``
(600 images, 5 captions each at most) for retrieval, all-MiniLM-L6-v2 on the text side.
Nothing is encoded (``recompute=False``: a miss is an error).

Two parts:

1. Feature statistics of each vision layer: per-dimension mean / std, max |x|, how much of
   ``||x||^2`` the largest dimensions hold, and -- what the head's input LayerNorm sees -- how
   much of the LayerNorm output varies across samples at all (the rest is one constant vector
   shared by every image, which the Linear maps to one constant direction).
2. One probe per cell: `AlignmentProbe` with the small-data recipe (bf16 autocast on a CPU with
   native bf16) and one change at a time -- fp32, inputs standardised per feature with the
   mean / std of the probe's own *training* split (`held_out_split`, the rows the trainer trains
   on: the held-out rows and the test set never enter the statistics), centring only, dropping
   or clipping the dominant dimensions, and ``ln-center``: the fix, now part of the small-data
   recipe (``norm_bias_init="center"``: each head's LayerNorm bias starts at minus the mean
   LayerNorm output over the training split; features, architecture and saved format unchanged).
   Every cell names the start (``zeros`` but for ``ln-center``), so the other cells show the
   reference's. The ridge baseline (`metrics.RidgeBaseline`, fitted on
   the training split's first captions) is printed per layer as what the features hold.

Why this exists: block 4 stopped at epoch 18 with I2T R@10 0.08 where ridge gets 0.99
(benchmarks/README.md, "probe_diagnose_layer.py").
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from alignprobe._allocator import keep_freed_memory

keep_freed_memory()  # as the CLI does, before torch is imported

import numpy as np  # noqa: E402

from alignprobe.backbones import EncoderRequest  # noqa: E402
from alignprobe.config import EncodeOptions  # noqa: E402
from alignprobe.metrics.baselines import RidgeBaseline  # noqa: E402
from alignprobe.probe.pipelines.workspace import Workspace  # noqa: E402
from alignprobe.probe.training.config import resolve_recipe  # noqa: E402
from alignprobe.probe.training.engine import held_out_split  # noqa: E402
from alignprobe.probe.training.evaluation import retrieval_scores  # noqa: E402
from alignprobe.probe.training.probe import AlignmentProbe  # noqa: E402

#: layer key -> (registry name, layer)
LAYERS = {"b4": ("dinov2-s-focus", 4), "b8": ("dinov2-s-focus", 8), "b12": ("dinov2-s-focus", 12),
          "lite0": ("effnet-lite0", None)}
#: Input transforms: name -> (what it does, applied to the text side too?)
TRANSFORMS = {
    "none": "features as cached",
    "std": "both sides standardised per feature (training-split mean/std)",
    "std-img": "image side standardised per feature (training-split mean/std), text as cached",
    "center": "both sides centred per feature (training-split mean), not scaled",
    "drop2": "image dims holding the most of ||x||^2 on the training split dropped (top 2)",
    "clip": "image dims clipped to training-split mean +- 4 std",
    "ln-center": "features as cached; LayerNorm biases start at -(training-split mean LayerNorm output)",
}
#: Cells: name -> (layer, transform, TrainConfig fields set on top of the small-data recipe)
CELLS = {
    "b4:recipe": ("b4", "none", {}),
    "b4:fp32": ("b4", "none", {"precision": "fp32"}),
    "b4:std": ("b4", "std", {}),
    "b4:std-img": ("b4", "std-img", {}),
    "b4:center": ("b4", "center", {}),
    "b4:no-stop": ("b4", "none", {"patience": None}),
    "b4:drop2": ("b4", "drop2", {}),
    "b4:clip": ("b4", "clip", {}),
    "b4:std-fp32": ("b4", "std", {"precision": "fp32"}),
    "b4:ln-center": ("b4", "ln-center", {}),
    "b8:recipe": ("b8", "none", {}),
    "b8:std": ("b8", "std", {}),
    "b8:ln-center": ("b8", "ln-center", {}),
    "b12:recipe": ("b12", "none", {}),
    "b12:std": ("b12", "std", {}),
    "b12:ln-center": ("b12", "ln-center", {}),
    "lite0:recipe": ("lite0", "none", {}),
    "lite0:std": ("lite0", "std", {}),
    "lite0:ln-center": ("lite0", "ln-center", {}),
    # a second seed (split, init, batch order) of the cells that already worked: is a gain noise?
    "b8:recipe-s1": ("b8", "none", {"seed": 1}),
    "b8:ln-center-s1": ("b8", "ln-center", {"seed": 1}),
    "lite0:recipe-s1": ("lite0", "none", {"seed": 1}),
    "lite0:ln-center-s1": ("lite0", "ln-center", {"seed": 1}),
}


@dataclass
class PairData:
    """One vision layer x MiniLM: fp32 training pairs, the retrieval set, the probe's training rows."""

    images: np.ndarray
    captions: np.ndarray
    caption_image: np.ndarray
    test_images: np.ndarray
    test_captions: np.ndarray
    test_caption_image: np.ndarray
    train_rows: np.ndarray


def load_pair(layer: str, cache_dir: str | None) -> PairData:
    """The cached embeddings of ``layer`` x MiniLM (an error, not an encode, on a miss)."""
    name, block = LAYERS[layer]
    opts = EncodeOptions(cache_dir=cache_dir, recompute=False, quiet=True, device="cpu")
    ws = Workspace(EncoderRequest.create("vision", name, layer=block), EncoderRequest.create("text", "minilm"), opts)
    pairs = ws.encode("pairs", "shapes:train", captions=True)
    test = ws.encode("retrieval", "shapes:test", captions=True).retrieval(5)
    images = pairs.images.rows(np.arange(pairs.images.shape[0])).astype(np.float32)
    captions = pairs.captions.rows(np.arange(pairs.captions.shape[0])).astype(np.float32)
    # The recipe the probe resolves to on these pairs decides its held-out split; the statistics
    # of every transform are fitted on the rows it trains on, nothing else.
    usable = np.flatnonzero(pairs.image_valid & (pairs.first_caption() >= 0))
    config, _ = resolve_recipe("sail-probe", len(usable))
    train_rows, _ = held_out_split(usable, config)
    return PairData(images, captions, pairs.caption_image, np.asarray(test.images, np.float32),
                    np.asarray(test.captions, np.float32), np.asarray(test.caption_image), train_rows)


def feature_stats(x: np.ndarray) -> dict:
    """What the head's per-sample LayerNorm gets: scale, dominant dims, the constant share."""
    x = x.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    energy = (x ** 2).mean(0)
    cum = np.cumsum(np.sort(energy)[::-1]) / energy.sum()
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)  # LayerNorm without affine
    top = np.argsort(-energy)[:3]
    return {
        "dim": x.shape[1], "max_abs": float(np.abs(x).max()), "row_norm": float(np.linalg.norm(x, axis=1).mean()),
        "median_std": float(np.median(std)), "median_abs_mean": float(np.median(np.abs(mean))),
        "top_dims": [f"{i}: {mean[i]:+.2f}+-{std[i]:.2f}" for i in top],
        "top1_share": float(cum[0]), "top2_share": float(cum[1]), "dims_for_half": int(np.searchsorted(cum, 0.5)) + 1,
        # fraction of the LayerNorm output's energy that differs between samples (1 - the constant part)
        "ln_varying_share": float(z.var(0).sum() / (z ** 2).mean(0).sum()),
        "ln_sigma_cv": float(x.std(1).std() / x.std(1).mean()),
        "ln_mean_cos": mean_cosine(z),
    }


def mean_cosine(z: np.ndarray) -> float:
    """Mean cosine between different rows: near 1, every row points the same way after L2 normalisation."""
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(u)
    s = u.sum(0)
    return float((s @ s - n) / (n * (n - 1)))


def _standardiser(x: np.ndarray, scale: bool):
    mean = x.mean(0)
    std = x.std(0) if scale else np.ones_like(mean)
    std = np.maximum(std, 1e-6 * std.max())  # a constant dimension stays finite
    return lambda a: ((a - mean) / std).astype(np.float32)


def transforms(kind: str, data: PairData):
    """(image map, text map) of transform ``kind``, fitted on the training split only."""
    img_train = data.images[data.train_rows]
    cap_train = data.captions[np.isin(data.caption_image, data.train_rows)]
    same = lambda a: a  # noqa: E731
    if kind in ("none", "ln-center"):
        return same, same
    if kind in ("std", "center"):
        return _standardiser(img_train, kind == "std"), _standardiser(cap_train, kind == "std")
    if kind == "std-img":
        return _standardiser(img_train, True), same
    if kind == "drop2":
        keep = np.sort(np.argsort(-(img_train.astype(np.float64) ** 2).mean(0))[2:])
        return (lambda a: np.ascontiguousarray(a[:, keep])), same
    if kind == "clip":
        lo, hi = img_train.mean(0) - 4 * img_train.std(0), img_train.mean(0) + 4 * img_train.std(0)
        return (lambda a: np.clip(a, lo, hi).astype(np.float32)), same
    raise SystemExit(f"unknown transform {kind!r}; choose one of {sorted(TRANSFORMS)}")


def run_cell(data: PairData, kind: str, fields: dict) -> dict:
    """Train one probe on the transformed pairs; its stopping point, held-out loss and R@k."""
    fimg, ftxt = transforms(kind, data)
    # every cell names the LayerNorm-bias start: the reference's zeros but for `ln-center`
    fields = {"norm_bias_init": "center" if kind == "ln-center" else "zeros", **fields}
    t0 = time.perf_counter()
    probe = AlignmentProbe(quiet=True, **fields).fit(fimg(data.images), ftxt(data.captions),
                                                     caption_image_index=data.caption_image)
    image_z = probe.transform_image(fimg(data.test_images))
    scores = retrieval_scores(image_z, probe.transform_text(ftxt(data.test_captions)), data.test_caption_image)
    return {"test_image_cos": mean_cosine(image_z), "epochs": len(probe.history_), "best_epoch": probe.best_epoch_,
            "precision": probe.config_.precision,
            "val_init": probe.initial_val_loss_, "val_best": probe.best_val_loss_,
            "seconds": time.perf_counter() - t0, **scores}



def ridge_scores(data: PairData) -> dict:
    """The ridge baseline on the training split (first caption of each image), scored like the probe."""
    first = {}
    for row, img in enumerate(data.caption_image):
        first.setdefault(int(img), row)
    ridge = RidgeBaseline().fit(data.images[data.train_rows], data.captions[[first[int(i)] for i in data.train_rows]])
    return retrieval_scores(ridge.transform_image(data.test_images), ridge.transform_text(data.test_captions),
                            data.test_caption_image)


def print_stats(layers, cache_dir) -> None:
    print("| layer | dim | max abs | mean row norm | median std | median abs mean | top dims (mean+-std) "
          "| top1 / top2 share of x^2 | dims for 50% | LN output varying share | LN sigma CV | LN output mean cos |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for layer in layers:
        s = feature_stats(load_pair(layer, cache_dir).images)
        print(f"| {layer} | {s['dim']} | {s['max_abs']:.2f} | {s['row_norm']:.2f} | {s['median_std']:.4f} "
              f"| {s['median_abs_mean']:.4f} | {'; '.join(s['top_dims'])} | {s['top1_share']:.2f} / "
              f"{s['top2_share']:.2f} | {s['dims_for_half']} | {s['ln_varying_share']:.3f} | {s['ln_sigma_cv']:.3f} "
              f"| {s['ln_mean_cos']:.3f} |")


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=None, help="embedding cache (default: $ALIGNPROBE_CACHE_DIR)")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, from {', '.join(CELLS)}")
    ap.add_argument("--stats", action="store_true", help="print the feature statistics only")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    cells = [c for c in args.cells.split(",") if c]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; choose from {', '.join(CELLS)}")
    print_stats(sorted({CELLS[c][0] for c in cells} | ({"b4", "b8", "b12", "lite0"} if args.stats else set()),
                       key=list(LAYERS).index), args.cache)
    if args.stats:
        return
    print("\n| cell | input | fields | epochs (best) | held-out loss init -> best | I2T R@1 | I2T R@10 "
          "| T2I R@1 | T2I R@10 | test image cos | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows, loaded = [], {}
    for cell in cells:
        layer, kind, fields = CELLS[cell]
        if layer not in loaded:
            loaded = {layer: load_pair(layer, args.cache)}  # one layer in memory at a time
            r = ridge_scores(loaded[layer])
            print(f"| {layer}:ridge | as cached | - | - | - | {r['i2t_r1']:.3f} | {r['i2t_r10']:.3f} "
                  f"| {r['t2i_r1']:.3f} | {r['t2i_r10']:.3f} | - | - |", flush=True)
        res = run_cell(loaded[layer], kind, fields)
        rows.append({"cell": cell, "transform": kind, "fields": fields, **res})
        print(f"| {cell} | {kind} | {json.dumps({**fields, 'precision': res['precision']})} | {res['epochs']} "
              f"({res['best_epoch']}) | {fmt(res['val_init'], '.4f')} -> {fmt(res['val_best'], '.4f')} "
              f"| {res['i2t_r1']:.3f} | {res['i2t_r10']:.3f} | {res['t2i_r1']:.3f} | {res['t2i_r10']:.3f} "
              f"| {res['test_image_cos']:.3f} | {res['seconds']:.0f} |", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
