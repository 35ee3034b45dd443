"""Heat map of a layer search (`alignprobe layers`): the raw and the calibrated score of every
vision-layer x text-layer pair, the selected pair outlined.

Reads the search's record (a dict or its JSON file); computes nothing. Two panels share their
axes: the raw score (what an uncalibrated search would maximise) and the calibrated score
(Algorithm 1 of Gröger, Wen & Brbić, 2026, per pair: 0 at or below the pair's chance threshold).
The title carries the calibrated maximum's p-value, the one number that accounts for the search.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from alignprobe.errors import ValidationError

from .plot_style import PAGE_WIDTH_IN, save_figure
from .records import read_record

#: Keys of a layer-search record this figure needs.
NEEDED = ("vision_layers", "text_layers", "pairs", "selected", "max", "measure", "n", "n_permutations")


def _grid(record: dict, key: str) -> np.ndarray:
    """(vision layers, text layers) array of one per-pair column of the record."""
    v_index = {v: i for i, v in enumerate(record["vision_layers"])}
    t_index = {t: j for j, t in enumerate(record["text_layers"])}
    grid = np.full((len(v_index), len(t_index)), np.nan)
    for row in record["pairs"]:
        grid[v_index[row["vision_layer"]], t_index[row["text_layer"]]] = row[key]
    return grid


def layer_heatmap_figure(record: dict):
    """The two-panel `Figure` (raw | calibrated) of a layer-search record."""
    missing = [k for k in NEEDED if k not in record]
    if missing:
        raise ValidationError(f"not a layer-search record (written by `alignprobe layers`): it lacks "
                              f"{', '.join(missing)}")
    vl, tl = record["vision_layers"], record["text_layers"]
    sel = record["selected"]
    si, sj = vl.index(sel["vision_layer"]), tl.index(sel["text_layer"])
    height = min(2.2 + 0.28 * len(vl), 8.0)
    fig = Figure(figsize=(PAGE_WIDTH_IN, height), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (("observed", f"raw {record['measure']}", "viridis", None),
              ("calibrated", f"calibrated {record['measure']}", "magma", (0.0, 1.0)))
    for ax, (key, label, cmap, limits) in zip(axes, panels):
        grid = _grid(record, key)
        lo, hi = limits if limits else (np.nanmin(grid), np.nanmax(grid))
        image = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", origin="lower")
        ax.set_xticks(range(len(tl)), [str(t) for t in tl])
        ax.set_yticks(range(len(vl)), [str(v) for v in vl])
        ax.set_xlabel(f"text layer ({record.get('text', 'text')})")
        ax.set_ylabel(f"vision layer ({record.get('vision', 'vision')})")
        ax.add_patch(Rectangle((sj - 0.5, si - 0.5), 1, 1, fill=False, edgecolor="#00D0FF", linewidth=2))
        ax.set_title(label)
        fig.colorbar(image, ax=ax, shrink=0.9)
    best = record["max"]
    fig.suptitle(f"best pair: vision {sel['vision_layer']} x text {sel['text_layer']} "
                 f"(raw {best['observed']:.3f}, max calibrated {best['calibrated']:.3f}, "
                 f"p = {best['p']:.3g}; n = {record['n']}, K = {record['n_permutations']})", fontsize=8)
    return fig


def plot_layer_heatmap(record: dict | str | Path, out_stem: str | Path,
                       formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save the heat map of a layer-search record as ``out_stem.<fmt>`` for each format; returns the paths."""
    if not isinstance(record, dict):
        record = read_record(record)
    formats = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
    if not formats:
        raise ValidationError("give at least one figure format, e.g. png,pdf")
    fig = layer_heatmap_figure(record)
    stem = Path(out_stem)
    return [save_figure(fig, stem.with_name(f"{stem.name}.{fmt}"), fmt) for fmt in formats]
