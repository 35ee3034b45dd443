"""Reports and plots of calibrated similarity: p-values on the heat map, a calibrated axis, the run summary."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from alignprobe.reports.correlations import correlation_statistics  # noqa: E402
from alignprobe.reports.plots import plot_correlation, plot_heatmap  # noqa: E402
from alignprobe.reports.records import write_record  # noqa: E402
from alignprobe.reports.store import load_results  # noqa: E402
from alignprobe.reports.summary import format_run_summary  # noqa: E402

VALUES = {"a": (0.20, 0.10, 0.30, 0.004), "b": (0.40, 0.30, 0.50, 0.010), "c": (0.60, 0.35, 0.70, 0.200),
          "d": (0.65, 0.50, 0.80, 0.005)}


def _results(tmp_path):
    for vision, (nmi, calibrated, raw, p) in VALUES.items():
        write_record(tmp_path / f"probe__{vision}.json", {
            "kind": "probe", "status": "ok", "vision": vision, "text": "minilm", "config_hash": vision,
            "group_hash": vision, "seed": 0, "vision_info": {"family": vision},
            "metrics": {"kmeans_nmi": nmi, "mutual_knn": raw, "mutual_knn_calibrated": calibrated,
                        "mutual_knn_p": p, "mutual_knn_threshold": raw - calibrated, "mutual_knn_null": 0.01}})
    return load_results(tmp_path)


def test_calibrated_axis_and_p_values_on_the_heat_map(tmp_path):
    df = _results(tmp_path)
    fig, stats = plot_correlation(df, "kmeans_nmi", "mutual_knn_calibrated", n_boot=50)
    assert stats["minilm"]["y"] == [VALUES[v][1] for v in sorted(VALUES)]
    assert "calibrated" in fig.axes[0].get_ylabel()
    fig, grid = plot_heatmap(df, "mutual_knn_calibrated")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.100\np = 0.004" in texts and "0.350\np = 0.200" in texts
    fig, _ = plot_heatmap(df, "mutual_knn")  # a raw score: no p-values
    assert not any("p =" in t.get_text() for t in fig.axes[0].texts)
    table, _ = correlation_statistics(df, "mutual_knn_calibrated", ["kmeans_nmi"], n_boot=50)
    assert set(table["alignment"]) == {"mutual_knn_calibrated"} and len(table) == 3


def test_run_summary_shows_raw_chance_threshold_calibrated_and_p():
    metrics = {"cka": 0.5628, "cka_null": 0.3991, "cka_threshold": 0.4661, "cka_calibrated": 0.1811, "cka_p": 0.005,
               "i2t_r10": 0.30, "baseline_ridge_i2t_r10": 0.25, "baseline_procrustes_i2t_r10": 0.28}
    text = format_run_summary({"vision": "v", "text": "t", "seed": 0, "metrics": metrics,
                               "details": {"similarity_n": 96, "similarity_alpha": 0.05,
                                           "similarity_null_permutations": 200}})
    line = next(l for l in text.splitlines() if l.strip().startswith("cka "))
    assert line.split()[1:] == ["0.5628", "0.3991", "0.4661", "0.1811", "0.0050"]
    assert "calibrated at alpha = 0.05: 200 random pairings" in text
    best = next(l for l in text.splitlines() if "best baseline" in l)
    assert "0.2800 (procrustes)" in best and "+0.0200" in best
    assert "cka_calibrated" not in text  # shown once, in its block
