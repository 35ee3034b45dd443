"""The assessment flags of `run`, `sweep` and `report`: --similarity / --n-permutations / --similarity-alpha,
--baselines, --n-pairs, --text-layer and report --versus-baseline reach the records and the tables."""
from __future__ import annotations

import json

import pytest
from helpers import invoke, save_hf_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = ["--pairs", "shapes:train?n=60", "--labelled", "shapes:test?n=30", "--retrieval", "shapes:test?n=30", "--allow-overlap"]
FAST = ["--epochs", "2", "--num-workers", "0", "-q"]


def _records(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.glob("probe__*.json"))]


def test_similarity_baselines_and_text_layer_reach_the_record(tmp_path):
    text = save_hf_text(tmp_path / "bert")
    res = invoke("run", "--vision", "pixels-8", "--text", text, "--text-layer", 1, *DATA, *FAST,
                 "--metrics", "zero_shot,retrieval,similarity", "--similarity", "cka,rsa", "--n-permutations", 19,
                 "--similarity-alpha", 0.1, "--baselines", "procrustes", "--results-dir", tmp_path / "results")
    assert res.exit_code == 0, res.output
    [record] = _records(tmp_path / "results")
    assert record["text_request"]["layer"] == 1 and record["text"].endswith("@1")
    assert record["config"]["similarity"] == ["cka", "rsa"] and record["config"]["n_permutations"] == 19
    assert record["config"]["similarity_alpha"] == 0.1
    metrics = record["metrics"]
    for measure in ("cka", "rsa"):
        assert 1 / 20 <= metrics[f"{measure}_p"] <= 1  # add-one p of 19 permutations
        assert f"{measure}_calibrated" in metrics and f"{measure}_threshold" in metrics
    assert "mutual_knn" not in metrics  # only the chosen measures
    assert "baseline_procrustes_i2t_r1" in metrics and not any(k.startswith("baseline_ridge") for k in metrics)


def test_baselines_none_turns_them_off_and_bad_names_are_refused(tmp_path):
    res = invoke("run", "--vision", "pixels-8", "--text", "bow", *DATA, *FAST, "--metrics", "zero_shot",
                 "--baselines", "none", "--results-dir", tmp_path / "results")
    assert res.exit_code == 0, res.output
    [record] = _records(tmp_path / "results")
    assert record["config"]["baselines"] == [] and not any(k.startswith("baseline_") for k in record["metrics"])
    bad = invoke("run", "--vision", "pixels-8", "--text", "bow", "--baselines", "procrustes,umap",
                 "--results-dir", tmp_path / "r2", catch_exceptions=True)
    assert bad.exit_code == 2 and "unknown baseline(s) ['umap']" in bad.output
    bad = invoke("run", "--vision", "pixels-8", "--text", "bow", "--similarity", "cka,nope",
                 "--results-dir", tmp_path / "r3", catch_exceptions=True)
    assert bad.exit_code == 2 and "nope" in bad.output and "mutual_knn" in bad.output  # names the valid ones


def test_sweep_n_pairs_writes_one_record_per_subset_and_report_compares_with_the_baseline(tmp_path):
    results = tmp_path / "results"
    res = invoke("sweep", "--vision", "pixels-8", "--text", "bow", *DATA, *FAST, "--metrics", "retrieval",
                 "--n-pairs", "20,all", "--baselines", "procrustes", "--results-dir", results)
    assert res.exit_code == 0, res.output
    records = _records(results)
    available = records[0]["details"]["n_pairs_available"]
    assert available > 20 and sorted(r["details"]["n_pairs"] for r in records) == [20, available]
    table = invoke("report", results, "--format", "csv", "--versus-baseline", "--columns", "i2t_r1")
    assert table.exit_code == 0, table.output
    header = table.output.splitlines()[0]
    assert "probe_minus_best_baseline_i2t_r1" in header or "probe minus best baseline" in header.lower()


def test_train_from_sweep_trains_the_layer_and_pooling_the_probe_used(tmp_path):
    text = save_hf_text(tmp_path / "bert")
    results = tmp_path / "results"
    res = invoke("run", "--vision", "pixels-8", "--text", text, "--text-layer", 1, "--text-pooling", "cls", *DATA,
                 *FAST, "--metrics", "retrieval", "--baselines", "none", "--results-dir", results)
    assert res.exit_code == 0, res.output
    res = invoke("train", "--from-sweep", results, "--top-k", 1, "--by", "i2t_r1", "--epochs", 1, "--dim", 8,
                 "--head", "linear", "--num-workers", 0, "-q")
    assert res.exit_code == 0, res.output
    [sail] = [json.loads(p.read_text()) for p in results.glob("sail__*.json")]
    assert sail["text_request"]["layer"] == 1 and sail["text_request"]["pooling"] == "cls"
    [probe] = _records(results)
    assert sail["text"] == probe["text"] and sail["text_request"]["key"] == probe["text_request"]["key"]
