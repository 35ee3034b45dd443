"""A self-contained HTML report: one file with the tables and the figures inside.

Inline CSS and base64 PNGs, no external assets and no links to fetch, so the
page can be mailed, attached to an issue or opened on an offline cluster.
"""
from __future__ import annotations

import base64
import html
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from alignprobe._version import __version__
from alignprobe.errors import ValidationError
from alignprobe.reports.metric_info import metric_info
from alignprobe.reports.plot_style import figure_png_bytes
from alignprobe.reports.correlations import correlation_statistics, exclude_encoders, format_interval, format_p
from alignprobe.reports.plots import METHOD_LABELS, format_ci, standard_figures
from alignprobe.reports.store import failed_reruns, filter_rows, load_results
from alignprobe.reports.tables import render_table, table_legend

log = logging.getLogger(__name__)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #e3e3e3; text-align: left; }
thead th { border-bottom: 2px solid #555; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: #eef5fb; } td.missing { color: #aaa; }
.note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
.error { color: #a40000; font-family: monospace; font-size: 0.85em; }
"""


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figure_png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _summary_stats_table(stats: dict, alignment_metric: str) -> str:
    """The predictor-summary numbers as a table (the figure's error bars, in digits, with permutation p)."""
    methods = [m for m in METHOD_LABELS if any(m in per for t in stats.values() for per in t.values())]
    head = "<th>text</th><th>predictor</th><th class='num'>n</th>" + "".join(
        f"<th class='num'>{html.escape(METHOD_LABELS[m])} [95% CI], p</th>" for m in methods)
    rows = []
    for t, per in stats.items():
        for p, s in per.items():
            cells = "".join(f"<td class='num'>{html.escape(format_ci(s[m]))}, p = "
                            f"{html.escape(format_p(s[m].get('p_permutation')))}</td>" for m in methods)
            rows.append(f"<tr><td>{html.escape(t)}</td><td>{html.escape(metric_info(p).label)}</td>"
                        f"<td class='num'>{s['n']}</td>{cells}</tr>")
    caption = (f"Correlation across vision encoders of each vision-quality measure with "
               f"{html.escape(metric_info(alignment_metric).label)}; bootstrap 95% confidence intervals "
               f"(none below 5 encoders) and two-sided permutation p-values.")
    return (f'<table class="stats"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="note">{caption}</p>')


def _difference_table(df: pd.DataFrame, metrics: tuple, text: str | None, n_boot: int, seed: int) -> str:
    """Clustering minus separability: the paired-bootstrap interval of the difference of the two correlations."""
    _, diffs = correlation_statistics(df, metrics[0], list(metrics[1:]), text=text, n_boot=n_boot, seed=seed,
                                      methods=("spearman", "pearson"))
    if diffs.empty:
        return ""
    rows = []
    for (t, x1), grp in diffs.groupby(["text", "x1"], sort=False):
        by = {r["method"]: r for r in grp.to_dict("records")}
        cells = "".join(f"<td class='num'>{html.escape(format_interval(by[m], key='difference'))}</td>"
                        for m in ("spearman", "pearson"))
        rows.append(f"<tr><td>{html.escape(t)}</td><td>{html.escape(metric_info(x1).label)} − "
                    f"{html.escape(metric_info(grp['x2'].iloc[0]).label)}</td>"
                    f"<td class='num'>{int(grp['n'].iloc[0])}</td>{cells}</tr>")
    head = ("<th>text</th><th>clustering − separability</th><th class='num'>n</th>"
            "<th class='num'>Δ Spearman ρ [95% CI]</th><th class='num'>Δ Pearson r [95% CI]</th>")
    return (f'<table class="stats"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<p class="note">Difference of the two correlations over the same encoders, paired bootstrap 95% '
            "interval: an interval above 0 says clustering quality predicts alignment better.</p>")


def _plots_section(df: pd.DataFrame, text: str | None, n_boot: int, seed: int) -> str:
    try:
        figures = standard_figures(df, text=text, n_boot=n_boot, seed=seed)
    except ValidationError as err:
        # A report of two encoders is still worth a table: say why there are no figures instead of failing.
        log.warning("HTML report without plots: %s", err)
        return f'<h2>Plots</h2>\n<p class="note">No plots: {html.escape(str(err))}</p>\n'
    parts = []
    for f in figures:
        if f.kind == "summary":
            parts.insert(0, "<h2>Which vision measure predicts alignment?</h2>\n"
                         f"<figure>{_img(f.figure, f.name)}</figure>\n" + _summary_stats_table(f.stats, f.metrics[0])
                         + _difference_table(df, f.metrics, text, n_boot, seed))
    parts.append("<h2>Correlations</h2>")
    for f in figures:
        if f.kind == "correlation":
            y, x = f.metrics
            caption = (f"{metric_info(y).label} against {metric_info(x).label} ({metric_info(x).group}); "
                       f"one point per vision encoder. Files: {f.name}.png / .pdf")
            parts.append(f"<figure>{_img(f.figure, f.name)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    for f in figures:
        if f.kind == "heatmap":
            parts.append(f"<h2>Vision x text grid</h2>\n<figure>{_img(f.figure, f.name)}</figure>")
    return "\n".join(parts) + "\n"


def _failed_section(failed: pd.DataFrame) -> str:
    if failed.empty:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(r.kind))}</td><td>{html.escape(str(r.vision))}</td>"
        f"<td>{html.escape(str(r.text))}</td><td>{'' if pd.isna(r.seed) else r.seed}</td>"
        f'<td class="error">{html.escape(str(r.error) if isinstance(r.error, str) else "")}</td></tr>'
        for r in failed.itertuples(index=False)
    )
    return (f"<h2>Failed runs ({len(failed)})</h2>\n<table><thead><tr><th>kind</th><th>vision</th><th>text</th>"
            f"<th>seed</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>\n")


def _failed_reruns_section(ok: pd.DataFrame) -> str:
    reruns = failed_reruns(ok)
    if reruns.empty:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(r.vision))}</td><td>{html.escape(str(r.text))}</td>"
        f"<td>{'' if pd.isna(r.seed) else r.seed}</td><td>{html.escape(str(r.last_failure_at))}</td>"
        f'<td class="error">{html.escape(str(r.last_failure))}</td></tr>'
        for r in reruns.itertuples(index=False)
    )
    return (f"<h2>Failed reruns of finished records ({len(reruns)})</h2>\n<p class=\"note\">These pairs finished, "
            "then failed when run again; the tables show the finished metrics and the failures are kept beside "
            "them (<code>*.failed.json</code>).</p>\n<table><thead><tr><th>vision</th><th>text</th><th>seed</th>"
            f"<th>failed at</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>\n")


def render_html_report(results_dir: str | Path, plots: bool = True, metrics: str | Sequence[str] | None = None,
                       rows: str | Sequence[str] | None = None, sort_by: str | None = None, mark_best: bool = True,
                       text: str | None = None, n_boot: int = 1000, seed: int = 0,
                       exclude: str | Sequence[str] | None = None) -> str:
    """A self-contained HTML page: the comparison table, the figures (base64 PNG), failed runs.

    Arguments as in `render_table`; `rows` filters the plots too. Plots that
    cannot be made (too few encoders) are replaced by a note, not an error.
    `exclude`: encoders (controls) left out of the plots and correlations; the table keeps them.
    """
    everything = filter_rows(load_results(results_dir, include_failed=True), rows)
    ok, failed = everything[everything["status"] == "ok"], everything[everything["status"] != "ok"]
    title = f"alignprobe report: {Path(results_dir).name}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"{len(ok)} finished record(s), {len(failed)} failed, {len(failed_reruns(ok))} failed on a rerun; {ok['vision'].nunique()} vision x "
            f"{ok['text'].nunique()} text encoder(s). Results: <code>{html.escape(str(results_dir))}</code>. "
            f"Generated {when} by alignprobe {html.escape(__version__)}.")
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{meta}</p>']
    if ok.empty:
        body.append('<p class="note">No finished records: every run failed (see below).</p>')
    else:
        body.append("<h2>Comparison</h2>")
        body.append(render_table(ok, format="html", metrics=metrics, sort_by=sort_by, mark_best=mark_best))
        body.append(f'<p class="note">{html.escape(table_legend("html"))}</p>')
        if plots:
            body.append(_plots_section(exclude_encoders(ok, exclude), text, n_boot, seed))
    body.append(_failed_reruns_section(ok))
    body.append(_failed_section(failed))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
