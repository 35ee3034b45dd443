"""Result records on disk and what the store and `report` make of them: damaged records are named and
set aside; a record that cannot be written is kept elsewhere or printed; records of another shape are
skipped and counted; a failed rerun never hides the finished metrics beside it."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from alignprobe.config import EncodeOptions
from alignprobe.errors import DamagedRecordError, ResultNotSavedError
from alignprobe.probe.pipelines import sweep as sweep_module
from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep
from alignprobe.reports.records import failure_path, lookup_record, read_record, shape_problem, write_record
from alignprobe.reports.report import write_report
from alignprobe.reports.store import failed_reruns, load_results, results_header, unreadable_records
from helpers import invoke
from reports_data import record, write_results

FEW = ("kmeans_nmi", "linear_probe_top1", "zero_shot_top1", "i2t_r1")


def _damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "list": b"[1, 2]",
                      "binary": b"\xff\xfe\x00garbage"}[how])
    return path.read_bytes()


# --------------------------------------------------------------------------- damaged records
@pytest.mark.parametrize("how", ["truncate", "empty", "list", "binary"])
def test_read_record_names_the_damaged_file(tmp_path, how):
    path = write_record(tmp_path / "probe__a__b__h.json", {"vision": "a", "text": "b", "status": "ok"})
    _damage(path, how)
    with pytest.raises(DamagedRecordError, match=rf"result record {path} is damaged .*--force"):
        read_record(path)


def test_store_names_and_counts_every_unreadable_record(tmp_path, caplog):
    results = write_results(tmp_path / "r", keep=FEW)
    victims = sorted(results.glob("probe__dino-b__*.json")) + sorted(results.glob("probe__clip-b__minilm*.json"))
    assert len(victims) == 3
    before = {p: _damage(p, how) for p, how in zip(victims, ("truncate", "empty", "list"))}
    with caplog.at_level(logging.WARNING):
        df = load_results(results)
    bad = unreadable_records(df)
    assert sorted(Path(p) for p, _ in bad) == sorted(victims)
    assert all("is damaged" in why for _, why in bad)
    assert "dino-b" not in set(df["vision"])  # left out of the table, but ...
    header = results_header(df)
    assert "3 unreadable record(s) left out" in header  # ... counted and named
    assert all(p.name in header for p in victims)
    assert all(str(p) in caplog.text for p in victims)
    assert {p: p.read_bytes() for p in victims} == before  # reading never touches them


def test_report_command_prints_the_header_and_names_damaged_records(tmp_path):
    results = write_results(tmp_path / "r", keep=FEW)
    [victim] = list(results.glob("probe__mae-b__minilm*.json"))
    _damage(victim, "truncate")
    result = invoke("report", str(results))
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "1 unreadable (left out of the table)" in result.output
    assert str(victim) in result.output and "is damaged" in result.output
    assert result.output.count(str(victim)) == 1  # named once, not once per logger
    assert "dinov2-b" in result.output  # the table of the readable records is still there


def test_lookup_treats_a_damaged_record_as_missing_and_keeps_it_aside(tmp_path, caplog):
    path = write_record(tmp_path / "probe__a__b__h.json", {"vision": "a", "text": "b", "status": "ok"})
    assert lookup_record(path)["status"] == "ok"
    assert lookup_record(tmp_path / "none.json") is None
    damaged = _damage(path, "truncate")
    with caplog.at_level(logging.WARNING):
        assert lookup_record(path) is None  # the caller recomputes the pair
    assert not path.exists() and (tmp_path / "probe__a__b__h.json.damaged").read_bytes() == damaged
    assert "moved it to" in caplog.text
    write_record(path, {"vision": "a", "text": "b", "status": "ok", "metrics": {"m": 1.0}})
    assert lookup_record(path)["metrics"] == {"m": 1.0}
    # The moved-aside copy is not a record the store reads (it does not end in .json).
    assert list(load_results(tmp_path)["path"]) == [str(path)]


# --------------------------------------------------------------------------- unwritable results
def _private_tmp(tmp_path, monkeypatch) -> Path:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return tmp_path / "tmp"


def _kept_path(err: pytest.ExceptionInfo) -> Path:
    return Path(str(err.value).split("was kept at ")[1].split(": move it")[0])


def test_a_record_that_cannot_be_written_is_kept_elsewhere_and_named(tmp_path, monkeypatch):
    tmp = _private_tmp(tmp_path, monkeypatch)
    (tmp_path / "blocker").write_text("a file, not a directory")
    target = tmp_path / "blocker" / "results" / "probe__a__b__h.json"
    record = {"vision": "a", "text": "b", "status": "ok", "metrics": {"zero_shot_top1": 0.5}}
    with pytest.raises(ResultNotSavedError) as err:
        write_record(target, record)
    msg = str(err.value)
    assert str(target) in msg and "was kept at" in msg
    kept = _kept_path(err)
    assert kept.parent.parent == tmp and kept.parent.name.startswith("alignprobe-unsaved-")
    assert (kept.parent.stat().st_mode & 0o777) == 0o700  # private: other local users cannot read or plant
    assert json.loads(kept.read_text()) == record
    # A second failure (a sweep's failed-pair record) never overwrites the first kept result.
    with pytest.raises(ResultNotSavedError) as second:
        write_record(target, {"vision": "a", "text": "b", "status": "failed"})
    assert _kept_path(second) != kept and json.loads(kept.read_text()) == record


@pytest.mark.parametrize("plant", ["symlink", "directory", "file"])
def test_a_planted_path_at_the_old_fixed_location_is_not_used(tmp_path, monkeypatch, plant):
    # Another local user could create $TMPDIR/alignprobe-unsaved before us: a link to their
    # directory (to read our result, or replace it), a directory they own, or a file to block us.
    tmp = _private_tmp(tmp_path, monkeypatch)
    theirs = tmp_path / "attacker"
    theirs.mkdir()
    old = tmp / "alignprobe-unsaved"
    {"symlink": lambda: old.symlink_to(theirs), "directory": old.mkdir,
     "file": lambda: old.write_text("planted")}[plant]()
    target = tmp_path / "missing-parent-file"
    target.write_text("x")
    with pytest.raises(ResultNotSavedError) as err:
        write_record(target / "probe__a__b__h.json", {"vision": "a", "text": "b", "metrics": {}})
    kept = _kept_path(err)
    assert kept.exists() and old not in kept.parents and kept.resolve().parent.parent == tmp.resolve()
    assert list(theirs.iterdir()) == []
    # what was planted is left as it was
    untouched = {"symlink": lambda: old.is_symlink() and old.resolve() == theirs.resolve(),
                 "directory": lambda: old.is_dir() and not old.is_symlink() and list(old.iterdir()) == [],
                 "file": lambda: old.is_file() and old.read_text() == "planted"}[plant]
    assert untouched()


def test_record_is_printed_when_no_place_at_all_can_be_written(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setattr("alignprobe.reports.records.fallback_dir", lambda: tmp_path / "f" / "also-blocked")
    with pytest.raises(ResultNotSavedError) as err:
        write_record(tmp_path / "f" / "r.json", {"vision": "a", "text": "b", "metrics": {"knn": 0.25}})
    assert '"knn": 0.25' in str(err.value) and "save it as r.json" in str(err.value)


def test_report_that_cannot_be_written_at_the_end_is_printed_instead(tmp_path, monkeypatch):
    results = write_results(tmp_path / "r", keep=FEW)

    def disk_full(target, text):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr("alignprobe.reports.report.write_text_atomic", disk_full)
    result = invoke("report", str(results), "--output", str(tmp_path / "table.md"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "No space left on device" in result.output and "printed above instead" in result.output
    assert re.search(r"^\| dinov2-b ", result.output, re.M), result.output  # the table itself


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
