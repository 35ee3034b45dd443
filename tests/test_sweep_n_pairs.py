"""How alignment grows with data: nested seeded subsets of the training pairs, one record each, and the plot."""
from __future__ import annotations

import numpy as np
import pytest

from alignprobe.config import EncodeOptions
from alignprobe.errors import ValidationError
from alignprobe.probe.pipelines.run import RunConfig
from alignprobe.probe.pipelines.subsets import nested_subset, parse_n_pairs
from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep
from alignprobe.reports.plots import _largest_n_pairs, _several_n_pairs, make_pairs_plots, pairs_curve
from alignprobe.reports.store import load_results
from alignprobe.reports.records import read_record


def test_subsets_are_nested_seeded_and_checked():
    usable = np.arange(3, 1003, 2)  # 500 usable rows, not 0..n-1
    small, mid, full = (nested_subset(usable, n, seed=5) for n in (20, 0.3, None))
    assert len(small) == 20 and len(mid) == 150 and np.array_equal(full, usable)
    assert set(small) <= set(mid) <= set(full)
    assert np.array_equal(small, nested_subset(usable, 20, seed=5))  # seeded
    assert not np.array_equal(small, nested_subset(usable, 20, seed=6))
    assert np.all(np.diff(small) > 0)
    assert parse_n_pairs("500, 2000,all") == [500, 2000, None]
    assert parse_n_pairs([0.25, None]) == [0.25, None]
    for bad in ("3", "1.5", "many", [10, 10], True):
        with pytest.raises(ValidationError, match="n_pairs"):
            parse_n_pairs(bad)
    with pytest.raises(ValidationError, match="only 500 usable"):
        nested_subset(usable, 600)


def test_sweep_probes_each_subset_into_its_own_record_and_plots(tmp_path, one_torch_thread):
    run = {"pairs": "shapes:train?n=150", "retrieval": "shapes:test?n=60", "metrics": ("retrieval",),
           "allow_overlap": True, "baselines": "none", "n_pairs": "30,all", "train": {"epochs": 1, "out_dim": 8}}
    sweep = SweepConfig(vision=["pixels-8", "hog-16"], text=["bow"], run=run)
    configs = sweep.pairs()
    assert [c.n_pairs for c in configs] == [30, None, 30, None]
    assert len({c.config_hash() for c in configs}) == 4
    options = EncodeOptions(quiet=True, device="cpu")
    outcomes = run_sweep(sweep, out_dir=tmp_path, options=options)
    assert [o.status for o in outcomes] == ["done"] * 4
    records = [read_record(o.path) for o in outcomes]
    n_all = records[1]["details"]["n_pairs_available"]
    assert [r["metrics"]["n_pairs"] for r in records] == [30, n_all, 30, n_all]
    assert records[0]["config"]["n_pairs"] == 30 and records[1]["config"]["n_pairs"] is None
    # the probe saw the subset
    assert records[0]["details"]["train_images"] < 30 < records[1]["details"]["train_images"]
    again = run_sweep(SweepConfig(vision=["pixels-8", "hog-16"], text=["bow"], run=run), out_dir=tmp_path,
                      options=options)
    assert [o.status for o in again] == ["skipped"] * 4  # n_pairs is part of the reuse key, and it matches
    curve = pairs_curve(tmp_path, "i2t_r10")
    assert sorted(curve["n_pairs"].unique()) == [30, n_all] and set(curve["vision"]) == {"pixels-8", "hog-16"}
    written = make_pairs_plots(tmp_path, tmp_path / "plots", metrics=["i2t_r10"], formats=("png",))
    assert {p.name for p in written} == {"pairs__i2t_r10.png", "pairs__i2t_r10.csv"}
    assert all(p.stat().st_size > 0 for p in written)
    df = load_results(tmp_path)  # `make_plots` draws the standard figures at each pair's largest n_pairs
    assert _several_n_pairs(df) and set(_largest_n_pairs(df)["n_pairs"]) == {n_all}
    assert make_pairs_plots(df, tmp_path / "all", formats=("png",))[0].name == "pairs__i2t_r1.png"
    assert RunConfig(vision="pixels-8", text="bow", n_pairs="all").n_pairs is None
