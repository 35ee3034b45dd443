"""`alignprobe train` / `eval` on the one engine: unfinished runs, reuse messages, recipe records."""
from __future__ import annotations

import json

import pytest

from helpers import invoke
from conftest import Killed

TRAIN = ["--vision", "pixels-8", "--text", "bow", "--pairs", "shapes:train?n=150", "--labelled", "shapes:test?n=150",
         "--retrieval", "none", "--dim", "16", "--device", "cpu", "-q"]


@pytest.mark.slow  # trains through the CLI; the engine's resume and reuse are covered in test_engine_runs
def test_eval_refuses_an_unfinished_run_unless_allowed(tmp_path, kill_at_step):
    kill_at_step(3)  # 120 pairs, small-data batch: one step an epoch, a checkpoint each step
    with pytest.raises(Killed):
        invoke("train", *TRAIN, "--epochs", "5", "--checkpoint-every", "1", "--run-dir", tmp_path / "run")
    kill_at_step(None)
    aligned = json.loads((tmp_path / "run" / "aligned.json").read_text())
    done = aligned["epochs_run"]
    assert aligned["finished"] is False and 1 <= done < 5

    refused = invoke("eval", "--model", str(tmp_path / "run"), "-q", catch_exceptions=True)
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert f"unfinished training run ({done} of 5 epochs done)" in refused.output
    assert "--allow-unfinished" in refused.output and "--resume" in refused.output

    allowed = invoke("eval", "--model", str(tmp_path / "run"), "--allow-unfinished", "-q", catch_exceptions=True)
    assert allowed.exit_code == 0, allowed.output
    assert f"epoch {aligned['best']['epoch']}" in allowed.output and "zero_shot_top1" in allowed.output


@pytest.mark.slow  # trains through the CLI; the engine's resume and reuse are covered in test_engine_runs
def test_reused_train_record_points_to_the_run_that_exists(tmp_path):
    results = tmp_path / "results"
    first = invoke("train", *TRAIN, "--epochs", "2", "--run-dir", tmp_path / "first", "--results-dir", results)
    assert first.exit_code == 0, first.output
    record = json.loads(next(results.glob("sail__*.json")).read_text())
    assert record["details"]["preset"] == "sail" and record["train_config"]["image_head"] == "star"
    assert {c["field"] for c in record["details"]["recipe_changes"]} >= {"batch_size", "lr", "out_dim", "epochs"}
    from alignprobe.reports.store import load_results

    assert load_results(results)["heads"].tolist() == ["star w8"]  # what `report` tells SAIL rows apart by
    again = invoke("train", *TRAIN, "--epochs", "2", "--run-dir", tmp_path / "second", "--results-dir", results)
    assert again.exit_code == 0 and "reused" in again.output
    assert f"eval --model {tmp_path / 'first'}" in again.output and str(tmp_path / "second") not in again.output
    assert not (tmp_path / "second").exists()


def test_select_by_a_metric_needs_its_own_selection_set(tmp_path):
    refused = invoke("train", *TRAIN, "--select-by", "zero_shot_top1", "--run-dir", str(tmp_path), catch_exceptions=True)
    assert refused.exit_code != 0 and "--selection SPEC" in refused.output
