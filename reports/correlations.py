"""Correlation statistics of a results store, stated the way a reader can trust them.

For each predictor (clustering quality: k-NN accuracy, k-means NMI; linear
separability: linear-probe accuracy) against an alignment measure, across
vision encoders for a fixed text encoder: the coefficient, its bootstrap
interval and its permutation p-value (``alignprobe.metrics.correlate``);
and SAIL's question itself, "does clustering quality predict alignment
better than linear separability?", as the paired-bootstrap interval of the
difference of the two correlations over the same encoders
(``alignprobe.metrics.correlation_difference``). Below 5 encoders no interval
is given; the tables say "too few encoders for intervals" instead.
Control encoders (pixels, random ViT) can be left out by name (``--exclude``).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

from alignprobe.errors import ValidationError
from alignprobe.reports.metric_info import knn_metrics, metric_info
from alignprobe.reports.store import as_results, metric_columns, points

METHODS = ("pearson", "spearman", "kendall")
METHOD_LABELS = {"pearson": "Pearson r", "spearman": "Spearman ρ", "kendall": "Kendall τ"}
MIN_POINTS = 3  # a coefficient with a p-value needs three encoders; its interval needs MIN_INTERVAL_N
#: A calibrated similarity (`<measure>_calibrated`) may be the alignment axis too: pass it as `alignment`.
ALIGNMENT_ORDER = ("i2t_r10", "t2i_r10", "zero_shot_top1", "i2t_r1", "t2i_r1", "mutual_knn", "mutual_knn_calibrated")
SEPARABILITY = "linear_probe_top1"


def parse_names(names: str | Iterable[str] | None) -> list[str]:
    """`"a,b"` or `["a", "b"]` -> `["a", "b"]` (blank entries dropped)."""
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else list(names)
    return [str(n).strip() for n in items if str(n).strip()]


def exclude_encoders(df: pd.DataFrame, exclude: str | Iterable[str] | None) -> pd.DataFrame:
    """`df` without the rows of the named vision (or text) encoders, e.g. controls such as `pixels`.

    An unknown name is an error that lists the names present: a typo would
    otherwise leave a control in and silently change every correlation.
    """
    names = parse_names(exclude)
    if not names:
        return df
    df = as_results(df)
    present = set(df["vision"]) | set(df["text"])
    unknown = [n for n in names if n not in present]
    if unknown:
        raise ValidationError(
            f"exclude (--exclude) names {', '.join(unknown)}, which are not encoders of these results; "
            f"vision: {', '.join(sorted(set(df['vision'])))}; text: {', '.join(sorted(set(df['text'])))}"
        )
    out = df[~df["vision"].isin(names) & ~df["text"].isin(names)]
    if out.empty:
        raise ValidationError(f"exclude {','.join(names)!r} (--exclude) leaves no results")
    return out


def _present(df: pd.DataFrame) -> list[str]:
    return [m for m in metric_columns(df) if df[m].notna().any()]


def default_predictors(present: Sequence[str]) -> list[str]:
    """k-NN (k = 20 when recorded: SAIL's headline k), k-means NMI, linear probe, as present."""
    out = []
    knn = knn_metrics(present)
    if knn:
        out.append("knn_top1@20" if "knn_top1@20" in knn else knn[-1])
    out += [m for m in ("kmeans_nmi", SEPARABILITY) if m in present]
    return out


def default_alignment(present: Sequence[str]) -> str | None:
    """The paper's alignment axis when present (COCO R@10), else the first alignment measure recorded."""
    return next((m for m in ALIGNMENT_ORDER if m in present), None)


def _fmt(v, digits: int = 2) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


def format_interval(stats: dict, digits: int = 2, key: str = "coefficient") -> str:
    """`0.83 [0.41, 0.97]`, or `0.83 (too few encoders for intervals)` when there is no interval."""
    if stats.get("ci_low") is None:
        return f"{_fmt(stats[key], digits)} ({stats.get('ci_note') or 'no interval'})"
    return f"{_fmt(stats[key], digits)} [{_fmt(stats['ci_low'], digits)}, {_fmt(stats['ci_high'], digits)}]"


def format_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "nan"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def correlation_statistics(df, alignment: str | None = None, predictors: Sequence[str] | None = None, *,
                           text: str | None = None, kind: str = "probe", methods: Sequence[str] = METHODS,
                           n_boot: int = 1000, seed: int = 0, exclude: str | Iterable[str] | None = None,
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-predictor table, clustering-minus-separability table) for one alignment measure.

    Per predictor and text encoder: n, method, coefficient, ci_low, ci_high,
    ci_note, p_value (scipy), p_permutation. Differences: for each
    clustering predictor x1 against linear separability x2, the paired-bootstrap
    interval of r(x1, y) - r(x2, y) over the encoders both were measured on.
    Panels with fewer than 3 encoders are left out.
    """
    from alignprobe.metrics import correlate, correlation_difference

    df = exclude_encoders(as_results(df), exclude)
    present = _present(df)
    alignment = alignment or default_alignment(present)
    if alignment is None or alignment not in present:
        raise ValidationError(f"no alignment metric {alignment or ''} in these results; present: {', '.join(present)}")
    predictors = list(predictors) if predictors else default_predictors(present)
    predictors = [p for p in predictors if p in present]
    if not predictors:
        raise ValidationError(f"no vision-quality metric (knn_top1@K, kmeans_nmi, {SEPARABILITY}) in these results")
    pts = points(df, [alignment, *predictors], kind=kind, text=text)
    rows, diffs = [], []
    for t in sorted(pts["text"].unique()):
        panel = pts[pts["text"] == t].sort_values("vision")
        for p in predictors:
            sub = panel.dropna(subset=[alignment, p])
            if len(sub) < MIN_POINTS or sub[p].nunique() < 2 or sub[alignment].nunique() < 2:
                continue
            for m in methods:
                r = correlate(sub[p].to_numpy(float), sub[alignment].to_numpy(float), method=m, n_boot=n_boot,
                              seed=seed)
                rows.append({"text": t, "alignment": alignment, "predictor": p, "method": m, "n": r["n"],
                             **{k: r[k] for k in ("coefficient", "ci_low", "ci_high", "ci_note", "p_value",
                                                  "p_permutation")},
                             "vision": ",".join(sub["vision"])})
        if SEPARABILITY not in predictors:
            continue
        for p in (q for q in predictors if q != SEPARABILITY):
            sub = panel.dropna(subset=[alignment, p, SEPARABILITY])
            if len(sub) < MIN_POINTS or min(sub[p].nunique(), sub[SEPARABILITY].nunique(), sub[alignment].nunique()) < 2:
                continue
            for m in methods:
                d = correlation_difference(sub[p].to_numpy(float), sub[SEPARABILITY].to_numpy(float),
                                           sub[alignment].to_numpy(float), method=m, n_boot=n_boot, seed=seed)
                diffs.append({"text": t, "alignment": alignment, "x1": p, "x2": SEPARABILITY, "method": m,
                              "n": d["n"], **{k: d[k] for k in ("difference", "coefficient_1", "coefficient_2",
                                                                "ci_low", "ci_high", "ci_note")}})
    return pd.DataFrame(rows), pd.DataFrame(diffs)


def render_correlation_section(df, alignment: str | None = None, *, text: str | None = None, kind: str = "probe",
                               n_boot: int = 1000, seed: int = 0, exclude: str | Iterable[str] | None = None,
                               methods: Sequence[str] = ("spearman", "pearson")) -> str:
    """A Markdown section: per-predictor correlations and the clustering-minus-separability intervals.

    Empty when there is nothing to correlate (no vision-quality or alignment
    metric, or fewer than 3 vision encoders per text encoder): a report of
    one or two runs is a table, not a study. A bad `exclude` name is an error.
    """
    exclude_encoders(as_results(df), exclude)  # a typo in --exclude must fail, not vanish with the section
    try:
        stats, diffs = correlation_statistics(df, alignment, text=text, kind=kind, n_boot=n_boot, seed=seed,
                                              exclude=exclude, methods=methods)
    except ValidationError:
        return ""
    if stats.empty:
        return ""
    align = stats["alignment"].iloc[0]
    lines = ["", f"## Correlations with {metric_info(align).label}", "",
             "Across vision encoders, per text encoder: coefficient [bootstrap 95% interval], two-sided "
             "permutation p-value."
             + (f" Left out: {', '.join(parse_names(exclude))}." if parse_names(exclude) else ""), ""]
    head = ["text", "predictor", "n"] + [f"{METHOD_LABELS[m]} [95% CI]" for m in methods] + \
        [f"p ({METHOD_LABELS[m]}, permutation)" for m in methods]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for (t, p), grp in stats.groupby(["text", "predictor"], sort=False):
        by = {r["method"]: r for r in grp.to_dict("records")}
        cells = [t, f"{metric_info(p).label} ({metric_info(p).group})", str(grp["n"].iloc[0])]
        cells += [format_interval(by[m]) for m in methods] + [format_p(by[m]["p_permutation"]) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    if not diffs.empty:
        lines += ["", "Does clustering quality predict alignment better than linear separability? Difference of "
                  "the two correlations over the same encoders, paired bootstrap 95% interval (excludes 0: "
                  "the two differ).", ""]
        head = ["text", "clustering − separability", "n"] + [f"Δ {METHOD_LABELS[m]} [95% CI]" for m in methods]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for (t, x1), grp in diffs.groupby(["text", "x1"], sort=False):
            by = {r["method"]: r for r in grp.to_dict("records")}
            cells = [t, f"{metric_info(x1).label} − {metric_info(SEPARABILITY).label}", str(grp["n"].iloc[0])]
            cells += [format_interval(by[m], key="difference") for m in methods]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
