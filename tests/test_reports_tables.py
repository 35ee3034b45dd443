"""Comparison tables: Markdown parses back to the store, LaTeX is booktabs, CSV round-trips."""
import io
import re

import numpy as np
import pandas as pd
import pytest

from alignprobe.errors import ValidationError
from alignprobe.reports.metric_info import metric_info
from alignprobe.reports.report import write_report
from alignprobe.reports.store import aggregate, load_results
from alignprobe.reports.tables import render_table
from reports_data import SEEDED, write_results
from helpers import invoke

METRICS = ["kmeans_nmi", "knn_top1@20", "linear_probe_top1", "zero_shot_top1", "probe_val_loss", "probe_epochs"]


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results")


def _parse_markdown(text):
    """A pipe table -> (header, rows of cells); stops at the first line that is not a table row."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("|"):
            if lines:
                break
            continue
        lines.append(line)
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, rule, body = split[0], split[1], split[2:]
    assert all(set(c) <= set(":-") for c in rule)
    return header, body


def _metric_of(header_cell):
    label = header_cell.rstrip(" ↑↓")
    matches = [m for m in METRICS if metric_info(m).label == label]
    assert len(matches) == 1, header_cell
    return matches[0]


def _number(cell):
    bold = cell.startswith("**") and cell.endswith("**")
    parts = cell.strip("*").split("±")
    mean = float(parts[0])
    std = float(parts[1]) if len(parts) == 2 else None
    return mean, std, bold


def test_markdown_parses_back_to_the_store(results):
    text = render_table(results, format="md", metrics=METRICS)
    header, body = _parse_markdown(text)
    assert header[:3] == ["vision", "text", "seeds"]
    agg = aggregate(load_results(results), METRICS).set_index(["vision", "text"])
    assert len(body) == len(agg)
    metric_cols = {i: _metric_of(h) for i, h in enumerate(header) if i >= 3}
    assert list(metric_cols.values()) == METRICS
    bold_rows = {m: set() for m in METRICS}
    for cells in body:
        key = (cells[0], cells[1])
        assert int(cells[2]) == agg.loc[key, "n_seeds"]
        for i, m in metric_cols.items():
            mean, std, bold = _number(cells[i])
            assert mean == pytest.approx(agg.loc[key, f"{m}_mean"], abs=5e-4, rel=5e-3), (key, m)
            if agg.loc[key, "n_seeds"] > 1:
                assert std == pytest.approx(agg.loc[key, f"{m}_std"], abs=5e-4), (key, m)
            else:
                assert std is None
            if bold:
                bold_rows[m].add(key)
    for m in METRICS:
        values = agg[f"{m}_mean"]
        hib = metric_info(m).higher_is_better
        if hib is None:
            assert not bold_rows[m], m  # epochs have no "best"
            continue
        best = values.max() if hib else values.min()
        expected = set(values.index[np.isclose(values, best)])
        assert bold_rows[m] == expected, m
    # The seeded pair shows mean ± std in the documented form.
    seeded = next(c for c in body if (c[0], c[1]) == SEEDED)
    assert re.fullmatch(r"\*{0,2}\d\.\d{3} ± \d\.\d{3}\*{0,2}", seeded[3])


def test_markdown_default_metrics_sort_and_filter(results):
    header, body = _parse_markdown(render_table(results))
    metrics = [_label.rstrip(" ↑↓") for _label in header[3:]]
    assert "k-means NMI" in metrics and "zero-shot top-1" in metrics and "linear probe top-1" in metrics
    assert "probe epochs" not in metrics  # bookkeeping is not in the standard set
    header, body = _parse_markdown(render_table(results, metrics=["zero_shot_top1"], sort_by="zero_shot_top1"))
    values = [_number(c[-1])[0] for c in body]
    assert values == sorted(values, reverse=True)
    header, body = _parse_markdown(render_table(results, metrics="probe_val_loss", sort_by="probe_val_loss"))
    values = [_number(c[-1])[0] for c in body]
    assert values == sorted(values)  # lower is better: ascending
    header, body = _parse_markdown(render_table(results, rows=["mae-b", "dino-b"], metrics=["kmeans_nmi"]))
    assert {c[0] for c in body} == {"mae-b", "dino-b"}
    assert header[:2] == ["vision", "text"] and "seeds" not in header  # no row has several seeds
    header, body = _parse_markdown(render_table(results, rows="text == 'mpnet'", metrics=["kmeans_nmi"]))
    assert {c[1] for c in body} == {"mpnet"}


def test_unknown_metric_and_sort_are_clear_errors(results):
    with pytest.raises(ValidationError, match="kmeans_nmi"):
        render_table(results, metrics=["kmeans_nmii"])
    with pytest.raises(ValidationError, match="cannot sort"):
        render_table(results, sort_by="accuracy")
    with pytest.raises(ValidationError, match="format"):
        render_table(results, format="docx")


def test_latex_booktabs(results):
    text = render_table(results, format="latex", metrics=["kmeans_nmi", "zero_shot_top1"])
    lines = text.splitlines()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert lines.count(rule) == 1
    assert lines.index("\\toprule") < lines.index("\\midrule") < lines.index("\\bottomrule")
    header = lines[lines.index("\\toprule") + 1]
    assert header.endswith("\\\\")
    cols = [c.strip() for c in header[:-2].split(" & ")]
    assert cols == ["vision", "text", "seeds", "k-means NMI $\\uparrow$", "zero-shot top-1 $\\uparrow$"]
    assert "\\begin{tabular}{lllrr}" in text
    body = lines[lines.index("\\midrule") + 1: lines.index("\\bottomrule")]
    assert len(body) == 11
    assert all(len(row.split(" & ")) == 5 for row in body)
    assert any(row.startswith("random\\_vit & ") for row in body)
    assert "random_vit" not in text.replace("random\\_vit", "")
    assert "\\textbf{0.660}" in text  # dinov2-l has the best NMI
    assert "$\\pm$" in text and "±" not in text


def test_csv_round_trips_through_pandas(results):
    text = render_table(results, format="csv", metrics=["kmeans_nmi", "zero_shot_top1"])
    back = pd.read_csv(io.StringIO(text))
    agg = aggregate(load_results(results), ["kmeans_nmi", "zero_shot_top1"])
    assert {"vision", "text", "n_seeds", "kmeans_nmi_mean", "kmeans_nmi_std", "zero_shot_top1_mean"} <= set(back)
    merged = back.merge(agg, on=["vision", "text"], suffixes=("", "_store"))
    assert len(merged) == len(agg) == len(back)
    np.testing.assert_allclose(merged["zero_shot_top1_mean"], merged["zero_shot_top1_mean_store"])
    np.testing.assert_allclose(merged["kmeans_nmi_std"], merged["kmeans_nmi_std_store"])  # NaN == NaN here
    assert "**" not in text and "±" not in text


def test_write_report_writes_atomically_and_returns_text(results, tmp_path):
    out = tmp_path / "report" / "table.tex"
    text = write_report(results, format=None, output=out, metrics="kmeans_nmi")
    assert out.read_text() == text and "\\toprule" in text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert write_report(results, "md", metrics="kmeans_nmi").startswith("| vision")


def test_report_without_format_or_output_is_markdown(results, tmp_path):
    
    assert write_report(results, format=None, metrics="kmeans_nmi").startswith("| vision")
    res = invoke("report", str(results), "--columns", "kmeans_nmi")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("| vision")
    with pytest.raises(ValidationError, match="cannot infer the report format"):
        write_report(results, format=None, output=tmp_path / "table.docx")


def test_probe_and_sail_rows_of_one_pair_are_labelled_by_their_heads(tmp_path):
    from alignprobe.reports.records import write_record
    from reports_data import VISION, record

    vision, text = sorted(VISION)[0], "minilm"
    runs = [("probe", {"probe_config": {"image_head": "linear", "text_head": "linear", "width": 8}}, 0.5),
            ("sail", {"train_config": {"image_head": "linear", "text_head": "linear", "width": 8}}, 0.6),
            ("sail", {"train_config": {"image_head": "star", "text_head": "star", "width": 8}}, 0.4),
            # a record of the first SAIL trainer's format, which named its config "sail_config"
            ("sail", {"sail_config": {"image_head": "star", "text_head": "mlp", "width": 4}}, 0.3)]
    for i, (kind, extra, zs) in enumerate(runs):
        rec = record(vision, text, keep={"zero_shot_top1"})
        rec.update(kind=kind, config_hash=f"h{i}", group_hash=f"h{i}", metrics={"zero_shot_top1": zs}, **extra)
        write_record(tmp_path / f"{kind}__{vision}__{text}__h{i}.json", rec)
    table = pd.read_csv(io.StringIO(write_report(tmp_path, "csv", metrics="zero_shot_top1")))
    got = dict(zip(zip(table["kind"], table["heads"]), table["zero_shot_top1_mean"]))
    assert got == {("probe", "linear"): 0.5, ("sail", "linear"): 0.6, ("sail", "star w8"): 0.4,
                   ("sail", "star w4 / mlp"): 0.3}
    header = write_report(tmp_path, "md", metrics="zero_shot_top1").splitlines()[0]
    assert "| heads |" in header and "config" not in header  # the heads tell the rows apart
