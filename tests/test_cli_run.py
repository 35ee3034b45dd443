"""`alignprobe run`, `sweep`, `report` and `plot` end to end on the built-in data, offline."""
from __future__ import annotations

import json

import pytest

from helpers import invoke

from alignprobe.probe.embeddings import encoding

SMALL = ["--pairs", "shapes:train?n=300", "--labelled", "shapes:test?n=300", "--retrieval", "shapes:test?n=300",
         "--epochs", "30", "-q"]


@pytest.mark.slow  # real MiniLM end to end; the pipeline's logic is covered by test_pipelines_run on tiny data
def test_run_pixels_minilm_prints_table_and_writes_record(tmp_path):
    out = tmp_path / "results"
    result = invoke("run", "--vision", "pixels", "--text", "minilm", *SMALL, "--results-dir", out)
    assert result.exit_code == 0, result.output
    for label in ("k-means NMI", "linear probe top-1", "zero-shot top-1", "I2T R@1"):
        assert label in result.output
    for measure in ("mutual_knn", "cka", "cknna"):  # a row each in the calibrated similarity table
        assert f"\n  {measure} " in result.output
    [path] = list(out.glob("probe__pixels__*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["vision"] == "pixels" and record["text"] == "minilm"
    m = record["metrics"]
    for key in ("kmeans_nmi", "knn_top1@10", "linear_probe_top1", "zero_shot_top1", "zero_shot_top5",
                "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mutual_knn", "cka"):
        assert key in m and 0.0 <= m[key] <= 1.0, key
    for key in ("kmeans_ari", "cknna"):  # chance-corrected / centred: may dip below zero
        assert key in m and -1.0 <= m[key] <= 1.0, key
    # The probe learns something: retrieval through the heads beats chance (1/60 test images) by far.
    assert m["i2t_r10"] > 0.3
    assert record["encoders"]["text"]["name"] == "all-minilm-l6-v2"
    assert record["data"]["pairs"]["fingerprint"] and record["config"]["seed"] == 0
    assert record["environment"]["alignprobe"] and record["timings_s"]["total"] > 0
    assert record["vision_info"]["is_control"] is True

    # A rerun with the same inputs reuses the finished record and encodes nothing.
    calls = []
    real = encoding.encode_source

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    encoding.encode_source, saved = spy, encoding.encode_source
    try:
        again = invoke("run", "--vision", "pixels", "--text", "minilm", *SMALL, "--results-dir", out)
    finally:
        encoding.encode_source = saved
    assert again.exit_code == 0 and "reused" in again.output and calls == []


def test_metrics_subset_and_bad_metric(tmp_path):
    result = invoke("run", "--vision", "hog", "--text", "bow", *SMALL, "--metrics", "kmeans_nmi,similarity",
                    "--results-dir", tmp_path)
    assert result.exit_code == 0, result.output
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    metrics = set(record["metrics"])
    assert {"kmeans_nmi", "kmeans_ari", "mutual_knn", "cka", "cknna", "mutual_knn_null", "cka_null",
            "cknna_null"} <= metrics  # each similarity with its chance level
    # only the two groups asked for: no k-NN, linear probe, zero-shot or retrieval column
    assert all(name.startswith(("kmeans_", "mutual_knn", "cka", "cknna")) for name in metrics), metrics
    bad = invoke("run", "--vision", "hog", "--text", "bow", "--metrics", "accuracy", catch_exceptions=True)
    assert bad.exit_code == 2 and "kmeans_nmi" in bad.output


def test_unavailable_model_fails_fast_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    result = invoke("run", "--vision", "dinov2", "--text", "gte", "--cache-dir", cache,
                    "--results-dir", tmp_path / "results", catch_exceptions=True)
    assert result.exit_code == 2
    assert "not in the local cache" in result.output and "facebook/dinov2-large" in result.output
    assert not cache.exists() and not (tmp_path / "results").exists()  # nothing encoded, nothing written


@pytest.mark.slow  # real MiniLM end to end; the pipeline's logic is covered by test_pipelines_run on tiny data
def test_sweep_report_and_plot(tmp_path):
    out = tmp_path / "results"
    common = ["--pairs", "shapes:train?n=300", "--labelled", "shapes:test?n=300", "--retrieval",
              "shapes:test?n=300", "--metrics", "kmeans_nmi,knn,linear_probe,similarity", "-q", "--results-dir", out]
    result = invoke("sweep", "--vision", "pixels-8,pixels,hog-16", "--text", "bow", *common)
    assert result.exit_code == 0, result.output
    assert "3 pairs: 3 run" in result.output
    again = invoke("sweep", "--vision", "pixels-8,pixels,hog-16", "--text", "bow", *common)
    assert "0 run, 3 already done" in again.output

    md = invoke("report", out, "--format", "md")
    assert md.exit_code == 0, md.output
    assert "| pixels " in md.output and "| hog-16 " in md.output  # one table row per vision encoder
    tex = tmp_path / "table.tex"
    assert invoke("report", out, "--format", "latex", "--output", tex).exit_code == 0
    assert "\\toprule" in tex.read_text()

    plots = invoke("plot", out, "--output-dir", tmp_path / "plots", "--n-boot", "200")
    assert plots.exit_code == 0, plots.output
    files = [p for p in (tmp_path / "plots").iterdir()]
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".pdf" for p in files)
