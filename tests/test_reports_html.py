"""The HTML report is one self-contained page: tables, embedded figures, failed runs, no external assets."""
import base64
import re

from alignprobe.reports.html_report import render_html_report
from alignprobe.reports.report import write_report
from reports_data import FAILED, write_results

FEW = ("kmeans_nmi", "linear_probe_top1", "zero_shot_top1")


def _self_contained(page: str) -> None:
    assert not re.search(r"https?://", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,")


def test_html_report_is_self_contained_with_tables_and_images(tmp_path):
    results = write_results(tmp_path / "results", keep=FEW)
    page = render_html_report(results, n_boot=100)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    _self_contained(page)
    assert page.count("<table") >= 3  # comparison, correlation numbers, failed runs
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # 2 scatter plots, the heat map, the predictor summary
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<strong>" in page  # best values marked
    failed = page[page.index("Failed runs"):]
    assert FAILED[0] in failed and "out of memory" in failed
    assert "Pearson r" in page and "k-means NMI" in page


def test_html_report_without_enough_encoders_still_renders(tmp_path):
    results = write_results(tmp_path / "results", visions=["dino-b", "clip-b"], keep=FEW)
    page = render_html_report(results, n_boot=100)
    _self_contained(page)
    assert "<table" in page and "data:image/png" not in page
    assert "No plots" in page and "at least 3" in page
    out = tmp_path / "report.html"
    no_plots = write_report(results, "html", output=out, plots=False)
    assert out.read_text() == no_plots
    assert "No plots" not in no_plots and "<table" in no_plots
