"""The small-data probe recipe on the built-in sets: candidate recipes x real encoders.

    python benchmarks/probe_recipe.py                        # every recipe, the default encoders
    python benchmarks/probe_recipe.py --vision pixels,hog --recipes now,short
    python benchmarks/probe_recipe.py --list                 # the candidate recipes

Each cell is the real `run` pipeline (`run_pair`: the probe trained by the recipe, scored by
zero-shot classification on ``shapes:test`` and retrieval on its captions) with the recipe's
`TrainConfig` fields set explicitly, on a warm embedding cache (the first recipe of an encoder
pays its encoding; its seconds are the probe's own, from the record's timings). The ridge
baseline, fitted on the same training pairs, is printed once per encoder as the reference of
what the features hold (issue 19 found the probe far below it on ``shapes``).

Why this exists: the small-data adaptation (`training.config.small_data_changes`) was measured on
planted-structure data (`probe_small_data.py`); on the built-in sets its probe stopped anywhere
between epoch 10 and 136 and left most of what ridge finds. This table is what the recipe's values
are chosen from (benchmarks/README.md, "probe_recipe.py").
"""
from __future__ import annotations

import argparse
import tempfile
import time

from alignprobe._allocator import keep_freed_memory

keep_freed_memory()  # as the CLI does, before torch is imported

from alignprobe.config import EncodeOptions  # noqa: E402
from alignprobe.probe.pipelines.run import RunConfig, run_pair  # noqa: E402

#: Candidate recipes: `TrainConfig` fields set on top of the small-data adaptation in force.
#: "before" is the adaptation until 2026-12-07 morning (Lion, batch 1,024, lr 1e-3, 200 epochs, fp32,
#: LayerNorm biases starting at the reference's zeros); "now-zeros" is today's without the centred start.
BEFORE = dict(optimizer="lion", batch_size=1024, lr=1e-3, epochs=200, precision="fp32", norm_bias_init="zeros")
#: "lion" is the adaptation until 2026-12-07, late: Lion at lr 3e-4 for the reference's 100 epochs.
LION = dict(optimizer="lion", lr=3e-4, epochs=100)
RECIPES: dict[str, dict] = {
    "now": {},
    "lion": LION,
    "before": BEFORE,
    "lion-zeros": {**LION, "norm_bias_init": "zeros"},
    "now-zeros": dict(norm_bias_init="zeros"),
    "now-fp32": dict(precision="fp32"),
    "before-e50": {**BEFORE, "epochs": 50},
    "before-e30": {**BEFORE, "epochs": 30},
    "before-b256": {**BEFORE, "batch_size": 256},
    "before-b256-e30": {**BEFORE, "batch_size": 256, "epochs": 30},
    "before-b256-e60": {**BEFORE, "batch_size": 256, "epochs": 60},
    "before-b128-e60": {**BEFORE, "batch_size": 128, "epochs": 60},
    "before-lr3e-3": {**BEFORE, "lr": 3e-3},
    "before-lr3e-4": {**BEFORE, "lr": 3e-4},
    "b256-lr6e-4-e40": {**BEFORE, "batch_size": 256, "lr": 6e-4, "epochs": 40},
    "b256-lr3e-4-e30": {**BEFORE, "batch_size": 256, "lr": 3e-4, "epochs": 30},
    "b512-lr3e-4-e60": {**BEFORE, "batch_size": 512, "lr": 3e-4, "epochs": 60},
    # 2026-12-07, late: with the centred LayerNorm-bias start, fewer Lion epochs at a higher lr?
    "lion-e50": {**LION, "epochs": 50},
    "lion-lr6e-4-e50": {**LION, "lr": 6e-4, "epochs": 50},
    "lion-lr1e-3-e30": {**LION, "lr": 1e-3, "epochs": 30},
    "lion-lr1e-3-e50": {**LION, "lr": 1e-3, "epochs": 50},
    "lion-lr2e-3-e30": {**LION, "lr": 2e-3, "epochs": 30},
    # ... or AdamW, the reference's other optimizer ("now" is adamw-lr1e-2-e30)
    "adamw-lr1e-3-e30": dict(optimizer="adamw", lr=1e-3, epochs=30),
    "adamw-lr3e-3-e30": dict(optimizer="adamw", lr=3e-3, epochs=30),
    "adamw-lr1e-2-e30": dict(optimizer="adamw", lr=1e-2, epochs=30),
    "adamw-lr3e-3-e50": dict(optimizer="adamw", lr=3e-3, epochs=50),
    "adamw-lr1e-2-e20": dict(optimizer="adamw", lr=1e-2, epochs=20),
    "adamw-lr3e-2-e30": dict(optimizer="adamw", lr=3e-2, epochs=30),
    "adamw-b512-lr1e-2-e30": dict(optimizer="adamw", batch_size=512, lr=1e-2, epochs=30),
    "adamw-lr1e-2-e30-wd0.1": dict(optimizer="adamw", lr=1e-2, epochs=30, weight_decay=0.1),
}
ENCODERS = ("effnet-lite0", "pixels", "hog", "random-vit", "dinov2-s-focus")
SHOWN = ("zero_shot_top1", "i2t_r1", "t2i_r1", "i2t_r10", "t2i_r10")


def _cell(vision: str, text: str, train: dict, out: str, options: EncodeOptions, baselines: tuple) -> dict:
    config = RunConfig(vision=vision, text=text, metrics=("zero_shot", "retrieval"), baselines=baselines,
                       train=train)
    start = time.perf_counter()
    record, _, _ = run_pair(config, out_dir=out, options=options, force=True)
    metrics, details = record["metrics"], record["details"]
    return {"metrics": metrics, "epochs": metrics.get("probe_epochs"), "best": details.get("probe_best_epoch"),
            "val": metrics.get("probe_val_loss"), "probe_s": record.get("timings_s", {}).get("probe"),
            "wall_s": time.perf_counter() - start}


def _metric(metrics: dict, name: str, prefix: str = "") -> str:
    key = next((k for k in metrics if k.lower() == f"{prefix}{name}".lower()), None)
    return f"{metrics[key]:.3f}" if key is not None and isinstance(metrics[key], (int, float)) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision", default=",".join(ENCODERS))
    parser.add_argument("--text", default="minilm")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, fields in RECIPES.items():
            print(f"{name:>16}: {fields or 'the small-data recipe as it is'}")
        return
    recipes = args.recipes.split(",")
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; --list shows them")
    options = EncodeOptions(quiet=True)
    print(f"{'vision':>15} {'recipe':>14} {'epochs':>6} {'best':>4} {'val loss':>8} {'probe s':>7} "
          + " ".join(f"{m:>14}" for m in SHOWN), flush=True)
    with tempfile.TemporaryDirectory() as out:
        for vision in args.vision.split(","):
            for i, name in enumerate(recipes):
                baselines = ("ridge",) if i == 0 else ()
                cell = _cell(vision, args.text, RECIPES[name], out, options, baselines)
                m = cell["metrics"]
                print(f"{vision:>15} {name:>14} {cell['epochs']:>6} {cell['best']:>4} {cell['val'] or 0:8.5f} "
                      f"{cell['probe_s'] or 0:7.1f} " + " ".join(f"{_metric(m, s):>14}" for s in SHOWN), flush=True)
                if baselines:
                    print(f"{vision:>15} {'ridge':>14} {'':>6} {'':>4} {'':>8} {'':>7} "
                          + " ".join(f"{_metric(m, s, 'baseline_ridge_'):>14}" for s in SHOWN), flush=True)


if __name__ == "__main__":
    main()
