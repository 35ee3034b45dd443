"""Reports on odd results directories (issue 18): records of another shape are skipped and counted,
a failed rerun never hides finished metrics, and `$` in an encoder name is printed as typed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignprobe.config import EncodeOptions
from alignprobe.probe.pipelines import sweep as sweep_module
from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep
from alignprobe.reports.records import failure_path, iter_records, shape_problem, write_record
from alignprobe.reports.report import write_report
from alignprobe.reports.store import failed_reruns, load_results, unreadable_records
from reports_data import record, write_results
from helpers import invoke

FEW = ("kmeans_nmi", "linear_probe_top1", "zero_shot_top1", "i2t_r1")


# --------------------------------------------------------------------------- records of another shape
ODD = {
    "vision_info_string": {"vision_info": "dinov2"},
    "timings_list": {"timings_s": [1.0, 2.0]},
    "metrics_list": {"metrics": [0.5, 0.6]},
    "metrics_string": {"metrics": "zero_shot_top1=0.5"},
    "metric_value_dict": {"metrics": {"kmeans_nmi": {"mean": 0.5}}},
    "vision_number": {"vision": 5},
    "seed_bool": {"seed": True},
    "config_hash_list": {"config_hash": ["a", "b"]},
    "text_info_nested": {"text_info": {"family": ["x"]}},
    "finished_number": {"finished": 17},
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_a_record_of_another_shape_is_skipped_and_counted(tmp_path, name):
    results = write_results(tmp_path / "r", keep=FEW)
    odd = record("dino-b", "minilm")
    odd["config_hash"] = f"odd{name}"
    odd.update(ODD[name])
    write_record(results / f"probe__odd__{name}.json", odd)
    df = load_results(results)
    assert len(df) == 12  # the 12 finished records of write_results, the odd one left out
    bad = unreadable_records(df)
    assert [Path(p).name for p, _ in bad] == [f"probe__odd__{name}.json"]
    assert "has another shape" in bad[0][1] and "--force" in bad[0][1]

    res = invoke("report", str(results), "--no-correlations")
    assert res.exit_code == 0, res.output
    assert "1 unreadable" in res.output and f"probe__odd__{name}.json" in res.output
    assert "| dino-b" in res.output


def test_shape_check_lets_other_json_and_good_records_pass():
    assert shape_problem({"pairs": []}) is None  # a sweep plan is not a record
    assert shape_problem(record("dino-b", "minilm")) is None
    assert shape_problem({"vision": "a", "text": "b"}) is None  # a minimal hand-made record
    assert "'timings_s' is a list" in shape_problem({"vision": "a", "text": "b", "timings_s": []})


def test_only_odd_records_is_a_clear_error_not_a_traceback(tmp_path):
    out = tmp_path / "r"
    write_record(out / "probe__x.json", {"vision": "a", "text": "b", "vision_info": "oops"})
    res = invoke("report", str(out))
    assert res.exit_code == 2 and "no result records" in res.output and "1 unreadable" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- failed reruns
def test_failed_rerun_beside_a_finished_record_keeps_and_shows_both(tmp_path):
    results = write_results(tmp_path / "r", keep=FEW)
    done = record("dino-b", "minilm", keep=FEW)
    path = results / f"probe__dino-b__minilm__{done['config_hash']}.json"
    failure = {**record("dino-b", "minilm", status="failed"), "finished": "2026-11-29T09:00:00+00:00",
               "error": "RuntimeError: planted rerun failure"}
    write_record(failure_path(path), failure)
    df = load_results(results)
    row = df[(df["vision"] == "dino-b") & (df["text"] == "minilm")]
    assert len(row) == 1 and row["status"].iloc[0] == "ok" and row["kmeans_nmi"].iloc[0] == pytest.approx(0.45)
    assert row["last_failure"].iloc[0] == "RuntimeError: planted rerun failure"
    assert len(failed_reruns(df)) == 1
    # the really failed pair (never finished) is still a failed row, not merged into anything
    everything = load_results(results, include_failed=True)
    assert list(everything.loc[everything["status"] != "ok", "vision"]) == ["mae-b"]

    md = write_report(results, "md", correlations=False)
    assert "1 finished record(s) failed when rerun later" in md and "planted rerun failure" in md
    page = write_report(results, "html", plots=False)
    assert "Failed reruns of finished records (1)" in page and "planted rerun failure" in page
    res = invoke("report", str(results), "--format", "csv")
    assert res.exit_code == 0 and "failed when rerun later" in res.output and "planted rerun failure" in res.output


def test_a_failure_older_than_the_finished_record_is_not_shown(tmp_path):
    results = write_results(tmp_path / "r", keep=FEW)
    done = record("dino-b", "minilm", keep=FEW)
    path = results / f"probe__dino-b__minilm__{done['config_hash']}.json"
    stale = {**record("dino-b", "minilm", status="failed"), "finished": "2026-11-01T00:00:00+00:00"}
    write_record(failure_path(path), stale)  # failed, then the pair finished on a later rerun
    df = load_results(results)
    assert failed_reruns(df).empty and len(df) == 12
    assert "failed when rerun" not in write_report(results, "md", correlations=False)


RUN = {"pairs": "shapes:train?n=40", "metrics": ("similarity",)}


def test_a_forced_sweep_rerun_that_fails_keeps_the_finished_metrics(tmp_path, monkeypatch):
    options = EncodeOptions(quiet=True)
    grid = SweepConfig(vision=["pixels-8"], text=["bow"], run=RUN)
    out = tmp_path / "rs"
    (first,) = run_sweep(grid, out_dir=out, options=options)
    assert first.status == "done"
    finished = json.loads(first.path.read_text())

    def broken(config, **kwargs):
        raise ValueError("data spec csv:pairs.csv has a bad row 41")

    monkeypatch.setattr(sweep_module, "run_pair", broken)
    (again,) = run_sweep(grid, out_dir=out, options=options, force=True)
    assert again.status == "failed" and again.path == failure_path(first.path)
    assert json.loads(first.path.read_text()) == finished  # the finished record, byte for byte the same
    assert json.loads(again.path.read_text())["status"] == "failed"

    df = load_results(out)
    assert df["mutual_knn"].iloc[0] == pytest.approx(finished["metrics"]["mutual_knn"])
    assert "bad row 41" in df["last_failure"].iloc[0]
    # A pair that never finished still gets its failure at the record path (rerun picks it up there).
    (other,) = run_sweep(SweepConfig(vision=["hog-16"], text=["bow"], run=RUN), out_dir=out, options=options)
    assert other.status == "failed" and not other.path.name.endswith(".failed.json")
    monkeypatch.undo()
    # And the sweep still resumes: the finished pair is skipped, the failed one reruns.
    outcomes = run_sweep(SweepConfig(vision=["pixels-8", "hog-16"], text=["bow"], run=RUN), out_dir=out,
                         options=options)
    assert sorted(o.status for o in outcomes) == ["done", "skipped"]
    assert failed_reruns(load_results(out)).iloc[0]["vision"] == "pixels-8"
