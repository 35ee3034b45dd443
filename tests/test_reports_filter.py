"""`--rows` filters: columns compared with literals select rows; anything that could run code is refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from alignprobe.errors import ValidationError
from alignprobe.reports.records import write_record
from alignprobe.reports.store import filter_rows, load_results
from alignprobe.reports.tables import render_table
from reports_data import SEEDED, record, write_results
from helpers import invoke


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "results")


@pytest.fixture
def df(results):
    return load_results(results)


def _pairs(frame):
    return sorted(zip(frame["vision"], frame["text"], frame["seed"]))


@pytest.mark.parametrize("expr, keep", [
    ("vision == 'dinov2-b' and seed == 0", lambda r: r.vision == "dinov2-b" and r.seed == 0),
    ("zero_shot_top1 > 0.3", lambda r: r.zero_shot_top1 > 0.3),
    ("text in ['mpnet', 'gte']", lambda r: r.text == "mpnet"),
    ("not (seed == 1)", lambda r: r.seed != 1),
    ("vision not in ('mae-b', 'dino-b') or text == 'mpnet'",
     lambda r: r.vision not in ("mae-b", "dino-b") or r.text == "mpnet"),
    ("0.2 <= kmeans_nmi < 0.6", lambda r: 0.2 <= r.kmeans_nmi < 0.6),
    ("vision_is_control", lambda r: bool(r.vision_is_control)),
    ("not vision_is_control and vision_params_m > 100", lambda r: not r.vision_is_control and r.vision_params_m > 100),
    ("seed != None and seed >= -1", lambda r: True),
    ("error == None and (text == 'minilm' or vision_family == 'dino')",
     lambda r: r.text == "minilm" or r.vision_family == "dino"),
])
def test_valid_filters_select_the_right_rows(df, expr, keep):
    got = filter_rows(df, expr)
    want = df[[bool(keep(r)) for r in df.itertuples(index=False)]]
    assert _pairs(got) == _pairs(want) and len(got) > 0


def test_filters_on_metric_names_with_other_characters(df):
    got = filter_rows(df, "0.5 < `knn_top1@20` and text == 'minilm'")
    assert len(got) and (got["knn_top1@20"] > 0.5).all() and set(got["text"]) == {"minilm"}
    assert len(got) == int(((df["knn_top1@20"] > 0.5) & (df["text"] == "minilm")).sum())


def test_issue_examples_including_recall_at_10(tmp_path):
    out = tmp_path / "r"
    for i, (vision, r10) in enumerate([("dinov2-b", 0.7), ("dino-b", 0.4), ("mae-b", 0.55)]):
        for seed in (0, 1):
            rec = record(vision, "minilm", seed)
            rec["metrics"]["i2t_r10"] = r10 + 0.01 * seed
            write_record(out / f"probe__{vision}__minilm__{rec['config_hash']}.json", rec)
    frame = load_results(out)
    assert _pairs(filter_rows(frame, "i2t_r10 > 0.5")) == [("dinov2-b", "minilm", s) for s in (0, 1)] + [
        ("mae-b", "minilm", s) for s in (0, 1)]
    assert _pairs(filter_rows(frame, "vision == 'dinov2-b' and seed == 0")) == [("dinov2-b", "minilm", 0)]
    assert _pairs(filter_rows(frame, "text in ['gte', 'minilm']")) == _pairs(frame)
    assert _pairs(filter_rows(frame, "not (seed == 1)")) == [(v, "minilm", 0) for v in ("dino-b", "dinov2-b", "mae-b")]


EXPLOITS = [
    "@pd.io.common.os.system('touch {marker}')",
    "__import__('os').system('touch {marker}')",
    "vision == __import__('os').system('touch {marker}')",
    "vision.str.startswith('d')",
    "vision == open('{marker}', 'w').name",
    "seed == (lambda: 1)()",
    "`vision`.__class__ == 'x'",
    "[c for c in ().__class__.__bases__] == 1",
    "vision == 'a' if True else 'b'",
    "vision[0] == 'd'",
    "seed + 1 == 1",
    "seed == 1 + 1",
    "1 + 1",
    "seed",
    "vision",
    "True",
    "'dinov2-b'",
    "seed is None",
    "vision == {'a': 1}",
    "(x := 1) == 1",
    "seed == 0; import os",
    "vision == f'{1}'",
]


@pytest.mark.parametrize("expr", EXPLOITS)
def test_anything_but_comparisons_is_refused_and_runs_nothing(df, tmp_path, expr):
    marker = tmp_path / "ran"
    with pytest.raises(ValidationError) as err:
        filter_rows(df, expr.replace("{marker}", str(marker)))
    assert not marker.exists()
    message = str(err.value)
    assert "compares columns with literals" in message and "--rows" in message


def test_a_bare_column_is_not_a_condition(df):
    # `--rows seed` once duplicated a row and showed it as a 4-seed mean.
    with pytest.raises(ValidationError, match="'seed' alone is not a condition.*seed == "):
        filter_rows(df, "seed")


def test_unknown_column_lists_the_columns(df):
    with pytest.raises(ValidationError, match="no column 'familly'.*columns: kind, status, vision"):
        filter_rows(df, "familly == 'dino'")
    with pytest.raises(ValidationError, match="no column 'knn_top1@7'"):
        filter_rows(df, "`knn_top1@7` > 0")


def test_wrong_types_and_empty_selection_are_clear(df):
    with pytest.raises(ValidationError, match="cannot compare column 'vision'"):
        filter_rows(df, "vision > 3")
    with pytest.raises(ValidationError, match="selects no rows"):
        filter_rows(df, "seed == 7")
    with pytest.raises(ValidationError, match="needs a list"):
        filter_rows(df, "text in 'minilm'")
    with pytest.raises(ValidationError, match="not closed"):
        filter_rows(df, "`knn_top1@20 > 0")


def test_names_still_work_and_backticks_inside_strings_are_text(df):
    assert set(filter_rows(df, "dino-b, clip-b")["vision"]) == {"dino-b", "clip-b"}
    with pytest.raises(ValidationError, match="selects no rows"):
        filter_rows(df, "vision == '`kind`'")


def test_render_table_goes_through_the_filter(results, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ValidationError, match="compares columns with literals"):
        render_table(results, rows=f"@pd.io.common.os.system('touch {marker}')")
    assert not marker.exists()
    table = render_table(results, rows=f"vision == '{SEEDED[0]}' and text == '{SEEDED[1]}'", metrics="kmeans_nmi")
    body = [line for line in table.splitlines() if line.startswith(f"| {SEEDED[0]} ")]
    assert len(body) == 1 and "± " in body[0]  # both seeds of the pair, averaged


def test_cli_report_and_plot_refuse_code_and_accept_filters(results, tmp_path):
    marker = tmp_path / "ran"
    for command in ("report", "plot"):
        res = invoke(command, str(results), "--rows", f"@pd.io.common.os.system('touch {marker}')")
        assert res.exit_code == 2 and not marker.exists(), res.output
        assert "compares columns with literals" in res.output and "Traceback" not in res.output
    res = invoke("report", str(results), "--rows", "text == 'mpnet'", "--no-correlations")
    assert res.exit_code == 0 and "minilm" not in res.output.split("\n\n")[0], res.output


def test_plot_rows_picks_one_configuration_of_a_pair(results, tmp_path):
    other = record("dino-b", "minilm")
    other.update(config_hash="otherconfig0", group_hash="otherconfig")
    write_record(results / "probe__dino-b__minilm__otherconfig0.json", other)
    out = tmp_path / "plots"
    res = invoke("plot", str(results), "-o", str(out), "--format", "png", "--n-boot", "20",
                               "--text", "minilm")
    assert res.exit_code == 2 and "group_hash g10, otherconfig" in res.output and "--rows" in res.output, res.output
    res = invoke("plot", str(results), "-o", str(out), "--format", "png", "--n-boot", "20",
                               "--text", "minilm", "--rows", "group_hash != 'otherconfig'")
    assert res.exit_code == 0, res.output
    assert any(Path(line).suffix == ".png" for line in res.output.splitlines())


def test_mistyped_encoder_names_are_named_as_names(df):
    with pytest.raises(ValidationError, match=r"vision encoder\(s\) \['clipb'\] are not in these results"):
        filter_rows(df, "dino-b, clipb")
    with pytest.raises(ValidationError, match=r"rows 'dinov2-bb' \(--rows\) names no vision encoder.*present: clip-b"):
        filter_rows(df, "dinov2-bb")


def test_huge_or_odd_filters_are_refused_cheaply(df):
    with pytest.raises(ValidationError, match="characters long"):
        filter_rows(df, "seed == 0 or " * 1000 + "seed == 1")
    with pytest.raises(ValidationError, match="not a valid filter"):
        filter_rows(df, "seed == '\x00'")
    assert len(filter_rows(df, "not " * 500 + "(seed == 1)")) == int((df["seed"] == 1).sum())


def test_html_report_and_plots_go_through_the_filter(results, tmp_path):
    from alignprobe.reports.plots import make_plots
    from alignprobe.reports.report import write_report

    marker = tmp_path / "ran"
    exploit = f"@pd.io.common.os.system('touch {marker}')"
    with pytest.raises(ValidationError, match="compares columns with literals"):
        write_report(results, "html", rows=exploit)
    with pytest.raises(ValidationError, match="compares columns with literals"):
        make_plots(results, tmp_path / "p", rows=exploit)
    assert not marker.exists()
    page = write_report(results, "html", rows="text == 'mpnet'", plots=False)
    assert "<td>mpnet</td>" in page and "<td>minilm</td>" not in page
