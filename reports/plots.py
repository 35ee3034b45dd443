"""Figures that answer the paper's question: does clustering quality predict alignment?

Every correlation shown is computed by `alignprobe.metrics.correlate` and
returned in `stats` beside the figure, so the numbers printed on a figure
are exactly the numbers a script gets. Points are seed-averaged experiments,
one per vision encoder for a fixed text encoder, ordered by vision name:
the bootstrap resamples indices, so a fixed order keeps a figure's CIs
reproducible.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from alignprobe.errors import ValidationError
from alignprobe.reports.correlations import correlation_statistics, exclude_encoders, format_interval, format_p
from alignprobe.reports.metric_info import knn_metrics, metric_info
from alignprobe.reports.plot_style import (
    POINT_LABEL_SIZE,
    label_points,
    new_figure,
    paper_style,
    save_figure,
    style_for,
)
from alignprobe.reports.store import as_results, export_results, filter_rows, is_aggregated, metric_columns, points

log = logging.getLogger(__name__)

METHODS = ("pearson", "spearman", "kendall")
METHOD_LABELS = {"pearson": "Pearson r", "spearman": "Spearman ρ", "kendall": "Kendall τ"}
MIN_POINTS = 3  # a correlation (and its bootstrap) needs at least three encoders

#: What `make_plots` puts on the axes, in order; absent metrics are skipped with a note.
CLUSTERING = ("kmeans_nmi", "knn")  # "knn": k = 20 when recorded, else the largest k
SEPARABILITY = ("linear_probe_top1",)
# R@10 last: the paper's alignment axis (the report correlates with it first), kept after the
# measures whose heat map and summary come first
ALIGNMENT = ("zero_shot_top1", "i2t_r1", "t2i_r1", "mutual_knn", "mutual_knn_calibrated", "i2t_r10")
#: The metric each record of a data-size sweep carries: the training pairs its probe was given.
N_PAIRS = "n_pairs"


def _correlate(x, y, method, n_boot, seed, what: str) -> dict:
    x, y = np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float)
    try:
        # The summary figure repeats the scatter plots' correlations; `correlate` is deterministic given its
        # seed, so equal inputs may share one bootstrap. A copy keeps callers from editing the cached dict.
        return dict(_correlate_cached(x.tobytes(), y.tobytes(), len(x), method, n_boot, seed))
    except ValidationError as err:  # say which plot: "x is constant" alone does not
        raise ValidationError(f"{what}: {err}") from err


@functools.lru_cache(maxsize=256)
def _correlate_cached(xb: bytes, yb: bytes, n: int, method: str, n_boot: int, seed: int) -> dict:
    # Imported here: alignprobe.metrics loads torch, which tables and plots never need otherwise.
    from alignprobe.metrics import correlate

    x, y = np.frombuffer(xb, dtype=float, count=n), np.frombuffer(yb, dtype=float, count=n)
    return correlate(x.copy(), y.copy(), method=method, n_boot=n_boot, seed=seed)


def format_ci(stats: dict, digits: int = 2) -> str:
    """`0.83 [0.41, 0.97]`: a coefficient with its bootstrap 95% CI, as figures print it.

    Below 5 encoders `correlate` gives no interval: `0.95 (too few encoders for intervals)`.
    """
    return format_interval(stats, digits)


def correlation_legend(stats: dict, methods: Sequence[str] = METHODS) -> list[str]:
    """The legend lines of a correlation panel, e.g. "Pearson r = 0.83 [0.41, 0.97], p = 0.004".

    p is the permutation p-value. Without intervals (fewer than 5 encoders)
    each line is "Pearson r = 0.95, p = 0.083" and one last line says
    "too few encoders for intervals", instead of a degenerate [1.00, 1.00].
    """
    lines, note = [], None
    for m in methods:
        s = stats[m]
        value = format_ci(s) if s.get("ci_low") is not None else f"{float(s['coefficient']):.2f}"
        note = note or s.get("ci_note")
        p = s.get("p_permutation")
        lines.append(f"{METHOD_LABELS[m]} = {value}" + (f", p = {format_p(p)}" if p is not None else ""))
    return lines + ([note] if note else [])


def axis_label(metric: str) -> str:
    info = metric_info(metric)
    return f"{info.label} ({info.group})" if info.group != "other" else info.label


def _family_styles(pts: pd.DataFrame) -> dict[str, dict]:
    families = sorted({str(f) if pd.notna(f) else "?" for f in pts["vision_family"]})
    return {fam: style_for(i) for i, fam in enumerate(families)}


def _frame(df) -> pd.DataFrame:
    return df if isinstance(df, pd.DataFrame) and is_aggregated(df) else as_results(df)


def _require_metrics(df: pd.DataFrame, metrics: Sequence[str]) -> None:
    available = (metric_columns(df) if not is_aggregated(df)
                 else [c[:-5] for c in df.columns if c.endswith("_mean")])
    missing = [m for m in metrics if m not in available or not _has_values(df, m)]
    if missing:
        raise ValidationError(
            f"metric(s) {', '.join(missing)} are not in these results; present: {', '.join(available) or '(none)'}"
        )


def _has_values(df: pd.DataFrame, metric: str) -> bool:
    col = metric if metric in df.columns else f"{metric}_mean"
    return col in df.columns and bool(df[col].notna().any())


def _panels(pts: pd.DataFrame, needed: Sequence[str], text: str | None, what: str) -> list[tuple[str, pd.DataFrame]]:
    """Per text encoder, the points that have every `needed` metric.

    Asked for one text encoder (or with only one present), fewer than three
    points is an error; across several, such a text encoder is left out
    with a note, and it is an error only when none is left.
    """
    texts = sorted(pts["text"].unique())
    panels, short = [], []
    for t in texts:
        sub = pts[pts["text"] == t].dropna(subset=list(needed)).sort_values("vision").reset_index(drop=True)
        (panels if len(sub) >= MIN_POINTS else short).append((t, sub))
    if short and (text is not None or len(texts) == 1 or not panels):
        detail = "; ".join(f"{t}: {len(s)} ({', '.join(s['vision']) or 'none'})" for t, s in short)
        raise ValidationError(
            f"{what} needs at least {MIN_POINTS} vision encoders with {', '.join(needed)} per text encoder; "
            f"got {detail}. Run more vision encoders (alignprobe sweep --vision a,b,c) first."
        )
    for t, sub in short:
        log.info("%s: text encoder %s left out: only %d vision encoder(s) have %s",
                 what, t, len(sub), ", ".join(needed))
    return panels


def _correlation_panel(ax, sub: pd.DataFrame, x_metric: str, y_metric: str, n_boot: int, seed: int,
                       styles: dict[str, dict]) -> dict:
    x = sub[x_metric].to_numpy(dtype=float)
    y = sub[y_metric].to_numpy(dtype=float)
    what = f"{y_metric} vs {x_metric} ({', '.join(sub['text'].unique())})"
    stats = {m: _correlate(x, y, m, n_boot, seed, what) for m in METHODS}
    for _, row in sub.iterrows():
        fam = str(row["vision_family"]) if pd.notna(row["vision_family"]) else "?"
        st = styles[fam]
        control = bool(row["vision_is_control"]) if pd.notna(row["vision_is_control"]) else False
        # Control (random / baseline) encoders are hollow, so they read as reference points.
        ax.plot(row[x_metric], row[y_metric], linestyle="none", marker=st["marker"], color=st["color"],
                markerfacecolor="none" if control else st["color"], markeredgewidth=0.8, zorder=3)
    handles = []
    if np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 2)
        (fit,) = ax.plot(xs, slope * xs + intercept, linestyle="--", color="0.4", linewidth=0.9, zorder=2)
        fit.set_label("least-squares fit")
        handles.append(fit)
    legend_lines = correlation_legend(stats)
    blank = [Line2D([], [], linestyle="none", label=line) for line in legend_lines]
    legend = ax.legend(handles=handles + blank, loc="best", handlelength=1.5, borderaxespad=0.3)
    ax.set_xlabel(axis_label(x_metric))
    ax.set_ylabel(axis_label(y_metric))
    # last, so that the labels keep clear of the legend where 'best' put it (it ignores text)
    label_points(ax, x, y, [str(v) for v in sub["vision"]], avoid=(legend,))
    out = {m: stats[m] for m in METHODS}
    out.update(n=len(sub), vision=list(sub["vision"]), x=x.tolist(), y=y.tolist(),
               x_metric=x_metric, y_metric=y_metric, legend=legend_lines)
    return out


def plot_correlation(df, x_metric: str, y_metric: str, text: str | None = None, ax=None, n_boot: int = 1000,
                     seed: int = 0, kind: str = "probe") -> tuple[Figure, dict]:
    """Scatter `y_metric` against `x_metric`, one point per vision encoder, with correlations.

    `df`: a `load_results` frame (seeds are averaged) or a results directory.
    With `text` None and several text encoders, one panel per text encoder
    (not possible with `ax`). Each panel carries a least-squares line and a
    legend with Pearson r, Spearman rho and Kendall tau, each with its
    bootstrap 95% CI from `alignprobe.metrics.correlate(x, y, method,
    n_boot, seed)`.

    Returns (fig, stats); `stats[text_encoder]` holds the three `correlate`
    results under "pearson", "spearman", "kendall", and n, vision, x, y (the
    exact inputs, in order), x_metric, y_metric, legend (the printed lines).
    """
    df = _frame(df)
    _require_metrics(df, [x_metric, y_metric])
    pts = points(df, [x_metric, y_metric], kind=kind, text=text)
    panels = _panels(pts, [x_metric, y_metric], text, f"{y_metric} vs {x_metric}")
    if ax is not None and len(panels) > 1:
        raise ValidationError(
            f"several text encoders ({', '.join(t for t, _ in panels)}) and one axes: pass text=... to pick one"
        )
    styles = _family_styles(pts)
    with paper_style():
        if ax is None:
            fig, axes = new_figure(len(panels))
        else:
            fig, axes = ax.figure, [ax]
        stats = {}
        for a, (t, sub) in zip(axes, panels):
            stats[t] = _correlation_panel(a, sub, x_metric, y_metric, n_boot, seed, styles)
            a.set_title(f"text: {t} (n = {len(sub)})")
    return fig, stats


def plot_heatmap(df, metric: str, kind: str = "probe", ax=None) -> tuple[Figure, pd.DataFrame]:
    """`metric` over the vision x text grid, one annotated cell per pair (seed-averaged).

    A calibrated similarity (`<measure>_calibrated`) is annotated with its
    permutation p-value (`<measure>_p`) when the results hold it. Returns (fig, grid): `grid` is the vision x text DataFrame the image shows
    (rows and columns sorted by name, NaN where a pair has no value).
    """
    df = _frame(df)
    _require_metrics(df, [metric])
    pts = points(df, [metric], kind=kind)
    grid = pts.pivot(index="vision", columns="text", values=metric).sort_index().sort_index(axis=1)
    grid = grid.dropna(how="all")
    if grid.empty:
        raise ValidationError(f"no (vision, text) pair has {metric}")
    info = metric_info(metric)
    values = grid.to_numpy(dtype=float)
    p_grid = _p_value_grid(df, metric, grid, kind)
    n_rows, n_cols = values.shape
    with paper_style():
        if ax is None:
            width = min(7.0, max(3.5, 1.6 + 0.8 * n_cols))
            fig = Figure(figsize=(width, 0.9 + 0.28 * n_rows), layout="constrained")
            ax = fig.subplots()
        else:
            fig = ax.figure
        # viridis: perceptually uniform and monotone in lightness, so it survives greyscale.
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", interpolation="nearest")
        lo, hi = np.nanmin(values), np.nanmax(values)
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if np.isnan(v):
                    ax.text(j, i, "–", ha="center", va="center", fontsize=POINT_LABEL_SIZE, color="0.3")
                    continue
                light = hi > lo and (v - lo) / (hi - lo) > 0.6  # viridis is light at the top
                label = info.format(v)
                if p_grid is not None and np.isfinite(p_grid[i, j]):
                    label += f"\np = {format_p(float(p_grid[i, j]))}"
                ax.text(j, i, label, ha="center", va="center", fontsize=POINT_LABEL_SIZE,
                        color="black" if light else "white")
        ax.set_xticks(range(n_cols), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(n_rows), grid.index)
        ax.set_xlabel("text encoder")
        ax.set_ylabel("vision encoder")
        ax.spines[:].set_visible(False)
        cbar = fig.colorbar(image, ax=ax, shrink=0.9)
        cbar.set_label(info.label)
        ax.set_title(info.label)
    return fig, grid


def _p_value_grid(df: pd.DataFrame, metric: str, grid: pd.DataFrame, kind: str) -> np.ndarray | None:
    """The `<measure>_p` values aligned with `grid`, for a `<measure>_calibrated` metric; else None."""
    if not metric.endswith("_calibrated"):
        return None
    p_metric = metric[: -len("_calibrated")] + "_p"
    if not _has_values(df, p_metric):
        return None
    pts = points(df, [p_metric], kind=kind)
    p_grid = pts.pivot(index="vision", columns="text", values=p_metric)
    return p_grid.reindex(index=grid.index, columns=grid.columns).to_numpy(dtype=float)


def plot_predictor_summary(df, alignment_metric: str = "zero_shot_top1",
                           predictors: Sequence[str] = ("kmeans_nmi", "knn_top1@20", "linear_probe_top1"),
                           text: str | None = None, methods: Sequence[str] = METHODS, n_boot: int = 1000,
                           seed: int = 0, kind: str = "probe", ax=None) -> tuple[Figure, dict]:
    """Which vision-quality measure predicts alignment better? Correlations side by side.

    One group per predictor, one dot per correlation method with its
    bootstrap 95% CI as an error bar; one panel per text encoder unless
    `text` is given. Predictors absent from the results are left out with a
    logged note; so is, in a panel, a predictor with fewer than 3 points.

    Returns (fig, stats): `stats[text_encoder][predictor][method]` is the
    `correlate` result, plus `stats[text_encoder][predictor]["n"]`.
    """
    df = _frame(df)
    _require_metrics(df, [alignment_metric])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValidationError(f"unknown correlation method(s) {unknown}; choose from {', '.join(METHODS)}")
    present = [p for p in predictors if _has_values(df, p)]
    for p in predictors:
        if p not in present:
            log.info("predictor summary: %s is not in the results; left out", p)
    if not present:
        raise ValidationError(f"none of the predictors {', '.join(predictors)} is in these results")
    pts = points(df, [alignment_metric, *present], kind=kind, text=text)
    texts = [text] if text is not None else sorted(pts["text"].unique())

    panel_stats: dict[str, dict] = {}
    for t in texts:
        per = {}
        for p in present:
            sub = pts[pts["text"] == t].dropna(subset=[alignment_metric, p]).sort_values("vision")
            if len(sub) < MIN_POINTS:
                log.info("predictor summary: %s x %s has %d vision encoder(s); left out", p, t, len(sub))
                continue
            x, y = sub[p].to_numpy(dtype=float), sub[alignment_metric].to_numpy(dtype=float)
            per[p] = {m: _correlate(x, y, m, n_boot, seed, f"{alignment_metric} vs {p} ({t})") for m in methods}
            per[p]["n"] = len(sub)
        if per:
            panel_stats[t] = per
    if not panel_stats:
        raise ValidationError(
            f"the predictor summary needs at least {MIN_POINTS} vision encoders with {alignment_metric} and a "
            f"predictor ({', '.join(present)}) for some text encoder; run more vision encoders first."
        )
    if ax is not None and len(panel_stats) > 1:
        raise ValidationError(f"several text encoders ({', '.join(panel_stats)}) and one axes: pass text=...")

    with paper_style():
        if ax is None:
            fig, axes = new_figure(len(panel_stats), sharey=True)
        else:
            fig, axes = ax.figure, [ax]
        for a, (t, per) in zip(axes, panel_stats.items()):
            _summary_panel(a, per, methods, alignment_metric)
            a.set_title(f"text: {t}")
    return fig, panel_stats


def _summary_panel(a, per: dict, methods: Sequence[str], alignment_metric: str) -> None:
    """One text encoder's panel of `plot_predictor_summary`: a dot and CI bar per predictor and method."""
    names, width = list(per), 0.7 / len(methods)
    for k, method in enumerate(methods):
        offset = (k - (len(methods) - 1) / 2) * width
        coef = np.array([per[p][method]["coefficient"] for p in names], dtype=float)
        # No interval below 5 encoders: no error bar (None -> NaN -> 0), and a note on the panel.
        lo = np.array([np.nan if per[p][method]["ci_low"] is None else per[p][method]["ci_low"]
                       for p in names], dtype=float)
        hi = np.array([np.nan if per[p][method]["ci_high"] is None else per[p][method]["ci_high"]
                       for p in names], dtype=float)
        yerr = np.nan_to_num(np.vstack([np.clip(coef - lo, 0, None), np.clip(hi - coef, 0, None)]))
        st = style_for(k)
        a.errorbar(np.arange(len(names)) + offset, coef, yerr=yerr, fmt=st["marker"], color=st["color"],
                   capsize=2, elinewidth=0.8, markersize=4, label=METHOD_LABELS[method])
    a.axhline(0, color="0.6", linewidth=0.6, zorder=0)
    a.set_xticks(range(len(names)),
                 [f"{metric_info(p).label}\n({metric_info(p).group}, n={per[p]['n']})" for p in names])
    a.set_ylim(-1.05, 1.05)
    a.set_ylabel(f"correlation with {metric_info(alignment_metric).label}")
    a.legend(loc="lower left")
    notes = sorted({per[p][m].get("ci_note") for p in names for m in methods} - {None})
    if notes:
        a.text(0.98, 0.02, "; ".join(notes), transform=a.transAxes, ha="right", va="bottom",
               fontsize=POINT_LABEL_SIZE, color="0.3")


def pairs_curve(df, metric: str = "i2t_r10", kind: str = "probe", text: str | None = None) -> pd.DataFrame:
    """Alignment against the number of training pairs: one row per (text, vision, n_pairs), seeds averaged.

    `df`: a `load_results` frame or a results directory of a `sweep` with
    ``n_pairs`` (each record's ``n_pairs`` metric: the pairs its probe was given).
    Columns: text, vision, n_pairs, mean, std (ddof = 1; NaN for one seed), n_seeds.
    """
    df = as_results(df)
    _require_metrics(df, [metric, N_PAIRS])
    df = df[(df["kind"] == kind) & df[metric].notna() & df[N_PAIRS].notna()]
    if text is not None:
        if text not in set(df["text"]):
            raise ValidationError(f"text encoder {text!r} has no {metric} with n_pairs; present: "
                                  f"{', '.join(sorted(set(df['text'])))}")
        df = df[df["text"] == text]
    grouped = df.groupby(["text", "vision", N_PAIRS])[metric]
    out = grouped.agg(["mean", "std", "size"]).reset_index().rename(columns={"size": "n_seeds"})
    return out.sort_values(["text", "vision", N_PAIRS], kind="stable").reset_index(drop=True)


def plot_alignment_vs_pairs(df, metric: str = "i2t_r10", text: str | None = None, kind: str = "probe",
                            ax=None) -> tuple[Figure, pd.DataFrame]:
    """`metric` against the number of training pairs (log axis), one line per vision encoder.

    The axis STRUCTURE (Gröger et al. 2025) and FuseMix report: run `sweep`
    with ``n_pairs`` (nested seeded subsets) first. One panel per text encoder
    unless `text` is given; error bars are the std over seeds where there are
    several. Returns (fig, curve) with `curve` from `pairs_curve`.
    """
    curve = pairs_curve(df, metric, kind=kind, text=text)
    texts = sorted(curve["text"].unique())
    if ax is not None and len(texts) > 1:
        raise ValidationError(f"several text encoders ({', '.join(texts)}) and one axes: pass text=...")
    with paper_style():
        fig, axes = new_figure(len(texts)) if ax is None else (ax.figure, [ax])
        for a, t in zip(axes, texts):
            for i, (vision, sub) in enumerate(curve[curve["text"] == t].groupby("vision", sort=True)):
                st = style_for(i)
                a.errorbar(sub[N_PAIRS], sub["mean"], yerr=np.nan_to_num(sub["std"].to_numpy(float)),
                           marker=st["marker"], color=st["color"], capsize=2, linewidth=1.0, label=vision)
            a.set_xscale("log")
            a.set_xlabel("training pairs")
            a.set_ylabel(axis_label(metric))
            a.set_title(f"text: {t}")
            a.legend(loc="best")
    return fig, curve


# --------------------------------------------------------------- whole sets
@dataclass
class FigureResult:
    """One figure of the standard set, its file stem, and the numbers it shows."""

    name: str
    figure: Figure
    stats: dict = field(default_factory=dict)
    kind: str = "correlation"  # correlation | heatmap | summary
    metrics: tuple[str, ...] = ()  # (y, x) of a correlation; (metric,); (alignment, *predictors)


def _slug(metric: str) -> str:
    return metric.replace("@", "_k")


def _knn_choice(present: Sequence[str]) -> str | None:
    knn = knn_metrics(present)
    if not knn:
        return None
    return "knn_top1@20" if "knn_top1@20" in knn else knn[-1]


def standard_figures(df, text: str | None = None, kind: str = "probe", n_boot: int = 1000,
                     seed: int = 0, notes: list[str] | None = None) -> list[FigureResult]:
    """The standard figure set of a results store, as `make_plots` writes it.

    Clustering (k-means NMI, k-NN) and linear separability (linear probe)
    against each alignment measure (zero-shot, I2T / T2I R@1, mutual k-NN),
    the heat map of the first alignment measure present, and the predictor
    summary. Metrics absent from the results are skipped with a logged note;
    so is a figure whose metric is constant across the vision encoders (its
    correlation is undefined), the note appended to `notes`; the others are
    drawn. Too few vision encoders for a plot whose metrics exist is an error.
    """
    df = as_results(df)
    present = [m for m in metric_columns(df) if df[m].notna().any()]
    knn = _knn_choice(present)
    x_metrics, y_metrics = [], []
    for m in (*CLUSTERING, *SEPARABILITY):
        m = knn if m == "knn" else m
        if m is not None and m in present:
            x_metrics.append(m)
        else:
            log.info("plots: no %s in the results; its plots are skipped", m or "k-NN accuracy")
    for m in ALIGNMENT:
        (y_metrics.append(m) if m in present else
         log.info("plots: no %s in the results; its plots are skipped", m))
    if not x_metrics or not y_metrics:
        raise ValidationError(
            "nothing to plot: the plots need a vision-quality metric (kmeans_nmi, knn_top1@K, linear_probe_top1) "
            f"and an alignment metric ({', '.join(ALIGNMENT)}); these results have: {', '.join(present) or 'none'}"
        )
    out = []
    notes = [] if notes is None else notes
    degenerate: set[str] = set()  # metrics constant across the encoders: nothing to correlate
    for y in y_metrics:
        for x in x_metrics:
            if x in degenerate or y in degenerate:
                notes.append(f"skipped corr__{_slug(y)}__vs__{_slug(x)}: "
                             f"{x if x in degenerate else y} is constant across the vision encoders")
                continue
            # One degenerate column (e.g. R@k on `digits`, whose captions repeat within a class)
            # must not cost the other figures.
            constant = _constant_metric(df, (x, y), text, kind)
            if constant is not None:
                degenerate.add(constant[0])
                notes.append(f"skipped corr__{_slug(y)}__vs__{_slug(x)}: {constant[0]} is constant "
                             f"({constant[1]}) across the vision encoders of text {constant[2]}, so its "
                             f"correlation is undefined")
                continue
            fig, stats = plot_correlation(df, x, y, text=text, n_boot=n_boot, seed=seed, kind=kind)
            out.append(FigureResult(f"corr__{_slug(y)}__vs__{_slug(x)}", fig, stats, "correlation", (y, x)))
    fig, grid = plot_heatmap(df, y_metrics[0], kind=kind)  # a constant metric is still a valid heat map
    out.append(FigureResult(f"heatmap__{_slug(y_metrics[0])}", fig, {"grid": grid}, "heatmap", (y_metrics[0],)))
    alignment = next((y for y in y_metrics if y not in degenerate), None)
    predictors = [x for x in x_metrics if x not in degenerate]
    if alignment is None or not predictors:
        notes.append("skipped the predictor summary: every " + ("alignment" if alignment is None else
                     "vision-quality") + " metric is constant across the vision encoders")
    else:
        try:
            fig, stats = plot_predictor_summary(df, alignment_metric=alignment, predictors=predictors, text=text,
                                                n_boot=n_boot, seed=seed, kind=kind)
            out.append(FigureResult(f"summary__{_slug(alignment)}", fig, stats, "summary",
                                    (alignment, *predictors)))
        except ValidationError as err:
            if "is constant" not in str(err):
                raise
            notes.append(f"skipped summary__{_slug(alignment)}: {err}")
    for note in notes:
        log.warning("plots: %s", note)
    return out


def _constant_metric(df, metrics: Sequence[str], text: str | None, kind: str) -> tuple[str, float, str] | None:
    """(metric, its value, text encoder) for the first of `metrics` that is constant over a panel's points."""
    pts = points(df, list(metrics), kind=kind, text=text)
    for t in sorted(pts["text"].unique()):
        sub = pts[pts["text"] == t].dropna(subset=list(metrics))
        if len(sub) < MIN_POINTS:
            continue  # too few points is plot_correlation's own (clearer) error
        for m in metrics:
            values = sub[m].to_numpy(dtype=float)
            if np.all(values == values[0]):
                return m, float(values[0]), str(t)
    return None


def correlation_table(figures: Sequence[FigureResult]) -> pd.DataFrame:
    """Every correlation of the standard figures as one long table (text, x, y, method, ...)."""
    rows = []
    for f in figures:
        if f.kind != "correlation":
            continue
        for t, s in f.stats.items():
            for m in METHODS:
                rows.append({"text": t, "x_metric": s["x_metric"], "y_metric": s["y_metric"], "method": m,
                             **{k: s[m].get(k) for k in ("coefficient", "ci_low", "ci_high", "ci_note", "p_value",
                                                          "p_permutation", "n")}})
    return pd.DataFrame(rows)


def make_pairs_plots(results_dir, output_dir: str | Path | None = None, metrics: Sequence[str] | None = None,
                     formats: Sequence[str] = ("png", "pdf"), text: str | None = None, kind: str = "probe"
                     ) -> list[Path]:
    """Write `pairs__<metric>.<format>` (alignment vs training pairs) and `pairs__<metric>.csv` per metric.

    `metrics`: default the alignment metrics of `ALIGNMENT` present. Returns the paths written.
    """
    if output_dir is None:
        if isinstance(results_dir, pd.DataFrame):
            raise ValidationError("pass output_dir when plotting a DataFrame")
        output_dir = Path(results_dir) / "plots"
    df = as_results(results_dir)
    _require_metrics(df, [N_PAIRS])
    chosen = list(metrics) if metrics else [m for m in ALIGNMENT if _has_values(df[df[N_PAIRS].notna()], m)]
    written = []
    for m in chosen:
        fig, curve = plot_alignment_vs_pairs(df, m, text=text, kind=kind)
        for fmt in formats:
            written.append(save_figure(fig, Path(output_dir) / f"pairs__{_slug(m)}.{fmt}", fmt))
        written.append(export_results(curve, Path(output_dir) / f"pairs__{_slug(m)}.csv"))
    return written


def _several_n_pairs(df: pd.DataFrame) -> bool:
    if N_PAIRS not in df.columns:
        return False
    counts = df.dropna(subset=[N_PAIRS]).groupby(["kind", "vision", "text"])[N_PAIRS].nunique()
    return bool((counts > 1).any())


def _largest_n_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """The records at each (kind, vision, text)'s largest n_pairs (and those without one)."""
    largest = df.groupby(["kind", "vision", "text"])[N_PAIRS].transform("max")
    return df[df[N_PAIRS].isna() | (df[N_PAIRS] == largest)]


def make_plots(results_dir, output_dir: str | Path | None = None, formats: Sequence[str] = ("png", "pdf"),
               text: str | None = None, kind: str = "probe", n_boot: int = 1000, seed: int = 0,
               notes: list[str] | None = None, exclude: str | Sequence[str] | None = None,
               rows: str | Sequence[str] | None = None) -> list[Path]:
    """Write the standard figures (see `standard_figures`) in each format, plus `correlations.csv`.

    `results_dir`: a results directory (or a `load_results` frame, then
    `output_dir` is required). `output_dir` defaults to `<results_dir>/plots`.
    Files are `<name>.<format>`, written atomically. Returns the paths written.
    `exclude`: encoder names (e.g. controls) left out of every figure and
    correlation. `rows`: vision encoder names or a row filter, as in
    `render_table` (e.g. one configuration of a pair run under several). `differences.csv` holds the
    clustering-minus-separability intervals (`alignprobe.reports.correlations.correlation_statistics`).
    Results of a `sweep` with several ``n_pairs`` also get `make_pairs_plots`' curves, and the other
    figures then use each pair's records at its largest ``n_pairs``.
    """
    if output_dir is None:
        if isinstance(results_dir, pd.DataFrame):
            raise ValidationError("pass output_dir when plotting a DataFrame")
        output_dir = Path(results_dir) / "plots"
    output_dir = Path(output_dir)
    # A CLI flag gives "png,pdf"; a caller gives ("png", "pdf").
    formats = [f.strip().lower().lstrip(".") for item in ([formats] if isinstance(formats, str) else formats)
               for f in str(item).split(",") if f.strip()]
    if not formats:
        raise ValidationError("no figure formats given; use e.g. formats=('png', 'pdf')")
    frame = exclude_encoders(filter_rows(as_results(results_dir), rows), exclude)
    written = []
    if _several_n_pairs(frame):  # a data-size sweep: its curves, then the standard figures at full size
        written += make_pairs_plots(frame, output_dir, formats=formats, text=text, kind=kind)
        frame = _largest_n_pairs(frame)
    figures = standard_figures(frame, text=text, kind=kind, n_boot=n_boot, seed=seed, notes=notes)
    for f in figures:
        for fmt in formats:
            written.append(save_figure(f.figure, output_dir / f"{f.name}.{fmt}", fmt))
    table = correlation_table(figures)
    if not table.empty:
        written.append(export_results(table, output_dir / "correlations.csv"))
    summary = next((f for f in figures if f.kind == "summary"), None)
    if summary is not None:
        _, diffs = correlation_statistics(frame, summary.metrics[0], list(summary.metrics[1:]), text=text,
                                          kind=kind, n_boot=n_boot, seed=seed)
        if not diffs.empty:
            written.append(export_results(diffs, output_dir / "differences.csv"))
    log.info("wrote %d files to %s", len(written), output_dir)
    return written
