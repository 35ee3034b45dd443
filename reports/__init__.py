"""Results store, tables and plots. Reports never compute embeddings.

Names are exported lazily (PEP 562, `alignprobe._lazy`) so importing this package
pulls in neither pandas nor matplotlib until a name that needs them is used.
"""
from __future__ import annotations

from alignprobe._lazy import lazy_exports

# `metric_info` is also the name of its module: importing that module anywhere would set the
# package attribute to the module and hide the lazy name, so the function is bound eagerly
# (the module imports no heavy library).
from .metric_info import metric_info  # noqa: E402

_EXPORTS = {
    "load_results": ".store", "export_results": ".store", "aggregate": ".store", "filter_rows": ".store",
    "render_table": ".tables", "write_report": ".report", "render_html_report": ".html_report",
    "plot_correlation": ".plots", "plot_heatmap": ".plots", "plot_predictor_summary": ".plots",
    "make_plots": ".plots",
    "metric_info": ".metric_info", "MetricInfo": ".metric_info",
    "iter_records": ".records", "read_record": ".records",
    "format_run_summary": ".summary",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
