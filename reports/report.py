"""`write_report`: one call from a results directory to a table or page on disk (the `report` command)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from alignprobe.errors import ValidationError
from alignprobe.io import write_text_atomic
from alignprobe.reports.correlations import render_correlation_section
from alignprobe.reports.store import failed_reruns_note, filter_rows, load_results
from alignprobe.reports.tables import normalize_format, render_table

SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv", ".tex": "latex", ".html": "html", ".htm": "html"}


def write_report(results_dir: str | Path, format: str | None = "md", output: str | Path | None = None, *,
                 metrics: str | Sequence[str] | None = None, rows: str | Sequence[str] | None = None,
                 sort_by: str | None = None, mark_best: bool = True, plots: bool = True,
                 correlations: bool = True, exclude: str | Sequence[str] | None = None, n_boot: int = 1000,
                 seed: int = 0, versus_baseline: bool = False) -> str:
    """Render the results of `results_dir` as `format` and return the text.

    `format`: "md" | "csv" | "latex" | "html" (the HTML is the full
    self-contained page with figures unless `plots` is False); None infers
    it from the suffix of `output`, or is Markdown without one. With `output`, the text is also written
    there atomically. `metrics`, `rows`, `sort_by`, `mark_best` are those of `render_table`;
    so is `versus_baseline` ("probe minus best baseline" columns; Markdown, CSV and LaTeX).

    With `correlations` (Markdown and HTML), the report also states, per
    predictor, the correlation with alignment, its bootstrap interval and
    permutation p-value, and the clustering-minus-separability interval
    (`alignprobe.reports.correlations`); `exclude` names encoders (controls)
    left out of those statistics, `n_boot` and `seed` drive the bootstrap.
    CSV and LaTeX stay one table.
    """
    if format is None and output is None:
        format = "md"  # printed to a terminal
    if format is None:
        suffix = Path(output).suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise ValidationError(
                f"cannot infer the report format from {str(output)!r}; pass format= one of md, csv, latex, html"
            )
        format = SUFFIX_FORMATS[suffix]
    fmt = normalize_format(format)
    if fmt == "html" and versus_baseline:
        raise ValidationError("versus_baseline columns are in the Markdown, CSV and LaTeX tables, not the HTML page; "
                              "use format='md' (or 'csv', 'latex')")
    if fmt == "html":
        from alignprobe.reports.html_report import render_html_report  # matplotlib only when a page is asked for

        text = render_html_report(results_dir, plots=plots, metrics=metrics, rows=rows, sort_by=sort_by,
                                  mark_best=mark_best, n_boot=n_boot, seed=seed, exclude=exclude)
    else:
        df = filter_rows(load_results(results_dir), rows)
        text = render_table(df, format=fmt, metrics=metrics, sort_by=sort_by, mark_best=mark_best,
                            versus_baseline=versus_baseline)
        note = failed_reruns_note(df)
        if fmt == "md" and note:  # CSV and LaTeX stay one table; the command says it on stderr
            text = text.rstrip("\n") + "\n\n" + note + "\n"
        if fmt == "md" and correlations:
            text = text.rstrip("\n") + "\n" + render_correlation_section(df, n_boot=n_boot, seed=seed,
                                                                          exclude=exclude)
    if output is not None:
        write_text_atomic(output, text)
    return text
