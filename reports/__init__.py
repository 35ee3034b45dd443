"""Results store, tables and plots. Reports never compute embeddings.

Names are loaded lazily (PEP 562) so importing this package pulls in neither
pandas nor matplotlib until a name that needs them is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_results": "store", "export_results": "store", "aggregate": "store", "filter_rows": "store",
    "render_table": "tables", "write_report": "report", "render_html_report": "html_report",
    "plot_correlation": "plots", "plot_heatmap": "plots", "plot_predictor_summary": "plots",
    "make_plots": "plots",
    "metric_info": "metric_info", "MetricInfo": "metric_info", "METRIC_INFO": "metric_info",
    "STANDARD_METRICS": "metric_info",
    "iter_records": "records", "read_record": "records", "write_record": "records",
    "format_run_summary": "summary",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"alignprobe.reports.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'alignprobe.reports' has no attribute {name!r}")


def __dir__():
    return __all__
