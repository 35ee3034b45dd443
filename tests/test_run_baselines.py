"""Training-free baselines beside the probe: its training pairs, its scoring code, its sets; and the report."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alignprobe.config import EncodeOptions
from alignprobe.errors import ValidationError
from alignprobe.metrics.baselines import fit_baseline
from alignprobe.probe.pipelines.baselines_stage import DEFAULT_BASELINES, check_baselines
from alignprobe.probe.pipelines.run import RunConfig, RunPipeline
from alignprobe.probe.training.evaluation import evaluate
from alignprobe.reports.records import write_record
from alignprobe.reports.report import write_report
from alignprobe.reports.store import load_results
from alignprobe.reports.tables import add_baseline_differences, render_table

OPTIONS = EncodeOptions(quiet=True, device="cpu")


def _unit(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_baselines_equal_a_direct_fit_scored_the_same_way(one_torch_thread):
    config = RunConfig(vision="pixels-8", text="bow", pairs="shapes:train?n=120", retrieval="shapes:test?n=60",
                       labelled="shapes:test?n=60", metrics=("zero_shot", "retrieval"), allow_overlap=True,
                       baselines=("procrustes", "ridge"), train={"epochs": 1, "out_dim": 8})
    pipeline = RunPipeline(config, OPTIONS)
    metrics = pipeline.run()
    probe, ws = pipeline.probe, pipeline.workspace
    pairs = ws.encode("pairs", config.pairs, captions=True)
    # by hand: every caption of every image the probe trained on, paired with its image
    keep = [j for j, i in enumerate(pairs.caption_image) if i in set(probe.train_index_.tolist())]
    x = pairs.images.rows(pairs.caption_image[keep])
    y = pairs.captions.rows(np.asarray(keep))
    assert pipeline.details["baseline_train_pairs"] == len(keep) > 0
    sets = {"zero_shot": ws.encode("labelled", config.labelled, prompts=True).zero_shot(),
            "retrieval": ws.encode("retrieval", config.retrieval, captions=True).retrieval(5)}
    for method in ("procrustes", "ridge"):
        model = fit_baseline(method, x, y)
        direct = evaluate(lambda v: _unit(model.transform_image(v)), lambda v: _unit(model.transform_text(v)), **sets)
        for name, value in direct.items():
            assert metrics[f"baseline_{method}_{name}"] == pytest.approx(value, abs=1e-9), (method, name)
    assert {f"baseline_{m}_i2t_r10" for m in ("procrustes", "ridge")} <= set(metrics)
    assert not any(k.startswith(("baseline_cca", "baseline_asif")) for k in metrics)


def test_baseline_names_are_checked():
    assert check_baselines(("none",)) == () and check_baselines(()) == ()
    assert RunConfig(vision="pixels-8", text="bow").baselines == DEFAULT_BASELINES
    assert RunConfig(vision="pixels-8", text="bow", baselines=("none",)).baselines == ()
    with pytest.raises(ValidationError, match="procrustes, ridge, cca, asif"):
        RunConfig(vision="pixels-8", text="bow", baselines=("procrustes", "lasso"))


def _write(out, vision, seed, probe, baselines):
    metrics = {"i2t_r10": probe, **{f"baseline_{m}_i2t_r10": v for m, v in baselines.items()}}
    write_record(out / f"probe__{vision}__bow__{seed}.json", {
        "kind": "probe", "status": "ok", "vision": vision, "text": "bow", "config_hash": f"{vision}{seed}",
        "group_hash": vision, "seed": seed, "metrics": metrics})


def test_report_probe_minus_best_baseline_is_the_difference(tmp_path):
    _write(tmp_path, "a", 0, 0.50, {"procrustes": 0.30, "ridge": 0.42})
    _write(tmp_path, "a", 1, 0.60, {"procrustes": 0.45, "ridge": 0.40})
    _write(tmp_path, "b", 0, 0.20, {"procrustes": 0.25, "ridge": 0.10})
    df, names = add_baseline_differences(load_results(tmp_path))
    assert names == ["probe_minus_best_baseline_i2t_r10"]
    by = {(r.vision, r.seed): r.probe_minus_best_baseline_i2t_r10 for r in df.itertuples()}
    assert by[("a", 0)] == pytest.approx(0.08) and by[("a", 1)] == pytest.approx(0.15)
    assert by[("b", 0)] == pytest.approx(-0.05)
    csv = pd.read_csv(pd.io.common.StringIO(render_table(tmp_path, "csv", metrics="i2t_r10", versus_baseline=True)))
    rows = csv.set_index("vision")
    assert rows.loc["a", "probe_minus_best_baseline_i2t_r10_mean"] == pytest.approx(0.115)  # mean over seeds
    assert rows.loc["b", "probe_minus_best_baseline_i2t_r10_mean"] == pytest.approx(-0.05)
    md = write_report(tmp_path, "md", metrics="i2t_r10", versus_baseline=True, correlations=False)
    assert "probe − best baseline: i2t_r10" in md and "0.115" in md
    plain = tmp_path / "plain"
    plain.mkdir()
    _write(plain, "a", 0, 0.50, {})
    with pytest.raises(ValidationError, match="no baseline"):
        render_table(plain, "md", versus_baseline=True)
