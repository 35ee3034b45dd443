"""Winoground, MMVP-VLM and segmentation through the CLI: `train --winoground/--mmvp/--segmentation`,
`eval --winoground/--mmvp/--segmentation` and `segment`, rows in the records and reports."""
from __future__ import annotations

import json

import pytest
from helpers import invoke
from test_evals_readers import write_mmvp, write_winoground

TRAIN = ["--vision", "random-vit", "--text", "bow", "--pairs", "shapes:train?n=150", "--labelled",
         "shapes:test?n=150", "--retrieval", "none", "--dim", "16", "--epochs", "2", "--device", "cpu", "-q"]


@pytest.mark.slow  # trains a run; the evaluations have their own tests (test_evals_*)
def test_train_eval_and_segment_report_the_papers_other_evaluations(tmp_path):
    wino, mmvp = tmp_path / "winoground", tmp_path / "mmvp"
    write_winoground(wino, n=3)
    mmvp.mkdir()
    write_mmvp(mmvp, [("Color", 1, "a red thing", 2, "a blue thing"), ("Color", 3, "a red one", 4, "a blue one")])
    results = tmp_path / "results"
    trained = invoke("train", *TRAIN, "--run-dir", tmp_path / "run", "--results-dir", results, "--winoground", wino,
                     "--mmvp", mmvp, "--segmentation", "shapes-seg:test?n=20")
    assert trained.exit_code == 0, trained.output
    record = json.loads(next(results.glob("sail__*.json")).read_text())
    for name in ("winoground_text", "winoground_image", "winoground_group", "mmvp", "miou", "pixel_acc"):
        assert 0.0 <= record["metrics"][name] <= 1.0, name
    # three examples, two MMVP pairs: the scores are fractions of those counts
    assert round(record["metrics"]["winoground_group"] * 3) == record["metrics"]["winoground_group"] * 3
    assert record["metrics"]["mmvp"] * 2 in (0.0, 1.0, 2.0)

    evaluated = invoke("eval", "--model", tmp_path / "run", "--labelled", "none", "--retrieval", "none",
                       "--winoground", wino, "--mmvp", mmvp, "--json", tmp_path / "eval.json", "-q")
    assert evaluated.exit_code == 0, evaluated.output
    assert "winoground_text" in evaluated.output and "mmvp" in evaluated.output
    scores = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert scores["winoground_group"] == record["metrics"]["winoground_group"]  # same weights, same data
    assert scores["mmvp"] == record["metrics"]["mmvp"]

    figure = tmp_path / "seg.png"
    segmented = invoke("segment", "--model", tmp_path / "run", "--data", "shapes-seg:test?n=20", "--figure", figure,
                       "--figure-images", "2", "-q")
    assert segmented.exit_code == 0, segmented.output
    assert "miou" in segmented.output and figure.stat().st_size > 1000

    report = invoke("report", results, "--columns", "winoground_group,mmvp,miou")
    assert report.exit_code == 0 and "mIoU" in report.output and "MMVP-VLM" in report.output


@pytest.mark.slow  # trains a run; the evaluations have their own tests (test_evals_*)
def test_eval_with_nothing_to_evaluate_says_what_to_give(tmp_path):
    trained = invoke("train", *TRAIN, "--run-dir", tmp_path / "run")
    assert trained.exit_code == 0, trained.output
    refused = invoke("eval", "--model", str(tmp_path / "run"), "--labelled", "none",
                                        "--retrieval", "none", catch_exceptions=True)
    assert refused.exit_code != 0 and "winoground" in refused.output and "Traceback" not in refused.output
    stray = invoke("eval", "--model", str(tmp_path / "run"), "--mmvp", str(tmp_path),
                                      "--last-attention", "qq", "--background-threshold", "0.5", catch_exceptions=True)
    assert stray.exit_code != 0 and "Traceback" not in stray.output
    assert "--background-threshold, --last-attention" in stray.output and "--segmentation SPEC" in stray.output
