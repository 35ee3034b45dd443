"""Comparison tables of a results store: Markdown, CSV, LaTeX (booktabs), HTML.

One row per experiment (kind x vision x text x configuration), one column per
metric. Values are the fractions the records hold, with three decimals
(0.612, never 61.2%), as "mean ± std" when an experiment has several seeds
(sample std, ddof=1) and as the plain mean otherwise. The best value of
each column is marked (bold) according to the metric's `higher_is_better`;
metrics without a direction (epochs) are never marked. CSV carries the raw
numbers (`<metric>_mean`, `<metric>_std`) without any markup.

With ``versus_baseline``, each alignment metric that has training-free
baselines beside it (``baseline_<method>_<metric>``) gains the column
``probe_minus_best_baseline_<metric>``: per record, the probe's value minus
the best baseline's, so a reader sees what the trained probe adds over
geometry alone.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from alignprobe.errors import ValidationError
from alignprobe.metrics.registry import declare_metric
from alignprobe.reports.metric_info import MetricInfo, metric_info, resolve_metrics
from alignprobe.reports.store import aggregate, as_results, filter_rows, metric_columns

FORMATS = ("md", "csv", "latex", "html")
_FORMAT_ALIASES = {"markdown": "md", "tex": "latex", "htm": "html"}
_ARROW = {True: "↑", False: "↓", None: ""}
_MISSING = {"md": "–", "latex": "--", "html": "–"}
#: `baseline_<method>_<metric>`: method names hold no underscore (procrustes, ridge, cca, asif).
_BASELINE_COLUMN = re.compile(r"^baseline_([A-Za-z0-9]+)_(.+)$")
VERSUS_PREFIX = "probe_minus_best_baseline_"
try:  # the derived column, declared where it is computed (the registry refuses a second declaration)
    declare_metric(VERSUS_PREFIX + "{name}", label="probe − best baseline: {name}", higher_is_better=True,
                   group="alignment", description="{name} of the probe minus that of the best training-free baseline",
                   source=f"{__name__}.add_baseline_differences", module=__name__)
except ValueError:
    pass


def baseline_columns(columns: Sequence[str]) -> dict[str, list[str]]:
    """{metric: its `baseline_<method>_<metric>` columns} for every metric that the columns also hold."""
    out: dict[str, list[str]] = {}
    for c in columns:
        match = _BASELINE_COLUMN.match(c)
        if match and match.group(2) in columns:
            out.setdefault(match.group(2), []).append(c)
    return out


def add_baseline_differences(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(`df` with `probe_minus_best_baseline_<metric>` columns, their names), per record.

    The best baseline is the highest of a record's baselines for a
    higher-is-better metric and the lowest for a lower-is-better one;
    metrics without a direction get no column. Raises when no record has a baseline.
    """
    groups = baseline_columns(metric_columns(df))
    if not groups:
        raise ValidationError("no baseline_<method>_<metric> columns in these results: run the probe with "
                              "baselines (RunConfig(baselines=('procrustes', 'ridge')), run --baselines) first")
    df, names = df.copy(), []
    for metric, cols in groups.items():
        hib = metric_info(metric).higher_is_better
        if hib is None:
            continue
        best = df[cols].max(axis=1) if hib else df[cols].min(axis=1)
        names.append(VERSUS_PREFIX + metric)
        df[names[-1]] = df[metric] - best
    return df, names


def normalize_format(fmt: str) -> str:
    key = str(fmt).lower().lstrip(".")
    key = _FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValidationError(f"unknown table format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return key


@dataclass
class PreparedTable:
    """The rows and columns a table shows, before any markup.

    `frame` is the `aggregate` output, filtered and sorted; `label_columns`
    are the identifying columns shown (vision, text, and kind / config /
    seeds only when they tell rows apart); `best[m]` flags the best rows of
    metric `m`.
    """

    frame: pd.DataFrame
    metrics: list[str]
    label_columns: list[str]
    best: dict[str, np.ndarray]

    def info(self, metric: str) -> MetricInfo:
        return metric_info(metric)

    def cell(self, row: int, metric: str) -> str | None:
        """`mean ± std` (or `mean`) formatted for display; None when the metric is missing."""
        mean = self.frame[f"{metric}_mean"].iloc[row]
        std = self.frame[f"{metric}_std"].iloc[row]
        if pd.isna(mean):
            return None
        info = self.info(metric)
        if pd.isna(std):
            return info.format(mean)
        return f"{info.format(mean)} ± {info.format(std)}"


_LABEL_HEADERS = {"vision": "vision", "text": "text", "kind": "kind", "heads": "heads", "group_hash": "config",
                  "n_seeds": "seeds"}


def prepare_table(df_or_results_dir, metrics: str | Sequence[str] | None = None,
                  rows: str | Sequence[str] | None = None, sort_by: str | None = None,
                  mark_best: bool = True, versus_baseline: bool = False) -> PreparedTable:
    df = as_results(df_or_results_dir)
    df = filter_rows(df, rows)
    derived: list[str] = []
    if versus_baseline:
        df, derived = add_baseline_differences(df)
    # A metric column may exist only because a filtered-out record had it.
    present = [m for m in metric_columns(df) if df[m].notna().any()]
    shown = resolve_metrics(metrics, present)
    # each shown metric's "probe minus best baseline" right after the metrics asked for
    shown += [VERSUS_PREFIX + m for m in list(shown) if VERSUS_PREFIX + m in derived and VERSUS_PREFIX + m in present
              and VERSUS_PREFIX + m not in shown]
    needed = list(shown)
    if sort_by is not None and sort_by in present and sort_by not in needed:
        needed.append(sort_by)
    agg = aggregate(df, needed)

    agg = agg.sort_values(["kind", "text", "vision", "group_hash"], kind="stable", na_position="last")
    if sort_by is not None:
        agg = _sort(agg, sort_by, present)
    agg = agg.reset_index(drop=True)

    labels = ["vision", "text"]
    if agg["kind"].nunique() > 1:
        labels.insert(0, "kind")
    if agg.duplicated(subset=["kind", "vision", "text"]).any():
        # The same pair under several configs: say which is which, by heads where they differ.
        if "heads" in agg.columns and agg["heads"].notna().any():
            labels.append("heads")
        if agg.duplicated(subset=[c for c in ("kind", "vision", "text", "heads") if c in agg.columns]).any():
            labels.append("group_hash")
    if (agg["n_seeds"] > 1).any():
        labels.append("n_seeds")

    best = {m: (_best_rows(agg[f"{m}_mean"].to_numpy(dtype=float), metric_info(m).higher_is_better)
                if mark_best else np.zeros(len(agg), dtype=bool)) for m in shown}
    return PreparedTable(agg, shown, labels, best)


def _sort(agg: pd.DataFrame, sort_by: str, metrics: list[str]) -> pd.DataFrame:
    if sort_by in metrics:
        hib = metric_info(sort_by).higher_is_better
        return agg.sort_values(f"{sort_by}_mean", ascending=hib is not True, kind="stable", na_position="last")
    if sort_by in agg.columns and not sort_by.endswith(("_mean", "_std")):
        return agg.sort_values(sort_by, kind="stable", na_position="last")
    raise ValidationError(
        f"cannot sort by {sort_by!r}: it is neither a metric of these results ({', '.join(metrics)}) "
        f"nor a column ({', '.join(c for c in agg.columns if not c.endswith(('_mean', '_std')))})"
    )


def _best_rows(values: np.ndarray, higher_is_better: bool | None) -> np.ndarray:
    finite = np.isfinite(values)
    if higher_is_better is None or finite.sum() < 2:  # one value is not "best" of anything
        return np.zeros(len(values), dtype=bool)
    best = np.nanmax(values) if higher_is_better else np.nanmin(values)
    return finite & np.isclose(values, best, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ renderers
def _label_cell(table: PreparedTable, row: int, col: str) -> str:
    value = table.frame[col].iloc[row]
    if col == "group_hash" and isinstance(value, str):
        return value[:8]
    return "" if pd.isna(value) else str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: PreparedTable) -> str:
    header = [_LABEL_HEADERS[c] for c in table.label_columns]
    header += [f"{table.info(m).label} {_ARROW[table.info(m).higher_is_better]}".rstrip() for m in table.metrics]
    align = [":--"] * len(table.label_columns) + ["--:"] * len(table.metrics)
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for i in range(len(table.frame)):
        cells = [_md_escape(_label_cell(table, i, c)) for c in table.label_columns]
        for m in table.metrics:
            text = table.cell(i, m)
            if text is None:
                text = _MISSING["md"]
            elif table.best[m][i]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + table_legend("md") + "\n"


def table_legend(fmt: str) -> str:
    pm = {"md": "±", "html": "±", "latex": "$\\pm$"}[fmt]
    up, down = {"latex": ("$\\uparrow$", "$\\downarrow$")}.get(fmt, ("↑", "↓"))
    return (f"{up} higher is better, {down} lower is better; mean {pm} sample std over seeds where seeds > 1; "
            "best per column in bold.")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: PreparedTable) -> str:
    arrows = {True: " $\\uparrow$", False: " $\\downarrow$", None: ""}
    header = [latex_escape(_LABEL_HEADERS[c]) for c in table.label_columns]
    header += [latex_escape(table.info(m).label) + arrows[table.info(m).higher_is_better] for m in table.metrics]
    spec = "l" * len(table.label_columns) + "r" * len(table.metrics)
    lines = [
        "% alignprobe comparison table; needs \\usepackage{booktabs}",
        f"% {table_legend('latex')}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for i in range(len(table.frame)):
        cells = [latex_escape(_label_cell(table, i, c)) for c in table.label_columns]
        for m in table.metrics:
            text = table.cell(i, m)
            if text is None:
                cells.append(_MISSING["latex"])
                continue
            text = text.replace(" ± ", " $\\pm$ ")
            cells.append(f"\\textbf{{{text}}}" if table.best[m][i] else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: PreparedTable) -> str:
    frame = table.frame
    cols = [c for c in ("kind", "vision", "text", "heads", "group_hash", "n_seeds", "seeds") if c in frame.columns]
    for m in table.metrics:
        cols += [f"{m}_mean", f"{m}_std"]
    return frame[cols].to_csv(index=False)


def to_html_table(table: PreparedTable) -> str:
    """The table as one `<table>` element (no page around it; see `render_html_report`)."""
    esc = html.escape
    head = "".join(f"<th>{esc(_LABEL_HEADERS[c])}</th>" for c in table.label_columns)
    for m in table.metrics:
        info = table.info(m)
        title = f"{info.description or info.name} ({info.name})"
        label = f"{info.label} {_ARROW[info.higher_is_better]}".rstrip()
        head += f'<th class="num" title="{esc(title)}">{esc(label)}</th>'
    body = []
    for i in range(len(table.frame)):
        cells = "".join(f"<td>{esc(_label_cell(table, i, c))}</td>" for c in table.label_columns)
        for m in table.metrics:
            text = table.cell(i, m)
            if text is None:
                cells += f'<td class="num missing">{_MISSING["html"]}</td>'
            elif table.best[m][i]:
                cells += f'<td class="num best"><strong>{esc(text)}</strong></td>'
            else:
                cells += f'<td class="num">{esc(text)}</td>'
        body.append(f"<tr>{cells}</tr>")
    return ('<table class="results">\n<thead><tr>' + head + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n")


_RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv, "html": to_html_table}


def render_table(df_or_results_dir: pd.DataFrame | str | Path, format: str = "md",
                 metrics: str | Sequence[str] | None = None, rows: str | Sequence[str] | None = None,
                 sort_by: str | None = None, mark_best: bool = True, versus_baseline: bool = False) -> str:
    """A comparison table of the results as text.

    `df_or_results_dir`: a `load_results` frame or a results directory.
    `format`: "md" | "csv" | "latex" | "html" (the HTML is a `<table>`
    fragment; `render_html_report` makes the self-contained page).
    `metrics`: names, a comma-separated string, "all", or a group name
    ("clustering", "separability", "alignment"); default: the standard set
    present. `rows`: vision encoder names, or a filter on the store's
    columns (`alignprobe.reports.row_filter`: columns compared with literals,
    never run as code), applied per record, before seeds are averaged.
    `sort_by`: a metric (best first: descending when higher is better) or a
    column name such as "vision_params_m" (ascending). `versus_baseline`: add,
    after each shown metric that has training-free baselines, its
    `probe_minus_best_baseline_<metric>` column (see `add_baseline_differences`).
    """
    fmt = normalize_format(format)
    table = prepare_table(df_or_results_dir, metrics=metrics, rows=rows, sort_by=sort_by, mark_best=mark_best,
                          versus_baseline=versus_baseline)
    return _RENDERERS[fmt](table)

