"""Figures: the printed correlations are `correlate`'s, files are written, errors are clear; a constant
metric is skipped with a note; encoder names with dollar signs are drawn as typed."""
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics import correlate
from alignprobe.reports.plots import make_plots, plot_correlation, plot_heatmap, plot_predictor_summary
from alignprobe.reports.store import aggregate, load_results
from alignprobe.reports.records import write_record
from alignprobe.reports.report import write_report
from helpers import invoke
from reports_data import FAILED, TEXT, VISION, record, write_results

N_BOOT = 200  # enough to exercise the bootstrap; the default 1000 only slows the tests
FEW = ("kmeans_nmi", "linear_probe_top1", "zero_shot_top1")  # fewer metrics: fewer figures
WITH_R1 = FEW + ("i2t_r1",)
NAMES = ["$x^2$-vit", "cost$5", r"$\notacommand{$", "plain-vit"]  # encoder names with dollar signs
NUM = r"(-?\d\.\d\d|nan)"


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results")


def _inputs(results, x_metric, y_metric, text):
    """The seed-averaged points, one per vision encoder, in vision-name order (computed here, not by plots)."""
    agg = aggregate(load_results(results), [x_metric, y_metric])
    sub = agg[agg["text"] == text].dropna(subset=[f"{x_metric}_mean", f"{y_metric}_mean"]).sort_values("vision")
    return list(sub["vision"]), sub[f"{x_metric}_mean"].to_numpy(), sub[f"{y_metric}_mean"].to_numpy()


def _legend_numbers(ax):
    found = {}
    for t in ax.get_legend().get_texts():
        # "Pearson r = 0.83 [0.41, 0.97], p = 0.004": the interval, then the permutation p-value
        m = re.fullmatch(rf"(Pearson r|Spearman ρ|Kendall τ) = {NUM} \[{NUM}, {NUM}\], p = (\S+)", t.get_text())
        if m:
            found[m.group(1)] = tuple(float(v) for v in m.groups()[1:])
    return found


def test_correlation_legend_equals_correlate(results):
    fig, stats = plot_correlation(results, "kmeans_nmi", "zero_shot_top1", n_boot=N_BOOT, seed=3)
    assert set(stats) == set(TEXT)
    panels = {ax.get_title().split()[1]: ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == set(TEXT)
    for text in TEXT:
        visions, x, y = _inputs(results, "kmeans_nmi", "zero_shot_top1", text)
        expected_n = len(VISION) - (1 if text == FAILED[1] else 0)
        assert len(visions) == expected_n == stats[text]["n"]
        assert stats[text]["vision"] == visions
        np.testing.assert_allclose(stats[text]["x"], x)
        np.testing.assert_allclose(stats[text]["y"], y)
        printed = _legend_numbers(panels[text])
        assert set(printed) == {"Pearson r", "Spearman ρ", "Kendall τ"}
        for method, label in (("pearson", "Pearson r"), ("spearman", "Spearman ρ"), ("kendall", "Kendall τ")):
            want = correlate(x, y, method=method, n_boot=N_BOOT, seed=3)
            got = stats[text][method]
            for key in ("coefficient", "ci_low", "ci_high"):
                assert got[key] == pytest.approx(want[key], abs=1e-12, nan_ok=True), (text, method, key)
            assert printed[label][:3] == pytest.approx(
                (want["coefficient"], want["ci_low"], want["ci_high"]), abs=0.0051, nan_ok=True)
            assert printed[label][3] == pytest.approx(want["p_permutation"], abs=0.0006)  # printed to 3 places
        # Every point is labelled with its encoder.
        labels = {t.get_text() for t in panels[text].texts}
        assert set(visions) <= labels
    # Clustering predicts zero-shot in this synthetic grid, strongly.
    assert stats["minilm"]["pearson"]["coefficient"] > 0.9


def test_correlation_one_text_encoder_and_given_axes(results):
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    fig, stats = plot_correlation(load_results(results), "linear_probe_top1", "zero_shot_top1", text="mpnet",
                                  ax=ax, n_boot=N_BOOT)
    assert fig is ax.figure and list(stats) == ["mpnet"]
    assert _legend_numbers(ax)
    with pytest.raises(ValidationError, match="pass text="):
        plot_correlation(results, "kmeans_nmi", "zero_shot_top1", ax=Figure().subplots(), n_boot=N_BOOT)


def test_heatmap_has_the_grid_dimensions(results):
    fig, grid = plot_heatmap(results, "zero_shot_top1")
    assert grid.shape == (len(VISION), len(TEXT))
    assert list(grid.index) == sorted(VISION) and list(grid.columns) == sorted(TEXT)
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (len(VISION), len(TEXT))
    assert np.ma.is_masked(image.get_array()[list(grid.index).index(FAILED[0]), list(grid.columns).index(FAILED[1])])
    cell_texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(cell_texts) == len(VISION) * len(TEXT)
    agg = aggregate(load_results(results), ["zero_shot_top1"])
    row = agg[(agg["vision"] == "dino-b") & (agg["text"] == "mpnet")].iloc[0]
    assert f"{row['zero_shot_top1_mean']:.3f}" in cell_texts


def test_predictor_summary_matches_correlate(results):
    fig, stats = plot_predictor_summary(results, "zero_shot_top1", ("kmeans_nmi", "linear_probe_top1", "absent"),
                                        text="minilm", n_boot=N_BOOT, seed=1)
    assert list(stats) == ["minilm"] and list(stats["minilm"]) == ["kmeans_nmi", "linear_probe_top1"]
    for p in ("kmeans_nmi", "linear_probe_top1"):
        _, x, y = _inputs(results, p, "zero_shot_top1", "minilm")
        for method in ("pearson", "spearman", "kendall"):
            want = correlate(x, y, method=method, n_boot=N_BOOT, seed=1)
            assert stats["minilm"][p][method]["coefficient"] == pytest.approx(want["coefficient"])
            assert stats["minilm"][p][method]["ci_low"] == pytest.approx(want["ci_low"])
    ax = fig.axes[0]
    # One error-bar series per method, each with one point per predictor, at the coefficients.
    containers = ax.containers
    assert len(containers) == 3
    coefs = sorted(float(v) for c in containers for v in c.lines[0].get_ydata())
    assert all(len(c.lines[0].get_ydata()) == 2 for c in containers)
    want = sorted(stats["minilm"][p][m]["coefficient"] for p in stats["minilm"] for m in ("pearson", "spearman",
                                                                                         "kendall"))
    np.testing.assert_allclose(coefs, want)


def test_make_plots_writes_png_and_pdf(tmp_path, caplog):
    results = write_results(tmp_path / "results", keep=FEW)
    with caplog.at_level(logging.INFO, logger="alignprobe.reports.plots"):
        paths = make_plots(results, tmp_path / "plots", formats=("png", "pdf"), n_boot=N_BOOT)
    names = {p.name for p in paths}
    stems = ("corr__zero_shot_top1__vs__kmeans_nmi", "corr__zero_shot_top1__vs__linear_probe_top1",
             "heatmap__zero_shot_top1", "summary__zero_shot_top1")
    assert names == {f"{s}.{fmt}" for s in stems for fmt in ("png", "pdf")} | {"correlations.csv",
                                                                               "differences.csv"}
    for p in paths:
        assert p.exists() and p.stat().st_size > (1000 if p.suffix != ".csv" else 100), p
        head = p.read_bytes()[:8]
        if p.suffix == ".png":
            assert head == b"\x89PNG\r\n\x1a\n"
        elif p.suffix == ".pdf":
            assert head.startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp files left
    assert "i2t_r1" in caplog.text and "skipped" in caplog.text  # absent metrics are noted, not fatal


def test_errors_for_empty_dir_and_too_few_points(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="no result records"):
        make_plots(tmp_path / "empty", tmp_path / "out")
    two = write_results(tmp_path / "two", visions=["dino-b", "mae-b"], keep=FEW)
    with pytest.raises(ValidationError, match="at least 3 vision encoders"):
        make_plots(two, tmp_path / "out", n_boot=N_BOOT)
    with pytest.raises(ValidationError, match="at least 3"):
        plot_correlation(two, "kmeans_nmi", "zero_shot_top1", text="minilm", n_boot=N_BOOT)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # Three encoders, but the failed pair leaves mpnet with two: that panel is left out, minilm is drawn.
    three = write_results(tmp_path / "three", visions=["dino-b", "mae-b", "clip-b"], keep=FEW)
    fig, stats = plot_correlation(three, "kmeans_nmi", "zero_shot_top1", n_boot=N_BOOT)
    assert list(stats) == ["minilm"]
    with pytest.raises(ValidationError, match="at least 3"):
        plot_correlation(three, "kmeans_nmi", "zero_shot_top1", text="mpnet", n_boot=N_BOOT)
    with pytest.raises(ValidationError, match="not in these results"):
        plot_correlation(three, "kmeans_nmi", "i2t_r1", n_boot=N_BOOT)


# --------------------------------------------------------------------------- a metric that is constant
def _make_constant(results: Path, metric: str, value: float) -> None:
    for path in results.glob("probe__*.json"):
        rec = json.loads(path.read_text())
        if rec.get("metrics"):
            rec["metrics"][metric] = value
            path.write_text(json.dumps(rec))


def test_plot_skips_a_constant_metric_with_a_note_and_draws_the_rest(tmp_path):
    results = write_results(tmp_path / "r", keep=WITH_R1)
    _make_constant(results, "i2t_r1", 1.0)  # e.g. R@k on `digits`: every caption of a class is the same
    notes: list[str] = []
    paths = make_plots(results, tmp_path / "plots", formats=("png",), n_boot=50, notes=notes)
    names = {p.name for p in paths}
    assert "corr__zero_shot_top1__vs__kmeans_nmi.png" in names
    assert "corr__zero_shot_top1__vs__linear_probe_top1.png" in names
    assert "summary__zero_shot_top1.png" in names and "heatmap__zero_shot_top1.png" in names
    assert not any("i2t_r1" in n for n in names if n.endswith(".png"))
    assert any("corr__i2t_r1__vs__kmeans_nmi" in n and "i2t_r1 is constant (1.0)" in n for n in notes), notes
    assert len([n for n in notes if "i2t_r1" in n]) == 2  # both of its figures, each named


def test_plot_with_a_constant_predictor_keeps_the_other_predictor_in_the_summary(tmp_path):
    results = write_results(tmp_path / "r", keep=WITH_R1)
    _make_constant(results, "linear_probe_top1", 0.5)
    notes: list[str] = []
    paths = make_plots(results, tmp_path / "plots", formats=("png",), n_boot=50, notes=notes)
    names = {p.name for p in paths}
    assert "corr__zero_shot_top1__vs__kmeans_nmi.png" in names and "summary__zero_shot_top1.png" in names
    assert "corr__zero_shot_top1__vs__linear_probe_top1.png" not in names
    assert any("linear_probe_top1 is constant" in n for n in notes)


def test_plot_command_prints_the_notes(tmp_path):
    results = write_results(tmp_path / "r", keep=WITH_R1)
    _make_constant(results, "i2t_r1", 0.0)
    result = invoke("plot", str(results), "--format", "png", "--n-boot", "20",
                                       "-o", str(tmp_path / "p"))
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "note: skipped corr__i2t_r1__vs__kmeans_nmi" in result.output
    assert (tmp_path / "p" / "corr__zero_shot_top1__vs__kmeans_nmi.png").exists()


# --------------------------------------------------------------------------- names with dollar signs are drawn as typed
def _dollar_results(out: Path) -> Path:
    bases = ["dinov2-b", "dino-b", "mae-b", "clip-b"]
    for name, base in zip(NAMES, bases):
        rec = record(base, "minilm", keep=WITH_R1)
        rec.update(vision=name, config_hash=f"h{bases.index(base)}", group_hash=f"g{bases.index(base)}")
        rec["vision_info"]["family"] = "fam$ily"
        write_record(out / f"probe__v{bases.index(base)}__minilm.json", rec)
    return out


def test_dollar_signs_in_names_are_not_mathtext(tmp_path):
    results = _dollar_results(tmp_path / "r")
    paths = make_plots(results, tmp_path / "plots", formats=("png", "svg"), n_boot=20)
    assert any(p.suffix == ".png" for p in paths)
    fig, _ = plot_heatmap(load_results(results), "zero_shot_top1")
    fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(labels) == sorted(NAMES)
    assert not any(t.get_parse_math() for t in fig.axes[0].get_yticklabels())
    svg = next(p for p in paths if p.suffix == ".svg" and p.stem.startswith("corr__")).read_text()
    # drawn as typed: the caret is a glyph of its own (mathtext would have raised the "2" instead)
    assert "<!-- $x^2$-vit -->" in svg and 'id="DejaVuSans-5e"' in svg


def test_dollar_signs_in_names_do_not_abort_the_html_report(tmp_path):
    results = _dollar_results(tmp_path / "r")
    page = write_report(results, "html", n_boot=20)
    assert "No plots" not in page and "<img" in page
    assert "$x^2$-vit" in page and "cost$5" in page


def test_point_labels_in_a_crowded_corner_do_not_overlap():
    """Several encoders that saturate a metric sit in one corner: each label is moved (with a
    leader line where needed) so that no two drawn labels overlap, none covers the legend, and
    all stay inside the axes."""
    from alignprobe.reports.plot_style import label_points, new_figure

    fig, (ax,) = new_figure(1)
    x = np.array([0.80, 0.81, 0.82, 0.72, 0.725, 0.62, 0.625, 0.46])
    y = np.array([1.00, 0.998, 1.00, 0.997, 1.00, 0.995, 1.00, 0.37])
    names = ["effnet-lite0", "effnet-lite1", "effnet-lite2", "dinov2-s-focus@8", "dinov2-s-focus@10",
             "dinov2-s-focus@4", "dinov2-s-focus@12", "random-vit"]
    ax.scatter(x, y)
    for k in range(3):  # a legend narrower than the axes, as the correlation panels' is
        ax.plot([], [], label=f"ρ = 0.{k}0, p = 0.396")
    legend = ax.legend(loc="lower right")
    label_points(ax, x, y, names, avoid=(legend,))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    # the text's own box (an Annotation's extent would include its leader line)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert len(boxes) == len(names)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    legend_box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(legend_box) for box in boxes)
    frame = ax.get_window_extent(renderer)
    for box in boxes:
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
