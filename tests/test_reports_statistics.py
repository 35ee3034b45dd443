"""report and plot state permutation p-values, paired differences, --exclude, and too few encoders for intervals."""
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from alignprobe.errors import ValidationError
from alignprobe.metrics import correlate, correlation_difference
from alignprobe.reports.correlations import correlation_statistics, render_correlation_section
from alignprobe.reports.plots import plot_correlation, plot_predictor_summary
from alignprobe.reports.report import write_report
from alignprobe.reports.store import load_results, points
from reports_data import write_results
from helpers import invoke

KEEP = ("knn_top1@20", "kmeans_nmi", "linear_probe_top1", "zero_shot_top1")
N_BOOT = 200


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"), keep=KEEP)


def test_statistics_equal_correlate_and_exclude_leaves_controls_out(results):
    stats, diffs = correlation_statistics(results, n_boot=N_BOOT, methods=("spearman",))
    assert stats["alignment"].unique().tolist() == ["zero_shot_top1"]
    pts = points(load_results(results), ["zero_shot_top1", "kmeans_nmi", "linear_probe_top1"])
    sub = pts[pts["text"] == "minilm"].sort_values("vision")
    row = stats[(stats.text == "minilm") & (stats.predictor == "kmeans_nmi")].iloc[0]
    want = correlate(sub["kmeans_nmi"].to_numpy(), sub["zero_shot_top1"].to_numpy(), "spearman", n_boot=N_BOOT)
    assert row["n"] == 6 and row["coefficient"] == pytest.approx(want["coefficient"])
    assert row["p_permutation"] == pytest.approx(want["p_permutation"]) and row["ci_low"] == want["ci_low"]
    d = diffs[(diffs.text == "minilm") & (diffs.x1 == "kmeans_nmi")].iloc[0]
    dwant = correlation_difference(sub["kmeans_nmi"].to_numpy(), sub["linear_probe_top1"].to_numpy(),
                                   sub["zero_shot_top1"].to_numpy(), "spearman", n_boot=N_BOOT)
    assert d["difference"] == pytest.approx(dwant["difference"]) and d["ci_low"] == pytest.approx(dwant["ci_low"])
    # mae-b breaks linear separability in this grid: clustering predicts zero-shot better
    assert d["difference"] > 0
    without, _ = correlation_statistics(results, n_boot=N_BOOT, methods=("spearman",), exclude="random_vit")
    assert without[without.text == "minilm"]["n"].unique().tolist() == [5]
    assert "random_vit" not in ",".join(without["vision"])
    with pytest.raises(ValidationError, match=r"exclude \(--exclude\) names random-vit, which are not encoders"):
        correlation_statistics(results, exclude="random-vit")


def test_markdown_report_states_p_values_differences_and_exclusions(results):
    md = write_report(results, "md", n_boot=N_BOOT, exclude="random_vit")
    assert md.startswith("| vision")
    assert "## Correlations with zero-shot top-1" in md
    assert "Left out: random_vit." in md
    assert re.search(r"\| minilm \| .*k-means NMI.* \| 5 \| -?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\] \|", md)
    assert "p (Spearman ρ, permutation)" in md and "clustering − separability" in md
    assert "random_vit" in md.split("## Correlations")[0]  # the table itself keeps every encoder
    plain = write_report(results, "md", correlations=False)
    assert "## Correlations" not in plain
    assert "## Correlations" not in write_report(results, "csv")


def test_too_few_encoders_for_intervals(tmp_path):
    few = write_results(tmp_path / "few", visions=["dino-b", "mae-b", "clip-b", "dinov2-l"], keep=KEEP)
    md = render_correlation_section(load_results(few), n_boot=N_BOOT)
    assert "too few encoders for intervals" in md
    assert "[" not in md.split("clustering − separability")[0].split("| minilm |", 1)[1].split("\n")[0]
    fig, stats = plot_correlation(few, "kmeans_nmi", "zero_shot_top1", text="minilm", n_boot=N_BOOT,
                                  ax=Figure().subplots())
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "too few encoders for intervals" in legend
    assert not any(re.search(r"\[\d", line) for line in legend)  # no degenerate [1.00, 1.00]
    assert stats["minilm"]["pearson"]["ci_low"] is None
    fig, _ = plot_predictor_summary(few, "zero_shot_top1", ("kmeans_nmi", "linear_probe_top1"), text="minilm",
                                    n_boot=N_BOOT)
    assert any("too few encoders for intervals" in t.get_text() for t in fig.axes[0].texts)


def test_cli_flags(results, tmp_path):
    res = invoke("report", str(results), "--exclude", "random_vit", "--n-boot", "100")
    assert res.exit_code == 0, res.output
    assert "Left out: random_vit." in res.output and "permutation" in res.output
    bad = invoke("report", str(results), "--exclude", "nope")
    assert bad.exit_code != 0 and "exclude (--exclude) names nope" in bad.output
    res = invoke("plot", str(results), "-o", str(tmp_path / "p"), "--format", "png",
                               "--n-boot", "100", "--exclude", "random_vit")
    assert res.exit_code == 0, res.output
    written = {p.name for p in (tmp_path / "p").iterdir()}
    assert "differences.csv" in written and "correlations.csv" in written
    table = (tmp_path / "p" / "correlations.csv").read_text()
    assert "p_permutation" in table
    import pandas as pd

    corr = pd.read_csv(tmp_path / "p" / "correlations.csv")
    assert set(corr[corr.text == "minilm"]["n"]) == {5}  # the control was left out of the figures too
    assert np.all((corr["p_permutation"] > 0) & (corr["p_permutation"] <= 1))


def test_run_summary_says_what_the_numbers_were_measured_on():
    from alignprobe.reports.summary import format_run_summary

    rec = {"vision": "v", "text": "t", "seed": 0, "metrics": {"cka": 0.5, "cka_null": 0.1},
           "details": {"vision_protocol": "train->val", "similarity_n": 1024, "similarity_null_permutations": 10,
                       "overlap": {"retrieval": {"n": 3, "n_test": 5000, "allowed": True}}}}
    text = format_run_summary(rec)
    assert "vision quality protocol: train->val" in text
    assert "similarity on 1024 held-out pairs" in text
    assert "CKA (chance)  0.1000" in text  # the metric registry's label
    assert "3 of 5000 retrieval images are also training images" in text
    assert "protocol" not in format_run_summary({"vision": "v", "text": "t", "metrics": {"cka": 0.5}})


def test_html_report_has_p_values_and_the_difference_table(results, tmp_path):
    page = write_report(results, "html", n_boot=N_BOOT, exclude="random_vit")
    assert "permutation p-values" in page and ", p = " in page
    assert "clustering − separability" in page and "Δ Spearman ρ [95% CI]" in page
